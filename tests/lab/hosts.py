"""Several libvirt hosts on this one machine, for migration and multi-host tests.

Host N (1, 2, 3...) is:

- a network namespace ``vtlab-hN`` whose ``eth0`` (a veth) is plugged into the bridge
  ``vtlab-br0`` (198.18.0.1/24) of the root namespace, with address ``198.18.0.<10+N>``
  (198.18.0.11 for host 1; no default route: lab traffic stays on the bridge);
- a holder process (``sleep``) that owns a private mount, UTS and IPC namespace
  (hostname ``vtlab-hN``, /etc/hosts naming every lab host) entered through that netns, with
  fresh tmpfs on /run and /dev/shm and private directories bind-mounted over /run/libvirt,
  /var/lib/libvirt, /etc/libvirt (a copy of the machine's *.conf with its own ``host_uuid``,
  ``listen_tcp = 1``, ``auth_tcp = "none"``: test hosts only), /var/log/libvirt,
  /var/cache/libvirt, /etc/pki (each host's own keys and certificates), and Corosync's and
  Pacemaker's directories (tests/lab/cluster.py runs a cluster on the hosts);
- its own ``virtlogd`` and ``libvirtd --listen``, reachable from the root namespace as
  ``qemu+tcp://198.18.0.<10+N>/system``.

Up to ``MAX_HOSTS`` hosts (a fleet for the inventory benchmarks). ``BLACKHOLE_ADDRESS`` is an
address on the bridge that swallows every packet (a permanent neighbour entry with a MAC no
port has): a hypervisor that has gone silent, for connect timeouts.

The image cache and ``$VIRTOPS_LAB_DIR`` (default /var/tmp/virtops-lab) are not hidden by
the private mounts, so every host sees the same guest files there (shared storage).

State lives in ``$VIRTOPS_LAB_DIR/hosts/state.json`` so that ``down`` (or the next ``up``,
after a crash) stops exactly what ``up`` started, found by PID and checked by command line.
A file lock keeps two test sessions from building the lab at the same time.

CLI: ``python -m tests.lab.hosts up [N]`` / ``down`` / ``status``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from devtools.libvirt_cleanup import remove_domain
from tests.helpers import wait_for

from .images import lab_dir

BRIDGE = "vtlab-br0"
NETNS_PREFIX = "vtlab-h"
SUBNET = "198.18.0"
BRIDGE_ADDRESS = f"{SUBNET}.1"
BLACKHOLE_ADDRESS = f"{SUBNET}.254"
BLACKHOLE_MAC = "02:00:00:00:00:fe"  # locally administered: no NIC of the lab has it
MAX_HOSTS = 40
PRIVATE_DIRS = {
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "etc": "/etc/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
    "vtrun": "/run/virtops-lab",  # per-host unix sockets of lab guests (guests.py)
    "pki": "/etc/pki",  # per-host keys and certificates (test_tls.py)
    # Corosync and Pacemaker (cluster nodes: tests/lab/cluster.py)
    "coro-etc": "/etc/corosync",
    "coro-lib": "/var/lib/corosync",
    "coro-log": "/var/log/corosync",
    "pcmk-lib": "/var/lib/pacemaker",
    "pcmk-log": "/var/log/pacemaker",
}
# Copied from the machine with their owners and modes (files too, or only the directories).
CLUSTER_DIRS = {
    "coro-etc": True,
    "coro-lib": False,
    "coro-log": False,
    "pcmk-lib": False,
    "pcmk-log": False,
}
# Made on each host's own tmpfs /run, before the private /run/* directories are bound there.
RUN_DIRS = {"crm": 0o750, "pacemaker": 0o750}
COMMAND_SOCKET_DIR = Path(PRIVATE_DIRS["vtrun"])
# Directories of /var/lib/libvirt that libvirtd expects, with Debian's owners and modes.
LIB_SKELETON = {
    "boot": ("root", 0o711),
    "dnsmasq": ("root", 0o755),
    "images": ("root", 0o711),
    "qemu": ("libvirt-qemu", 0o751),
    "qemu/channel": ("libvirt-qemu", 0o750),
    "qemu/channel/target": ("libvirt-qemu", 0o750),
    "qemu/checkpoint": ("libvirt-qemu", 0o755),
    "qemu/dump": ("libvirt-qemu", 0o755),
    "qemu/nvram": ("libvirt-qemu", 0o755),
    "qemu/ram": ("libvirt-qemu", 0o755),
    "qemu/save": ("libvirt-qemu", 0o755),
    "qemu/snapshot": ("libvirt-qemu", 0o755),
}
START_TIMEOUT = 120
# Corosync and Pacemaker's daemons (pacemakerd first: it respawns the others)
CLUSTER_DAEMONS = (
    "pacemakerd",
    "pacemaker-controld",
    "pacemaker-schedulerd",
    "pacemaker-attrd",
    "pacemaker-execd",
    "pacemaker-fenced",
    "pacemaker-based",
    "corosync",
)


def hosts_dir() -> Path:
    path = lab_dir() / "hosts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def path_on_host(uri: str | None, path: Path) -> Path:
    """Where ``path`` (under a host-private directory) of the host at ``uri`` is seen from here.

    Only lab hosts (``qemu+tcp://198.18.0.<10+N>/system``) have private directories; for any
    other URI the path is returned as it is.
    """
    prefix = f"qemu+tcp://{SUBNET}."
    if not uri or not uri.startswith(prefix):
        return path
    octet = uri[len(prefix) :].split("/")[0]
    if not octet.isdigit() or not 1 <= int(octet) - 10 <= MAX_HOSTS:
        return path
    index = int(octet) - 10
    for sub, target in PRIVATE_DIRS.items():
        if path.is_relative_to(target):
            return hosts_dir() / f"h{index}" / sub / path.relative_to(target)
    return path


def _state_file() -> Path:
    return hosts_dir() / "state.json"


def _run(cmd: list[str], *, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _log(msg: str) -> None:
    print(f"[virtops-lab] {msg}", file=sys.stderr, flush=True)


@dataclass
class LabHost:
    index: int
    name: str  # vtlab-hN: netns name and hostname
    address: str
    dir: str
    holder_pid: int = 0
    pidfiles: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    @property
    def migrate_uri(self) -> str:
        """The URI for QEMU's migration stream to this host (VIR_MIGRATE_PARAM_URI)."""
        return f"tcp://{self.address}"

    def connect(self):
        import libvirt  # noqa: PLC0415

        return libvirt.open(self.uri)

    def nsenter(self, cmd: list[str]) -> list[str]:
        """``cmd`` prefixed to run inside this host's namespaces."""
        return ["nsenter", "-t", str(self.holder_pid), "-m", "-n", "-u", "-i", "--", *cmd]


@dataclass
class Lab:
    hosts: list[LabHost]
    owner: str  # "cli" or "pytest:<pid>"

    @property
    def uris(self) -> list[str]:
        return [h.uri for h in self.hosts]

    def save(self) -> None:
        data = {"owner": self.owner, "hosts": [asdict(h) for h in self.hosts]}
        tmp = _state_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, _state_file())

    @classmethod
    def load(cls) -> Lab | None:
        try:
            data = json.loads(_state_file().read_text())
        except FileNotFoundError:
            return None
        return cls([LabHost(**h) for h in data["hosts"]], data["owner"])


@contextlib.contextmanager
def lab_lock(timeout: float = 1800):
    """Hold the lab's lock (one lab per machine at a time)."""
    with open(hosts_dir() / ".lock", "a+") as fh:

        def locked() -> bool:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        wait_for(
            locked,
            timeout,
            "the lab hosts lock (another process holds it)",
            interval=1,
            error=TimeoutError,
        )
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------
# processes


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _alive(pid: int) -> bool:
    state = ""
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return bool(state) and state != "Z"


def _stop_pid(pid: int, must_contain: str, timeout: float = 20) -> None:
    """SIGTERM then SIGKILL ``pid``, if its command line still contains ``must_contain``."""
    if not pid or must_contain not in _cmdline(pid):
        return  # gone, or the PID now belongs to another process
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not _alive(pid), timeout, f"PID {pid}", interval=0.1, error=TimeoutError)
    if _alive(pid) and must_contain in _cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _read_pid(path: str) -> int:
    try:
        return int(Path(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def _wait_pidfile(path: Path, timeout: float = 30) -> int:
    def live() -> int:
        pid = _read_pid(str(path))
        return pid if pid and _alive(pid) else 0

    return wait_for(live, timeout, f"a live process in {path}", interval=0.1, error=RuntimeError)


# ----------------------------------------------------------------------------------------
# bring up


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", name], check=False).returncode == 0


def _ensure_bridge() -> None:
    if not _link_exists(BRIDGE):
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])


def _ensure_blackhole() -> None:
    """The permanent neighbour entry of BLACKHOLE_ADDRESS: frames to a MAC that no port has.

    Made once the hosts' ports are on the bridge: the kernel flushes a bridge's neighbours,
    permanent ones too, when its carrier changes (as the first port comes up).
    """
    neighbour = ["lladdr", BLACKHOLE_MAC, "dev", BRIDGE, "nud", "permanent"]
    _run(["ip", "neigh", "replace", BLACKHOLE_ADDRESS, *neighbour])


def _override_conf(path: Path, title: str, settings: dict[str, str]) -> None:
    """Set ``settings`` in a libvirt config file, commenting out the machine's own lines.

    libvirt takes the first occurrence of a key, so appending is not enough where the
    machine's file already sets one (the virtops.kvm.host role writes listen_tcp, auth_tcp).
    """
    keys = re.compile(rf"^(\s*(?:{'|'.join(map(re.escape, settings))})\s*=)", re.MULTILINE)
    text = path.read_text() if path.exists() else ""
    ours = "".join(f"{key} = {value}\n" for key, value in settings.items())
    path.write_text(keys.sub(r"#\1", text) + f"\n# {title}\n" + ours)


def _copy_owned(src: Path, dst: Path, files: bool) -> None:
    """Copy the tree ``src`` to the existing ``dst`` with owners and modes (only its
    directories unless ``files``): Corosync's and Pacemaker's directories as the packages
    made them (hacluster:haclient), without the machine's own state."""
    for path in [src, *sorted(src.rglob("*"))]:
        target = dst / path.relative_to(src)
        if path.is_dir() and not path.is_symlink():
            target.mkdir(exist_ok=True)
        elif files and path.is_file() and not path.is_symlink():
            shutil.copy2(path, target)
        else:
            continue
        st = path.stat()
        os.chown(target, st.st_uid, st.st_gid)
        target.chmod(st.st_mode & 0o7777)


def _prepare_dirs(host: LabHost, all_hosts: list[LabHost]) -> None:
    base = Path(host.dir)
    shutil.rmtree(base, ignore_errors=True)
    for sub in PRIVATE_DIRS:
        (base / sub).mkdir(parents=True)
    base.chmod(0o755)
    for sub, files in CLUSTER_DIRS.items():
        if Path(PRIVATE_DIRS[sub]).is_dir():  # Corosync and Pacemaker installed
            _copy_owned(Path(PRIVATE_DIRS[sub]), base / sub, files)
    # /etc/libvirt: the machine's *.conf and nwfilter, no domains, networks or pools of its own
    etc = base / "etc"
    for conf in Path("/etc/libvirt").glob("*.conf"):
        shutil.copy2(conf, etc / conf.name)
    if Path("/etc/libvirt/nwfilter").is_dir():
        shutil.copytree("/etc/libvirt/nwfilter", etc / "nwfilter")
    for sub in ("qemu/networks/autostart", "storage/autostart", "secrets", "hooks"):
        (etc / sub).mkdir(parents=True, exist_ok=True)
    _override_conf(
        etc / "libvirtd.conf",
        "virtops lab host (test only: no TLS, no auth)",
        {
            "host_uuid": f'"{uuid.uuid4()}"',
            "listen_tls": "0",
            "listen_tcp": "1",
            "listen_addr": f'"{host.address}"',
            "auth_tcp": '"none"',
            "log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"',
        },
    )
    _override_conf(
        etc / "qemu.conf",
        "virtops lab host: hosts share guest files and cgroup names; keep apart",
        {"cgroup_controllers": "[ ]", "remember_owner": "0"},
    )
    lib = base / "lib"
    for rel, (owner, mode) in LIB_SKELETON.items():
        path = lib / rel
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, owner, owner)
        path.chmod(mode)
    (base / "run").chmod(0o755)
    (base / "vtrun").chmod(0o755)
    (base / "pki").chmod(0o755)
    COMMAND_SOCKET_DIR.mkdir(mode=0o755, exist_ok=True)  # the mount point
    for target in PRIVATE_DIRS.values():  # mount points; those in /run are made on its tmpfs
        if not target.startswith("/run/"):
            Path(target).mkdir(mode=0o755, parents=True, exist_ok=True)
    (base / "log" / "qemu").mkdir()
    # a warm capabilities cache spares each daemon its QEMU probes
    if Path("/var/cache/libvirt/qemu/capabilities").is_dir():
        shutil.copytree("/var/cache/libvirt/qemu", base / "cache" / "qemu", dirs_exist_ok=True)
    # /etc/hosts and hostname inside the host: every lab host by name
    hosts = ["127.0.0.1 localhost", f"{BRIDGE_ADDRESS} vtlab-root"]
    hosts += [f"{h.address} {h.name}" for h in all_hosts]
    (base / "hosts").write_text("\n".join(hosts) + "\n")


def _fresh_run_script(base: Path, only_run: bool = False) -> str:
    """Shell commands that give a host new, empty /run and /dev/shm (as after a boot: the
    cluster daemons keep their runtime state and IPC there), then bind its private
    directories (those in /run after the tmpfs is mounted; only those if ``only_run``)."""
    steps = [
        "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run",
        "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm",
        "mkdir -m 1777 /run/lock",
    ]
    steps += [f"mkdir {t}" for t in PRIVATE_DIRS.values() if t.startswith("/run/")]
    if _cluster_user_exists():
        steps += [
            f"install -d -o hacluster -g haclient -m {mode:o} /run/{name}"
            for name, mode in RUN_DIRS.items()
        ]
    steps += [
        f"mount --bind {base / sub} {target}"
        for sub, target in PRIVATE_DIRS.items()
        if target.startswith("/run/") or not only_run
    ]
    return " && ".join(steps)


def _cluster_user_exists() -> bool:
    try:
        pwd.getpwnam("hacluster")
    except KeyError:
        return False
    return True


def _start_host(host: LabHost, all_hosts: list[LabHost]) -> None:
    ns = host.name
    _prepare_dirs(host, all_hosts)
    base = Path(host.dir)
    _run(["ip", "netns", "add", ns])
    root_if, ns_if = f"{ns}-br", f"{ns}-ns"
    _run(["ip", "link", "add", root_if, "type", "veth", "peer", "name", ns_if])
    _run(["ip", "link", "set", ns_if, "netns", ns])
    _run(["ip", "link", "set", root_if, "master", BRIDGE, "up"])
    in_ns = ["ip", "netns", "exec", ns]
    _run([*in_ns, "ip", "link", "set", ns_if, "name", "eth0"])
    _run([*in_ns, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0"])
    _run([*in_ns, "ip", "link", "set", "eth0", "up"])
    _run([*in_ns, "ip", "link", "set", "lo", "up"])

    script = (
        f"{_fresh_run_script(base)} && mount --bind {base / 'hosts'} /etc/hosts "
        f"&& hostname {ns} && echo ready && exec sleep infinity"
    )
    # ip netns exec and unshare exec in place: the holder keeps the PID of this Popen
    holder = subprocess.Popen(
        [*in_ns, "unshare", "-m", "-u", "-i", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    line = holder.stdout.readline().strip()
    if line != b"ready":
        holder.kill()
        raise RuntimeError(f"{ns}: namespace holder failed: {holder.stderr.read().decode()}")
    holder.stdout.close()
    holder.stderr.close()
    host.holder_pid = holder.pid
    _start_daemons(host)


def _start_daemons(host: LabHost) -> None:
    for daemon, args in (("virtlogd", ["-d"]), ("libvirtd", ["-d", "--listen"])):
        pidfile = Path(host.dir) / f"{daemon}.pid"
        _run(host.nsenter([daemon, *args, "-p", str(pidfile)]))
        _wait_pidfile(pidfile)
        host.pidfiles[daemon] = str(pidfile)


def _wait_answering(host: LabHost, timeout: float = START_TIMEOUT) -> None:
    import libvirt  # noqa: PLC0415

    last: list[str] = []

    def answers() -> bool:
        try:
            conn = libvirt.open(host.uri)
            conn.getHostname()
            conn.close()
            return True
        except libvirt.libvirtError as exc:
            last[:] = [str(exc)]
            return False

    wait_for(
        answers,
        timeout,
        f"{host.name}: {host.uri} answering",
        interval=0.3,
        error=RuntimeError,
        detail=lambda: f" ({last[0] if last else 'no error'})",
    )


def _start_libvirtd(host: LabHost) -> None:
    pidfile = Path(host.dir) / "libvirtd.pid"
    _run(host.nsenter(["libvirtd", "-d", "--listen", "-p", str(pidfile)]))
    _wait_pidfile(pidfile)
    host.pidfiles["libvirtd"] = str(pidfile)


@contextlib.contextmanager
def reconfigured(host: LabHost, title: str, libvirtd: dict[str, str], qemu: dict[str, str]):
    """``host``'s libvirtd restarted with these libvirtd.conf and qemu.conf settings, and
    restarted with its own files again afterwards (no guests may run on it meanwhile)."""
    etc = Path(host.dir) / "etc"
    saved = {name: (etc / name).read_text() for name in ("libvirtd.conf", "qemu.conf")}

    def restart() -> None:
        _stop_pid(_read_pid(host.pidfiles["libvirtd"]), "libvirtd")
        _start_libvirtd(host)
        _wait_answering(host)

    _override_conf(etc / "libvirtd.conf", title, libvirtd)
    _override_conf(etc / "qemu.conf", title, qemu)
    try:
        restart()
        yield host
    finally:
        for name, text in saved.items():
            (etc / name).write_text(text)
        restart()


def up(count: int = 2, owner: str = "cli") -> Lab:
    """Clean leftovers of earlier runs, then start ``count`` lab hosts (lock held by caller)."""
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"1 to {MAX_HOSTS} lab hosts")
    cleanup()
    base = hosts_dir()
    hosts = [
        LabHost(i, f"{NETNS_PREFIX}{i}", f"{SUBNET}.{10 + i}", str(base / f"h{i}"))
        for i in range(1, count + 1)
    ]
    lab = Lab(hosts, owner)
    lab.save()  # saved before anything starts: a crash midway is still cleaned up
    try:
        _ensure_bridge()
        for host in hosts:
            _start_host(host, hosts)
            lab.save()
        for host in hosts:
            _wait_answering(host)
        _ensure_blackhole()
    except BaseException:
        down(lab)
        raise
    return lab


# ----------------------------------------------------------------------------------------
# tear down


def _destroy_guests(host: LabHost) -> None:
    """Destroy and undefine every guest of ``host`` while its libvirtd still runs."""
    import libvirt  # noqa: PLC0415

    try:
        conn = libvirt.open(host.uri)
    except libvirt.libvirtError:
        return
    try:
        for dom in conn.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                remove_domain(dom)
    finally:
        conn.close()


def node_processes(host: LabHost, names: tuple[str, ...] | None = None) -> list[int]:
    """PIDs of the processes in ``host``'s network namespace but its holder (there is no PID
    namespace: this is what belongs to the host), only those whose program is one of
    ``names`` if given."""
    if not host.name.startswith(NETNS_PREFIX):
        raise ValueError(f"{host.name} is not a lab namespace")
    pids = _run(["ip", "netns", "pids", host.name], check=False).stdout.split()
    found = []
    for pid in map(int, pids):
        argv0 = _cmdline(pid).split(" ")[0]
        if pid != host.holder_pid and (names is None or Path(argv0).name in names):
            found.append(pid)
    return found


def _stop_netns_processes(netns: str, keep: int = 0) -> None:
    """Stop the processes in network namespace ``netns`` (a lab namespace: ours)."""
    if not netns.startswith(NETNS_PREFIX):
        raise ValueError(f"{netns} is not a lab namespace")
    pids = _run(["ip", "netns", "pids", netns], check=False).stdout.split()
    for pid in map(int, pids):
        if pid != keep:
            _stop_pid(pid, "", timeout=10)


def down(lab: Lab | None = None) -> None:
    """Stop what ``up`` started (from the state file by default) and remove it."""
    lab = lab or Lab.load()
    if lab is None:
        return
    # the cluster stack of every host first, so that no Pacemaker restarts a guest elsewhere
    for host in lab.hosts:
        for pid in node_processes(host, CLUSTER_DAEMONS):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for host in lab.hosts:
        if host.holder_pid and _alive(host.holder_pid):
            _destroy_guests(host)
        stop_order = ("libvirtd", "virtlogd")
        for daemon in stop_order:
            path = host.pidfiles.get(daemon)
            if path:
                _stop_pid(_read_pid(path), daemon)
        # whatever else still runs in the host's network namespace was started there by the
        # lab (QEMU, dnsmasq of its daemons)
        _stop_netns_processes(host.name, keep=host.holder_pid)
        _stop_pid(host.holder_pid, "sleep")
        _run(["ip", "netns", "del", host.name], check=False)
        _run(["ip", "link", "del", f"{host.name}-br"], check=False)
        shutil.rmtree(host.dir, ignore_errors=True)
    _run(["ip", "link", "del", BRIDGE], check=False)
    _state_file().unlink(missing_ok=True)


def cleanup() -> None:
    """Remove leftovers of a crashed run: ours only, found by state file and by name."""
    down()
    netns = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
    for line in netns:
        name = line.split(" ")[0]
        if not name.startswith(NETNS_PREFIX):
            continue
        _log(f"removing stale lab namespace {name}")
        _stop_netns_processes(name)
        _run(["ip", "netns", "del", name], check=False)
    links = _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines()
    for line in links:
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(NETNS_PREFIX) and name.endswith("-br"):
            _run(["ip", "link", "del", name], check=False)
    if _link_exists(BRIDGE):
        _run(["ip", "link", "del", BRIDGE], check=False)


def is_running(lab: Lab) -> bool:
    """True when a daemon of ``lab`` still runs."""
    return any(_alive(_read_pid(path)) for host in lab.hosts for path in host.pidfiles.values())


def status() -> dict:
    lab = Lab.load()
    if lab is None:
        return {"up": False}
    return {
        "up": True,
        "owner": lab.owner,
        "hosts": [
            {
                "name": h.name,
                "uri": h.uri,
                "migrate_uri": h.migrate_uri,
                "address": h.address,
                "running": {d: _alive(_read_pid(p)) for d, p in h.pidfiles.items()},
            }
            for h in lab.hosts
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.hosts", description="Start or stop the virtops lab hosts."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up_p = sub.add_parser("up", help="start N lab hosts (default 2); prints their URIs")
    up_p.add_argument("count", nargs="?", type=int, default=2)
    sub.add_parser("down", help="stop the lab hosts that up started")
    sub.add_parser("status", help="show the lab hosts")
    args = parser.parse_args(argv)
    if args.command == "up":
        with lab_lock(timeout=60):
            started = time.monotonic()
            lab = up(args.count, owner="cli")
            _log(f"{len(lab.hosts)} lab hosts up in {time.monotonic() - started:.1f} s")
        print(json.dumps(status(), indent=2))
    elif args.command == "down":
        with lab_lock(timeout=60):
            down()
    else:
        print(json.dumps(status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
