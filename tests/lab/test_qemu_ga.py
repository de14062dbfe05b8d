"""The connection plugin virtops.kvm.qemu_ga against a real Debian guest on qemu:///system,
set by the inventory plugin's guest_agent_connection: ansible -m command, -m copy of a binary
file (checksums compared, fetched back), become without a password, the refusal of a password
prompt, and -m setup with the guest's network interfaces down (brought up again at the end) -
everything through the guest agent, on the session's shared Debian guest (no boot of its own);
a defined guest that does not run is unreachable, with the reason."""

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

from tests.helpers import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
URI = "qemu:///system"


def _adhoc(
    inventory: Path, module: str, args: str = "", *, pipelining=False, extra=(), limit="all"
):
    """One ad-hoc task on ``limit`` (one host): (its result, seconds the run took)."""
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
    cmd = [str(Path(sys.executable).parent / "ansible"), limit, "-i", str(inventory)]
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


def test_qemu_ga_connection(shared_debian_guest, tiny_guest, tmp_path, record_property):
    guest = shared_debian_guest
    agent = guest.wait_agent()
    boot_s = time.monotonic() - guest.started_at  # its boot only if this test started it
    figures = {"start_to_agent_s": round(boot_s, 1)}

    def virtops_user() -> bool:  # cloud-init makes it; the become test needs it
        return agent.run("id", ["virtops"], timeout=30).rc == 0

    wait_for(virtops_user, 300, "cloud-init's user virtops", interval=2)

    # the inventory plugin gives the guest the connection because its agent answers
    inventory = tmp_path / "qga.libvirt.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "plugin": "virtops.kvm.libvirt",
                "uris": [URI],
                "states": ["running"],
                "guest_agent_connection": True,
                "compose": {"ansible_python_interpreter": "'/usr/bin/python3'"},
            }
        )
    )
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    bin_dir = Path(sys.executable).parent
    shown = subprocess.run(
        [bin_dir / "ansible-inventory", "-i", str(inventory), "--host", guest.name],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    hostvars = json.loads(shown.stdout)
    assert hostvars["ansible_connection"] == "virtops.kvm.qemu_ga", hostvars
    assert hostvars["libvirt_agent_answers"] is True
    assert hostvars["virtops_qemu_ga_uri"] == URI
    assert hostvars["virtops_qemu_ga_guest"] == guest.name

    def adhoc(*args, **kwargs):
        return _adhoc(*args, limit=guest.name, **kwargs)

    # a command: exit status, stdout and stderr kept apart (the module upload path)
    res, took = adhoc(
        inventory, "command", "sh -c 'cat /etc/debian_version; echo oops >&2; exit 3'"
    )
    figures["command_s"] = round(took, 1)
    assert res["rc"] == 3 and res.get("failed"), res
    assert res["stdout"].startswith("12.") and res["stderr"] == "oops", res
    res, took = adhoc(inventory, "command", "hostname", pipelining=True)
    figures["command_pipelined_s"] = round(took, 1)
    assert res["rc"] == 0 and res["stdout"] == guest.name, res

    # become without a password; with one, a clear refusal
    res = adhoc(
        inventory, "command", "id -un", pipelining=True, extra=["-b", "--become-user", "virtops"]
    )[0]
    assert res["rc"] == 0 and res["stdout"] == "virtops", res
    # without pipelining the module file goes to a temporary file the become user can read
    res = adhoc(inventory, "command", "id -un", extra=["-b", "--become-user", "virtops"])[0]
    assert res["rc"] == 0 and res["stdout"] == "virtops", res
    res = adhoc(inventory, "command", "id -un", extra=["-b", "-e", "ansible_become_password=x"])[0]
    assert res.get("failed") and "become with a password prompt" in res["msg"], res

    # a binary file of every byte value, four and a bit chunks, copied, checked and fetched
    blob = tmp_path / "blob.bin"
    data = bytes(range(256)) * 4096 * 4 + os.urandom(4096) + b"\x00\r\n\xff"
    blob.write_bytes(data)
    sha1, sha256 = hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest()
    res, took = adhoc(inventory, "copy", f"src={blob} dest=/root/blob.bin mode=0600")
    figures["copy_4mib_s"] = round(took, 1)
    assert res["changed"] and res["checksum"] == sha1, res
    res = adhoc(inventory, "command", "sha256sum /root/blob.bin", pipelining=True)[0]
    assert res["stdout"].split()[0] == sha256, res
    res = adhoc(inventory, "copy", f"src={blob} dest=/root/blob.bin mode=0600")[0]
    assert not res.get("failed") and not res["changed"], res
    fetched = tmp_path / "fetched.bin"
    res, took = adhoc(inventory, "fetch", f"src=/root/blob.bin dest={fetched} flat=true")
    figures["fetch_4mib_s"] = round(took, 1)
    assert res["changed"] and fetched.read_bytes() == data, res

    # the network goes down through the plugin; setup still answers
    res = adhoc(
        inventory,
        "shell",
        "for i in /sys/class/net/*; do n=${i##*/}; [ $n = lo ] || ip link set $n down; done;"
        " ip -o link show | grep -v ' lo:'",
        pipelining=True,
    )[0]
    assert res["rc"] == 0 and "state UP" not in res["stdout"], res
    nics = [line.split(":")[1].strip() for line in res["stdout"].splitlines()]
    assert nics and all("state DOWN" in line for line in res["stdout"].splitlines()), res
    res, took = adhoc(inventory, "setup", pipelining=True)
    figures["setup_pipelined_s"] = round(took, 1)
    facts = res["ansible_facts"]
    assert facts["ansible_distribution"] == "Debian" and facts["ansible_hostname"] == guest.name
    for nic in nics:
        assert facts[f"ansible_{nic}"]["active"] is False, facts[f"ansible_{nic}"]
    assert facts["ansible_default_ipv4"] == {}, facts["ansible_default_ipv4"]
    res, took = adhoc(inventory, "setup", "gather_subset=min")
    figures["setup_min_s"] = round(took, 1)
    assert res["ansible_facts"]["ansible_distribution"] == "Debian", res

    # the NICs up again: the shared guest stays reachable for the session's other tests
    for nic in nics:
        assert agent.run("ip", ["link", "set", nic, "up"], timeout=60).rc == 0

    # a defined guest that does not run: unreachable, with the reason
    stopped = tiny_guest(start=False)
    static = tmp_path / "stopped.yml"
    hostvars = {"ansible_connection": "virtops.kvm.qemu_ga", "virtops_qemu_ga_uri": URI}
    static.write_text(yaml.safe_dump({"all": {"hosts": {stopped.name: hostvars}}}))
    res = _adhoc(static, "command", "true")[0]
    assert res.get("unreachable") and "does not answer" in res["msg"], res

    for key, value in figures.items():
        record_property(key, value)
    print("qemu_ga figures:", json.dumps(figures))
