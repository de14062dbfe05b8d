"""fence_virtopslab: a fence agent for the lab's cluster nodes (tests/lab/hosts.py).

A lab node has no power switch: "off" is a power loss, every process of the node killed at
once with SIGKILL - its Corosync, Pacemaker, libvirtd, virtlogd and QEMU processes - found by
the node's recorded namespace holder (the lab state file) as the processes in the holder's
network namespace, each killed by PID after its command line is checked again. The node stays
dead until the lab brings it back (``tests.lab.cluster.restart_node``); "on" fails, saying so.

Pacemaker runs it as ``/usr/sbin/fence_virtopslab`` (``tests.lab.cluster.install_fence_agent``)
with ``name=value`` lines on stdin (``action``, ``plug`` or ``port``); ``-o ACTION`` and
``-n PLUG`` on the command line work too. Only the standard library: it runs under the
system's Python in pacemaker-fenced's environment. Exit codes: 0 success (status: on),
1 failure, 2 status: off.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

STATE_ENV = "VIRTOPS_LAB_STATE"
DEFAULT_STATE = "/var/tmp/virtops-lab/hosts/state.json"
OFF_TIMEOUT = 20

METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_virtopslab" shortdesc="Power loss of a virtops lab cluster node">
<longdesc>Kills every process of a lab node (tests/lab/hosts.py of virtops.kvm) at once, as a
power loss would. The node stays off until the lab restarts it: "on" is not possible.</longdesc>
<vendor-url>https://github.com/virtops/kvm</vendor-url>
<parameters>
  <parameter name="action" unique="0" required="1">
    <getopt mixed="-o, --action=[action]" />
    <content type="string" default="reboot" />
    <shortdesc lang="en">Fencing action</shortdesc>
  </parameter>
  <parameter name="plug" unique="0" required="0" obsoletes="port">
    <getopt mixed="-n, --plug=[name]" />
    <content type="string" />
    <shortdesc lang="en">Lab node name (vtlab-hN)</shortdesc>
  </parameter>
  <parameter name="port" unique="0" required="0" deprecated="1">
    <getopt mixed="-n, --plug=[name]" />
    <content type="string" />
    <shortdesc lang="en">Lab node name (vtlab-hN)</shortdesc>
  </parameter>
</parameters>
<actions>
  <action name="off" />
  <action name="reboot" />
  <action name="status" />
  <action name="list" />
  <action name="list-status" />
  <action name="monitor" />
  <action name="metadata" />
  <action name="validate-all" />
</actions>
</resource-agent>
"""


class FenceError(Exception):
    pass


def load_hosts(state_file: str | None = None) -> dict[str, dict]:
    """The lab's hosts by name, from its state file."""
    path = Path(state_file or os.environ.get(STATE_ENV) or DEFAULT_STATE)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FenceError(f"cannot read the lab state file {path}: {exc}") from exc
    return {h["name"]: h for h in data["hosts"]}


def _netns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def node_processes(host: dict) -> dict[int, bytes]:
    """The node's processes (PID -> command line): those in its holder's network namespace,
    but the holder itself, this process and its ancestors."""
    holder = int(host["holder_pid"])
    if b"sleep" not in _cmdline(holder):
        raise FenceError(f"{host['name']}: its namespace holder {holder} is gone")
    ns = _netns(holder)
    spared = {holder, os.getpid(), *_ancestors()}
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in spared and _netns(int(entry.name)) == ns:
            cmd = _cmdline(int(entry.name))
            if cmd:  # kernel threads have none (and are never in a lab namespace)
                found[int(entry.name)] = cmd
    return found


def _ancestors() -> list[int]:
    pids, pid = [], os.getppid()
    while pid > 1:
        pids.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def power_off(host: dict) -> list[int]:
    """Kill every process of the node at once; returns their PIDs when all are gone."""
    procs = node_processes(host)
    killed = []
    for pid, cmd in procs.items():
        if _cmdline(pid) == cmd:  # still the same process
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + OFF_TIMEOUT
    while any(_alive(pid) for pid in killed):
        if time.monotonic() > deadline:
            raise FenceError(f"{host['name']}: processes survived SIGKILL")
        time.sleep(0.05)
    return killed


def is_on(host: dict) -> bool:
    return bool(node_processes(host))


def parse_args(argv: list[str], stdin_text: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for line in stdin_text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            opts[key.strip()] = value.strip()
    args = iter(argv)
    for arg in args:
        if arg in ("-o", "--action"):
            opts["action"] = next(args, "")
        elif arg.startswith("--action="):
            opts["action"] = arg.split("=", 1)[1]
        elif arg in ("-n", "--plug", "--port"):
            opts["plug"] = next(args, "")
        elif arg.startswith(("--plug=", "--port=")):
            opts["plug"] = arg.split("=", 1)[1]
    if "plug" not in opts and "port" in opts:
        opts["plug"] = opts["port"]
    return opts


def run(opts: dict[str, str], out=sys.stdout) -> int:
    action = opts.get("action", "reboot")
    if action == "metadata":
        out.write(METADATA)
        return 0
    hosts = load_hosts(opts.get("lab_state"))
    if action in ("monitor", "validate-all") and not opts.get("plug"):
        return 0
    if action in ("list", "list-status"):
        for name, host in hosts.items():
            state = ("on" if is_on(host) else "off") if action == "list-status" else ""
            out.write(f"{name},{state}\n")
        return 0
    name = opts.get("plug", "")
    if name not in hosts:
        raise FenceError(f"{name or '(no plug)'} is not a lab node ({', '.join(hosts)})")
    host = hosts[name]
    if action in ("status", "monitor"):
        return 0 if is_on(host) else 2
    if action == "validate-all":
        return 0
    if action in ("off", "reboot"):
        # reboot: the power goes off and the node stays dead until the lab restarts it
        # (Pacemaker only needs it off); the lab cannot power a node on
        power_off(host)
        return 0
    if action == "on":
        raise FenceError(f"{name}: the lab cannot power a node on (tests.lab.cluster.restart_node)")
    raise FenceError(f"unknown action {action}")


def main() -> int:
    stdin_text = "" if sys.stdin.isatty() else sys.stdin.read()
    try:
        return run(parse_args(sys.argv[1:], stdin_text))
    except FenceError as exc:
        print(f"fence_virtopslab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
