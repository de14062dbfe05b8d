"""The connection plugin virtops.kvm.qemu_ga against a real Debian guest on qemu:///system:
ansible -m command, -m copy of a binary file (checksums compared, fetched back), become
without a password, the refusal of a password prompt, and -m setup with the guest's network
interfaces down - everything through the guest agent, booted once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ansible_collections.virtops.kvm.plugins.module_utils._qemu_ga import AgentError, GuestAgent
from tests.helpers import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
URI = "qemu:///system"


def _adhoc(inventory: Path, module: str, args: str = "", *, pipelining=False, extra=()):
    """One ad-hoc task on the inventory's one host: (its result, seconds the run took)."""
    results = inventory.parent / "results.json"
    results.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "integration" / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="virtops_results",
        VIRTOPS_RESULTS_FILE=str(results),
        ANSIBLE_PIPELINING="1" if pipelining else "0",
    )
    cmd = [str(Path(sys.executable).parent / "ansible"), "all", "-i", str(inventory)]
    cmd += ["-m", module, *(["-a", args] if args else []), *extra]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    took = time.monotonic() - started
    try:
        (record,) = json.loads(results.read_text())
    except (OSError, ValueError) as exc:
        raise AssertionError(f"no result: {proc.stdout[-3000:]}{proc.stderr[-3000:]}") from exc
    result = dict(record["result"])
    # ansible-core 2.19 no longer leaves "failed" in the result the callback sees
    result["failed"] = record["status"] == "failed"
    result["unreachable"] = record["status"] == "unreachable"
    print(f"qemu_ga: -m {module} {args[:60]!r}: {record['status']} in {took:.1f} s", flush=True)
    return result, took


def test_qemu_ga_connection(debian_guest, default_network, tmp_path, record_property):
    import libvirt  # noqa: PLC0415

    guest = debian_guest(network=default_network)
    agent = GuestAgent(guest.dom, timeout=5)

    def answers() -> bool:
        try:
            agent.ping()
        except AgentError:
            return False
        return True

    wait_for(answers, 600, "the guest agent", interval=1, detail=lambda: guest.console()[-1500:])
    boot_s = time.monotonic() - guest.started_at
    record_property("start_to_agent_s", round(boot_s, 1))
    figures = {"start_to_agent_s": round(boot_s, 1)}

    inventory = tmp_path / "inventory.yml"
    hostvars = {
        "ansible_connection": "virtops.kvm.qemu_ga",
        "virtops_qemu_ga_uri": URI,
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {guest.name: hostvars}}}))

    # a command: exit status, stdout and stderr kept apart (the module upload path)
    res, took = _adhoc(
        inventory, "command", "sh -c 'cat /etc/debian_version; echo oops >&2; exit 3'"
    )
    figures["command_s"] = round(took, 1)
    assert res["rc"] == 3 and res.get("failed"), res
    assert res["stdout"].startswith("12.") and res["stderr"] == "oops", res
    res, took = _adhoc(inventory, "command", "hostname", pipelining=True)
    figures["command_pipelined_s"] = round(took, 1)
    assert res["rc"] == 0 and res["stdout"] == guest.name, res

    # become without a password; with one, a clear refusal
    res = _adhoc(
        inventory, "command", "id -un", pipelining=True, extra=["-b", "--become-user", "virtops"]
    )[0]
    assert res["rc"] == 0 and res["stdout"] == "virtops", res
    res = _adhoc(inventory, "command", "id -un", extra=["-b", "-e", "ansible_become_password=x"])[0]
    assert res.get("failed") and "become with a password prompt" in res["msg"], res

    # a binary file of every byte value, four and a bit chunks, copied, checked and fetched
    blob = tmp_path / "blob.bin"
    data = bytes(range(256)) * 4096 * 4 + os.urandom(4096) + b"\x00\r\n\xff"
    blob.write_bytes(data)
    sha1, sha256 = hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest()
    res, took = _adhoc(inventory, "copy", f"src={blob} dest=/root/blob.bin mode=0600")
    figures["copy_4mib_s"] = round(took, 1)
    assert res["changed"] and res["checksum"] == sha1, res
    res = _adhoc(inventory, "command", "sha256sum /root/blob.bin", pipelining=True)[0]
    assert res["stdout"].split()[0] == sha256, res
    res = _adhoc(inventory, "copy", f"src={blob} dest=/root/blob.bin mode=0600")[0]
    assert not res.get("failed") and not res["changed"], res
    fetched = tmp_path / "fetched.bin"
    res, took = _adhoc(inventory, "fetch", f"src=/root/blob.bin dest={fetched} flat=true")
    figures["fetch_4mib_s"] = round(took, 1)
    assert res["changed"] and fetched.read_bytes() == data, res

    # the network goes down through the plugin; setup still answers
    res = _adhoc(
        inventory,
        "shell",
        "for i in /sys/class/net/*; do n=${i##*/}; [ $n = lo ] || ip link set $n down; done;"
        " ip -o link show | grep -v ' lo:'",
        pipelining=True,
    )[0]
    assert res["rc"] == 0 and "state UP" not in res["stdout"], res
    nics = [line.split(":")[1].strip() for line in res["stdout"].splitlines()]
    assert nics and all("state DOWN" in line for line in res["stdout"].splitlines()), res
    res, took = _adhoc(inventory, "setup", pipelining=True)
    figures["setup_pipelined_s"] = round(took, 1)
    facts = res["ansible_facts"]
    assert facts["ansible_distribution"] == "Debian" and facts["ansible_hostname"] == guest.name
    for nic in nics:
        assert facts[f"ansible_{nic}"]["active"] is False, facts[f"ansible_{nic}"]
    assert facts["ansible_default_ipv4"] == {}, facts["ansible_default_ipv4"]
    res, took = _adhoc(inventory, "setup", "gather_subset=min")
    figures["setup_min_s"] = round(took, 1)
    assert res["ansible_facts"]["ansible_distribution"] == "Debian", res

    # a guest that is not running: unreachable, with the reason
    guest.dom.destroy()
    res = _adhoc(inventory, "command", "true")[0]
    assert res.get("unreachable") and "does not answer" in res["msg"], res
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF

    for key, value in figures.items():
        record_property(key, value)
    print("qemu_ga figures:", json.dumps(figures))
