"""Failover on the lab cluster (``lab_cluster``, the lab fence agent as its stonith device)
with one tiny guest made highly available by virtops.kvm.cluster_guest, in order (issue 16):
standby of its node live-migrates it with the heartbeat going on (step 3); a power loss of
its node is fenced and the guest restarted on a survivor with its marker data (step 4); the
node rejoins and the guest neither runs twice nor moves back (step 6)."""

from __future__ import annotations

import re
import time

import pytest

from devtools.libvirt_cleanup import remove_domain_named
from tests.helpers import wait_for
from tests.lab import cluster as lab_cluster_mod
from tests.lab.cluster import on, on_node, where
from tests.lab.guests import HeartbeatWatch
from tests.lab.hosts import node_processes

pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(900)]

HEARTBEAT = re.compile(rb"^HEARTBEAT (\d+)\r?$", re.MULTILINE)


@pytest.fixture(scope="module")
def fenced(lab_cluster):
    with lab_cluster_mod.stonith_device(lab_cluster):
        yield lab_cluster


def settle(node, timeout: int = 120) -> None:
    on_node(node, ["crm_resource", "--wait", "--timeout", f"{timeout}s"])


def standby(node, state: bool) -> None:
    cmd = ["crm_attribute", "--node", node.name, "--name", "standby", "--lifetime", "forever"]
    on_node(node, [*cmd, "--update", "on"] if state else [*cmd, "--delete"])


def elsewhere(node, name: str) -> tuple[str, list[str]] | None:
    """Where Pacemaker runs ``name`` once that is one node other than ``node``."""
    role, nodes = where(node, name)
    return (role, nodes) if len(nodes) == 1 and nodes != [node.name] else None


def running_on(cluster, name: str) -> list[str]:
    """The nodes whose libvirtd runs guest ``name`` (libvirt's view, not Pacemaker's)."""
    found = []
    for node in cluster.nodes:
        if not node_processes(node, ("libvirtd",)):
            continue
        conn = node.connect()
        try:
            if name in [d.name() for d in conn.listAllDomains() if d.isActive()]:
                found.append(node.name)
        finally:
            conn.close()
    return found


@pytest.fixture
def restore(fenced, tiny_guest):
    """After the test (set up after ``tiny_guest``, so torn down first): every node up and
    out of standby, the guest out of Pacemaker (which stops it) and gone from every node."""
    names: list[str] = []
    yield names
    cluster = fenced
    for node in cluster.nodes:
        if not node_processes(node, ("corosync",)):
            if node_processes(node):
                lab_cluster_mod.fence("off", node.name)
            lab_cluster_mod.restart_node(node)
    first = cluster.nodes[0]
    lab_cluster_mod.wait_online(first, cluster.names, timeout=180)
    for node in cluster.nodes:
        standby(node, False)
    for name in names:
        lab_cluster_mod.remove_resource(first, name)
    settle(first)
    conns = [node.connect() for node in cluster.nodes]
    try:
        for name in names:
            remove_domain_named(conns, name)
    finally:
        for conn in conns:
            conn.close()


def test_standby_power_loss_and_rejoin(fenced, tiny_guest, restore, tmp_path, record_property):
    cluster = fenced
    home = cluster.nodes[0]
    guest = tiny_guest(conn=home.connect())
    restore.append(guest.name)
    args = {
        "name": guest.name,
        "config": str(guest.files.dir / "domain.xml"),
        "write_config": True,
        "allow_migrate": True,
        "migration_transport": "tcp",  # the lab's libvirtds listen on TCP
        # libvirt trusts only network filesystems as shared storage, not the lab's directory
        # (test_migration.py passes VIR_MIGRATE_UNSAFE too)
        "migrate_options": "--unsafe",
    }
    made = on(home, [{"name": "ha", "virtops.kvm.cluster_guest": args}], tmp_path)
    assert made.rc == 0, made.stdout
    assert made.task("ha")["nodes"] == [home.name]
    assert where(home, guest.name) == ("Started", [home.name])
    guest.wait_heartbeat(guest.last_heartbeat() + 1, timeout=120)
    guest.write_marker("failover", "written before the standby")

    # step 3: standby of its node, Pacemaker live-migrates it, the heartbeat goes on
    with HeartbeatWatch(guest) as watch:
        time.sleep(2)
        before = guest.last_heartbeat()
        started = time.monotonic()
        standby(home, True)
        role, nodes = wait_for(
            lambda: elsewhere(home, guest.name), 120, f"{guest.name} to leave {home.name}"
        )
        moved = time.monotonic()
        settle(home)
        assert role == "Started" and len(nodes) == 1
        target = cluster.node(nodes[0])
        guest.conn = target.connect()
        after = guest.wait_heartbeat(guest.last_heartbeat() + 2, timeout=60)
    gap = watch.max_gap(started, moved)
    record_property("standby_migration_seconds", round(moved - started, 2))
    record_property("standby_heartbeat_max_gap_s", round(gap, 2))
    print(f"standby: moved in {moved - started:.1f} s, longest heartbeat gap {gap:.2f} s")
    beats = [beat for _t, beat in watch.seen]
    assert beats == sorted(beats) and after > before, "restarted, not live-migrated"
    assert running_on(cluster, guest.name) == [target.name]
    assert gap < 10, f"heartbeat stalled {gap:.1f} s during the standby migration"
    dom_id = guest.dom.ID()
    standby(home, False)
    settle(home)
    assert where(home, guest.name) == ("Started", [target.name])  # stickiness: stays
    assert guest.dom.ID() == dom_id

    # step 4: power loss of the node running it
    guest.write_marker("failover", "written before the power loss")
    victim = target
    survivors = [n for n in cluster.nodes if n is not victim]
    killed = time.monotonic()
    off = lab_cluster_mod.fence("off", victim.name)
    assert off.returncode == 0, off.stderr
    assert node_processes(victim) == []
    offset = len(guest.console())  # its QEMU is dead: anything after this is a new boot

    def first_beat() -> float | None:
        return time.monotonic() if HEARTBEAT.search(guest.console(), offset) else None

    recovered = wait_for(first_beat, 300, f"{guest.name} to boot on a survivor", interval=0.1)
    failover = recovered - killed
    record_property("failover_seconds", round(failover, 2))
    print(f"power loss of {victim.name}: first heartbeat on a survivor after {failover:.1f} s")
    role, nodes = where(survivors[0], guest.name)
    assert role == "Started" and len(nodes) == 1 and nodes[0] != victim.name
    survivor = cluster.node(nodes[0])
    history = on_node(survivor, ["stonith_admin", "--history", victim.name])
    assert "successful" in history, history
    guest.conn = survivor.connect()
    assert running_on(cluster, guest.name) == [survivor.name]
    assert guest.read_marker("failover") == "written before the power loss"
    dom_id = guest.dom.ID()

    # step 6: the failed node rejoins; the guest neither runs twice nor moves back
    lab_cluster_mod.restart_node(victim)
    for node in cluster.nodes:
        lab_cluster_mod.wait_online(node, cluster.names, timeout=180)
    settle(survivor)
    assert where(victim, guest.name) == ("Started", [survivor.name])
    assert running_on(cluster, guest.name) == [survivor.name]
    assert guest.dom.ID() == dom_id
    beat = guest.wait_heartbeat(guest.last_heartbeat() + 1, timeout=60)
    assert beat > 1 and guest.heartbeats()[-1] == beat
    assert guest.read_marker("failover") == "written before the power loss"
