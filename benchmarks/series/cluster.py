"""Cluster: forming a 3-node Pacemaker/Corosync cluster, and one HA guest's standby migration
and failover after a power loss, on the lab cluster (issue 16).

Each repetition starts from nothing: three lab hosts (tests/lab/hosts.py) are started, the
role virtops.kvm.cluster forms them into a cluster the way the lab tests do
(``tests.lab.cluster.formed``), and the lab is torn down at the end of the repetition, also
when it fails, so repetitions do not inherit each other's state (``--reps``, 3 by default:
about 2 minutes each here). Measured:

- form: from the role's start (no cluster daemon running) until the first node's Pacemaker
  first reports all three nodes online in a quorate partition (``crm_mon`` asked every half
  second while the role runs), with the times its Corosync first ran and its Pacemaker
  first answered on the way; the role's whole run, which goes on to set the cluster
  properties, is recorded beside it, and every node's view is checked once it ends;
- standby: a tiny guest (192 MiB, 1 vCPU, direct kernel boot under TCG, its marker disk on
  the lab's shared directory, a ``HEARTBEAT n`` line on its console every second) made HA by
  virtops.kvm.cluster_guest (live migration allowed) with the lab fence agent as stonith
  device; its node goes to standby. Time from the standby request until Pacemaker reports
  the guest started on another node, and the longest gap between new heartbeats in that
  time (a live migration keeps the counter going; a restart would start it again at 1);
- failover: the node now running it loses power (the lab fence agent's ``off``: every
  process of the node killed at once). Time from the kill to: a survivor's Pacemaker
  seeing the node offline (Corosync's detection), the guest reported started on a survivor
  (fencing, then the start), and its first heartbeat on the survivor's console (a new
  boot: the guest's memory died with the node).

The Corosync and Pacemaker timings in force are read from the running cluster (Corosync's
cmap, the resource's operations in the CIB, the stonith properties with Pacemaker's own
defaults from its daemons' metadata) and kept with the results (``details.cluster``).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from pathlib import Path

from lxml import etree

from ..common import NotReady, Results, loadavg, log, new_prefix

SERIES = "cluster"
BOOT_TIMEOUT = 240
MOVE_TIMEOUT = 180
FAILOVER_TIMEOUT = 300
LOCK_TIMEOUT = 3600  # other lab users (test sessions) may hold the lab for a long time
TOTEM_KEYS = ("token", "consensus", "join", "token_retransmits_before_loss_const")
# cluster properties that bear on the figures (dc-deadtime: how long a starting node waits
# for a DC before it holds an election)
PROPERTIES = (
    "dc-deadtime",
    "stonith-enabled",
    "stonith-timeout",
    "stonith-action",
    "no-quorum-policy",
)
DAEMONS = Path("/usr/lib/pacemaker")
DEVICE_TIMEOUTS = ("pcmk_off_timeout", "pcmk_reboot_timeout", "pcmk_monitor_timeout")


def run(results: Results, *, reps: int, workdir: Path) -> None:
    try:
        from tests.lab import hosts as lab  # noqa: PLC0415
        from tests.lab.images import build_tiny  # noqa: PLC0415
    except ImportError as exc:
        raise NotReady(f"tests/lab cannot be imported ({exc})") from exc
    if shutil.which("corosync") is None or shutil.which("pacemakerd") is None:
        raise NotReady("Corosync and Pacemaker are not installed (scripts/setup.sh)")
    image = build_tiny()
    prefix = new_prefix(SERIES)
    workdir = workdir / SERIES
    with lab.lab_lock(timeout=LOCK_TIMEOUT):
        for rep in range(reps):
            log(f"cluster: repetition {rep + 1} of {reps}")
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            _repetition(results, lab, image, name=f"{prefix}-r{rep}", workdir=workdir, rep=rep)


def _repetition(results: Results, lab, image, *, name: str, workdir: Path, rep: int) -> None:
    from tests.lab import cluster  # noqa: PLC0415
    from tests.lab.images import lab_dir  # noqa: PLC0415

    hosts = lab.up(3, owner="bench")
    try:
        load = loadavg()
        started = time.monotonic()
        with _QuorumWatch(hosts.hosts[0], [h.name for h in hosts.hosts]) as watch:
            with cluster.formed(hosts, workdir) as formed:
                role = time.monotonic() - started
                watch.wait(timeout=30)
                for node in formed.nodes:  # formed() waited for these; asked once more here
                    view = cluster.status(node)
                    if view.online != sorted(formed.names) or not view.quorate:
                        raise RuntimeError(f"{node.name} sees {view} after the role")
                for metric, seen in (
                    ("corosync_s", watch.corosync),
                    ("pacemaker_s", watch.pacemaker),
                    ("seconds", watch.quorate),
                ):
                    _add(results, "form", metric, seen - started, rep=rep, load=load)
                _add(results, "form", "role_seconds", role, rep=rep, load=load)
                with cluster.stonith_device(formed):
                    guest = _ha_guest(formed, image, name, workdir)
                    if rep == 0:
                        results.details[SERIES] = _timings(formed.nodes[0], name)
                    target = _standby(results, formed, guest, rep)
                    _power_loss(results, formed, guest, target, rep)
    finally:
        lab.down(hosts)  # the cluster daemons first, then guests and hosts
        shutil.rmtree(lab_dir() / "guests" / name, ignore_errors=True)  # the guest's files
        log("cluster: lab hosts stopped")


class _QuorumWatch:
    """Watches the first node while the role runs, every half second: when its Corosync
    process first runs, when its Pacemaker first answers ``crm_mon``, and when that first
    reports ``names`` all online in a quorate partition."""

    def __init__(self, node, names: list[str]) -> None:
        self.node, self.names = node, sorted(names)
        self.corosync: float | None = None
        self.pacemaker: float | None = None
        self.quorate: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tests.lab import cluster  # noqa: PLC0415
        from tests.lab.hosts import node_processes  # noqa: PLC0415

        while not self._stop.is_set() and self.quorate is None:
            now = time.monotonic()
            if self.corosync is None and node_processes(self.node, ("corosync",)):
                self.corosync = now
            with contextlib.suppress(
                RuntimeError, subprocess.TimeoutExpired, etree.XMLSyntaxError
            ):  # no Pacemaker yet
                view = cluster.status(self.node)
                self.pacemaker = self.pacemaker or now
                if view.online == self.names and view.quorate:
                    self.quorate = now
            self._stop.wait(0.5)

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        if None in (self.corosync, self.pacemaker, self.quorate):
            raise RuntimeError(
                f"{self.node.name}: Corosync, Pacemaker or {self.names} online and quorate "
                f"not seen ({self.corosync}, {self.pacemaker}, {self.quorate})"
            )

    def __enter__(self) -> _QuorumWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _add(results: Results, case: str, metric: str, value: float, *, rep: int, load) -> None:
    """One figure in seconds (``load``: the load average when the step began)."""
    results.add(
        series=SERIES, case=case, side="ours", n=3, rep=rep, load=load,
        metric=metric, value=value, unit="s",
    )  # fmt: skip


def _ha_guest(formed, image, name: str, workdir: Path):
    """A tiny guest started on the first node and made HA there by cluster_guest."""
    from tests.lab import cluster  # noqa: PLC0415
    from tests.lab.guests import TinyGuest, prepare_tiny_files, tiny_domain_xml  # noqa: PLC0415

    home = formed.nodes[0]
    files = prepare_tiny_files(name, image)
    guest = TinyGuest(name, files, home.connect())
    guest.conn.defineXML(tiny_domain_xml(name, image, files, memory_mib=192)).create()
    guest.wait_heartbeat(0, timeout=BOOT_TIMEOUT)
    task = {"name": "ha", "virtops.kvm.cluster_guest": cluster.ha_guest_args(guest)}
    made = cluster.on(home, [task], workdir)
    if made.rc != 0:
        raise RuntimeError(f"cluster_guest failed ({made.rc}):\n{made.stdout[-3000:]}")
    if cluster.where(home, name) != ("Started", [home.name]):
        raise RuntimeError(f"{name} is not started on {home.name}: {cluster.where(home, name)}")
    guest.wait_heartbeat(guest.last_heartbeat() + 1, timeout=60)
    return guest


def _standby(results: Results, formed, guest, rep: int):
    """Standby of the guest's node: the time Pacemaker takes to move it (live), the longest
    heartbeat gap; the node back online afterwards. Returns the node it moved to."""
    from tests.helpers import wait_for  # noqa: PLC0415
    from tests.lab import cluster  # noqa: PLC0415
    from tests.lab.guests import HeartbeatWatch  # noqa: PLC0415

    home = formed.nodes[0]

    def elsewhere() -> list[str] | None:
        role, nodes = cluster.where(home, guest.name)
        return nodes if role == "Started" and len(nodes) == 1 and nodes != [home.name] else None

    load = loadavg()
    with HeartbeatWatch(guest) as watch:
        time.sleep(2)  # heartbeats before the standby: the gap is measured from the last one
        before = guest.last_heartbeat()
        started = time.monotonic()
        cluster.standby(home, True)
        nodes = wait_for(elsewhere, MOVE_TIMEOUT, f"{guest.name} to leave {home.name}")
        moved = time.monotonic()
        target = formed.node(nodes[0])
        guest.conn = target.connect()
        after = guest.wait_heartbeat(guest.last_heartbeat() + 2, timeout=60)
    beats = [beat for _t, beat in watch.seen]
    if beats != sorted(beats) or after <= before:
        raise RuntimeError(f"{guest.name} was restarted, not live-migrated: {beats}")
    gap = watch.max_gap(started, moved)
    _add(results, "standby", "seconds", moved - started, rep=rep, load=load)
    _add(results, "standby", "heartbeat_max_gap_s", gap, rep=rep, load=load)
    cluster.settle(home)
    cluster.standby(home, False)
    cluster.settle(home)
    return target


def _power_loss(results: Results, formed, guest, victim, rep: int) -> None:
    """``victim`` loses power: detection, guest started elsewhere, first heartbeat there."""
    from tests.helpers import wait_for  # noqa: PLC0415
    from tests.lab import cluster  # noqa: PLC0415
    from tests.lab.guests import HEARTBEAT_RE  # noqa: PLC0415
    from tests.lab.hosts import node_processes  # noqa: PLC0415

    survivor = next(n for n in formed.nodes if n is not victim)
    offset = len(guest.console())
    beat: list[float] = []

    def first_beat() -> float | None:
        return time.monotonic() if HEARTBEAT_RE.search(guest.console(), offset) else None

    # the console is watched in a thread so that crm_mon's own time does not delay the figure
    watcher = threading.Thread(
        target=lambda: beat.append(
            wait_for(first_beat, FAILOVER_TIMEOUT, "first heartbeat", interval=0.05)
        ),
        daemon=True,
    )
    load = loadavg()
    killed = time.monotonic()
    off = cluster.fence("off", victim.name)
    if off.returncode != 0 or node_processes(victim):
        raise RuntimeError(f"fence off {victim.name} failed: {off.stderr}")
    watcher.start()

    # crm_mon may fail for a moment while the survivors elect a new DC: asked again
    def lost() -> float | None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, etree.XMLSyntaxError):
            if victim.name in cluster.status(survivor).offline:
                return time.monotonic()
        return None

    def restarted() -> float | None:
        with contextlib.suppress(subprocess.SubprocessError, etree.XMLSyntaxError):
            role, nodes = cluster.where(survivor, guest.name)
            if role == "Started" and len(nodes) == 1 and nodes != [victim.name]:
                return time.monotonic()
        return None

    detected = wait_for(lost, FAILOVER_TIMEOUT, f"{survivor.name} to see {victim.name} lost")
    started = wait_for(restarted, FAILOVER_TIMEOUT, f"{guest.name} started on a survivor")
    watcher.join(FAILOVER_TIMEOUT)
    if not beat:
        raise RuntimeError(f"{guest.name}: no heartbeat on a survivor in {FAILOVER_TIMEOUT} s")
    history = cluster.on_node(survivor, ["stonith_admin", "--history", victim.name])
    if "successful" not in history:
        raise RuntimeError(f"{victim.name} was not fenced: {history}")
    _add(results, "failover", "detected_s", detected - killed, rep=rep, load=load)
    _add(results, "failover", "started_s", started - killed, rep=rep, load=load)
    _add(results, "failover", "seconds", beat[0] - killed, rep=rep, load=load)


def _timings(node, resource: str) -> dict:
    """The Corosync and Pacemaker settings the figures were measured with, read from the
    running cluster in ``node``."""
    from tests.lab import cluster  # noqa: PLC0415

    totem = {}
    for key in ("totem.token", "totem.token_coefficient", "totem.consensus"):
        proc = subprocess.run(
            node.nsenter(["corosync-cmapctl", "-g", key]),
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        totem[key + " (corosync.conf)"] = _cmap_value(proc.stdout) if proc.returncode == 0 else None
    for key in TOTEM_KEYS:
        out = cluster.on_node(node, ["corosync-cmapctl", "-g", f"runtime.config.totem.{key}"])
        totem[key] = _cmap_value(out)

    cib = cluster.cib(node)
    config = cib.find("configuration")
    primitive = config.xpath("resources//primitive[@id=$id]", id=resource)[0]
    ops = {
        op.get("name"): {k: op.get(k) for k in ("interval", "timeout") if op.get(k)}
        for op in primitive.findall("operations/op")
    }
    meta = {
        nv.get("name"): nv.get("value")
        for nv in primitive.findall("meta_attributes/nvpair")
        if nv.get("name") in ("allow-migrate", "resource-stickiness")
    }
    defaults = {
        **_metadata_defaults(node, "pacemaker-controld"),
        **_metadata_defaults(node, "pacemaker-schedulerd"),
    }
    properties = {}
    for name in PROPERTIES:
        set_value = config.xpath("crm_config//nvpair[@name=$n]/@value", n=name)
        properties[name] = (
            set_value[0] if set_value else f"{defaults.get(name)} (Pacemaker's default)"
        )
    device_defaults = _metadata_defaults(node, "pacemaker-fenced")
    device = config.xpath("resources//primitive[@class='stonith']")[0]
    device_params = {nv.get("name"): nv.get("value") for nv in device.iter("nvpair")}
    device_timeouts = {
        name: device_params.get(name, f"{device_defaults.get(name)} (Pacemaker's default)")
        for name in DEVICE_TIMEOUTS
    }
    return {
        "corosync_ms": totem,
        "virtualdomain_ops": ops,
        "virtualdomain_meta": meta,
        "properties": properties,
        "stonith_device": {"agent": device.get("type"), **device_timeouts},
    }


def _cmap_value(out: str) -> int | str:
    """``runtime.config.totem.token (u32) = 3650`` -> 3650."""
    value = out.strip().rsplit("=", 1)[-1].strip()
    return int(value) if value.isdigit() else value


def _metadata_defaults(node, daemon: str) -> dict[str, str]:
    """Parameter name to default from a Pacemaker daemon's ``metadata`` XML."""
    from tests.lab import cluster  # noqa: PLC0415

    root = etree.fromstring(cluster.on_node(node, [str(DAEMONS / daemon), "metadata"]).encode())
    return {
        p.get("name"): p.find("content").get("default")
        for p in root.iter("parameter")
        if p.find("content") is not None and p.find("content").get("default") is not None
    }
