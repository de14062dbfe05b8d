"""Role runs on lab hosts: ansible-playbook with lab hosts as its inventory.

Each host (``vtlab-hN``) is reached through the ``virtops_lab_nsenter`` connection, so that the
role's tasks run in the host's namespaces (its private /etc/libvirt, /run/libvirt, network);
``host_tls_subject_alt_names`` is the host's lab address, for the role's PKI. The results of
every task come back through the ``virtops_results`` callback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import ROOT, VENV_BIN, PlaybookRun, checkout_env


def run_on_lab_hosts(
    tmp: Path,
    hosts: list,
    plays: list[dict],
    name: str,
    *,
    check: bool = False,
    timeout: float = 900,
) -> PlaybookRun:
    """Run ``plays`` (written to ``tmp/NAME.yml``) against ``hosts`` (``LabHost``s)."""
    gone = [h.name for h in hosts if not Path(f"/proc/{h.holder_pid}").exists()]
    # nsenter would fail, and Ansible say only that it cannot make its temporary directory
    assert not gone, f"lab hosts {gone} are stopped (their namespace holders are gone)"
    inventory = {
        "all": {
            "hosts": {
                host.name: {
                    "ansible_connection": "virtops_lab_nsenter",
                    "virtops_lab_holder_pid": host.holder_pid,
                    "ansible_python_interpreter": sys.executable,
                    "host_tls_subject_alt_names": [host.address],
                }
                for host in hosts
            }
        }
    }
    (tmp / "inventory.yml").write_text(yaml.safe_dump(inventory))
    book = tmp / f"{name}.yml"
    book.write_text(yaml.safe_dump(plays, sort_keys=False))
    results = tmp / f"{name}-results.json"
    env = checkout_env(
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "integration" / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="virtops_results",
        ANSIBLE_CONNECTION_PLUGINS=str(ROOT / "tests" / "lab" / "connection_plugins"),
        VIRTOPS_RESULTS_FILE=str(results),
    )
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(tmp / "inventory.yml"), str(book)]
    proc = subprocess.run(
        [*cmd, "--check"] if check else cmd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    found = json.loads(results.read_text()) if results.exists() else []
    return PlaybookRun(proc.returncode, proc.stdout, proc.stderr, found)


def conf_settings(text: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The ``key = value`` lines of a rendered libvirt configuration file for ``keys`` (all
    of which must be there)."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key in keys:
            found[key] = value
    assert set(found) == set(keys), f"missing in the rendered file: {set(keys) - set(found)}"
    return found
