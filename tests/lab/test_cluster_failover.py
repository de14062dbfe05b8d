"""Failover on the lab cluster (``lab_cluster``, the lab fence agent as its stonith device)
with one tiny guest made highly available by virtops.kvm.cluster_guest, in order (issue 16):
standby of its node live-migrates it with the heartbeat going on (step 3); a power loss of
its node is fenced and the guest restarted on a survivor with its marker data (step 4); the
node rejoins and the guest neither runs twice nor moves back (step 6). Then quorum loss
(step 7): two of the three nodes lose power at once and the one left, without quorum, stops
the guest (the role's ``no-quorum-policy: stop``) rather than keep it where the others might
start it; once a second node is back the quorate pair starts it again, on one node only.
Maintenance: the evacuate playbook puts a node in standby (Pacemaker live-migrates the HA
guest), migrates the guest Pacemaker does not manage, and brings the node back."""

from __future__ import annotations

import re
import time

import pytest

from devtools.libvirt_cleanup import remove_domain_named
from tests.helpers import wait_for
from tests.lab import cluster as lab_cluster_mod
from tests.lab.cluster import ha_guest_args, on, on_node, settle, standby, where
from tests.lab.guests import HeartbeatWatch
from tests.lab.hosts import node_processes

pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(900)]

HEARTBEAT = re.compile(rb"^HEARTBEAT (\d+)\r?$", re.MULTILINE)
CMD_READY = re.compile(rb"^TINY CMD READY\r?$", re.MULTILINE)


@pytest.fixture(scope="module")
def fenced(lab_cluster):
    with lab_cluster_mod.stonith_device(lab_cluster):
        yield lab_cluster


def command_channel_back(guest, offset: int, timeout: float = 60) -> None:
    """Wait for the command channel of the boot logged after ``offset`` in the console (the
    log keeps every boot: an earlier boot's "ready" would let a command go out too soon)."""
    wait_for(lambda: CMD_READY.search(guest.console(), offset), timeout, f"{guest.name}: ready")


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


def make_ha(guest, home, tmp_path, **extra) -> None:
    """``guest`` (running on ``home``) made highly available by virtops.kvm.cluster_guest."""
    args = ha_guest_args(guest, **extra)
    made = on(home, [{"name": "ha", "virtops.kvm.cluster_guest": args}], tmp_path)
    assert made.rc == 0, made.stdout
    assert made.task("ha")["nodes"] == [home.name]
    assert where(home, guest.name) == ("Started", [home.name])


def test_standby_power_loss_and_rejoin(fenced, tiny_guest, restore, tmp_path, record_property):
    cluster = fenced
    home = cluster.nodes[0]
    guest = tiny_guest(conn=home.connect())
    restore.append(guest.name)
    make_ha(guest, home, tmp_path)
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
    command_channel_back(guest, offset)
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


def test_quorum_loss_stops_the_guest_until_quorum_returns(
    fenced, tiny_guest, restore, tmp_path, record_property
):
    cluster = fenced
    home, *others = cluster.nodes
    guest = tiny_guest(conn=home.connect())
    restore.append(guest.name)
    # a short stop timeout: the tiny guest ignores ACPI, so VirtualDomain's clean shutdown
    # waits out most of it before the forced one
    make_ha(guest, home, tmp_path, stop_timeout=20)
    guest.wait_heartbeat(guest.last_heartbeat() + 1, timeout=120)
    guest.write_marker("quorum", "written before the quorum loss")

    # step 7: two of three nodes lose power at once; the one left has no quorum
    lost = time.monotonic()
    for node in others:
        off = lab_cluster_mod.fence("off", node.name)
        assert off.returncode == 0, off.stderr
    lab_cluster_mod.wait_online(home, [home.name], timeout=60, quorate=False)
    stopped = wait_for(
        lambda: time.monotonic() if not running_on(cluster, guest.name) else None,
        120,
        f"{home.name}, without quorum, to stop {guest.name}",
        interval=0.2,
    )
    record_property("quorum_loss_stop_seconds", round(stopped - lost, 2))
    print(f"quorum lost: {guest.name} stopped on {home.name} after {stopped - lost:.1f} s")
    assert not guest.dom.isActive()  # still defined where it ran, not running
    offset = len(guest.console())  # anything after this is a new boot
    time.sleep(5)  # and it stays stopped: the partition without quorum starts nothing
    assert running_on(cluster, guest.name) == []
    assert lab_cluster_mod.status(home).quorate is False

    # one node back: the pair is quorate and starts the guest again, on one node
    back = others[0]
    lab_cluster_mod.restart_node(back)
    pair = sorted([home.name, back.name])
    lab_cluster_mod.wait_online(home, pair, timeout=180)
    started = wait_for(
        lambda: where(home, guest.name)[1] or None, 180, f"{guest.name} to start again"
    )
    settle(home)
    assert len(started) == 1 and started[0] in pair
    assert running_on(cluster, guest.name) == started
    guest.conn = cluster.node(started[0]).connect()
    wait_for(lambda: HEARTBEAT.search(guest.console(), offset), 120, f"{guest.name} to boot")
    command_channel_back(guest, offset)
    assert guest.read_marker("quorum") == "written before the quorum loss"


def evacuation(run) -> dict:
    """The result of the evacuate playbook's migrate task (the one with ``moved``)."""
    return next(e["result"] for e in run.results if "source_uri" in e["result"])


def test_evacuate_playbook_empties_a_cluster_node_and_brings_it_back(
    fenced, tiny_guest, restore, tmp_path
):
    cluster = fenced
    home = cluster.nodes[0]
    ha = tiny_guest(conn=home.connect())
    restore.append(ha.name)
    make_ha(ha, home, tmp_path)
    plain = tiny_guest(conn=home.connect())  # not Pacemaker's: the playbook migrates it
    restore.append(plain.name)
    extra = {
        "evacuate_source_uri": home.uri,
        "evacuate_target_uris": [n.uri for n in cluster.nodes],  # the source is skipped
        "evacuate_cluster_node": home.name,
        "evacuate_unsafe": True,  # the lab's shared directory is not a network filesystem
    }
    standby_task = "Put the cluster node in standby (Pacemaker moves its guests)"

    planned = cluster.run_playbook("virtops.kvm.evacuate", extra_vars=extra, check=True)
    assert planned.rc == 0, planned.stdout[-3000:]
    assert planned.task(standby_task)["changed"] is True
    assert [m["name"] for m in evacuation(planned)["moved"]] == [plain.name]  # not ha
    assert running_on(cluster, ha.name) == running_on(cluster, plain.name) == [home.name]
    assert where(home, ha.name) == ("Started", [home.name])

    before = ha.last_heartbeat()
    run = cluster.run_playbook("virtops.kvm.evacuate", extra_vars=extra)
    assert run.rc == 0, run.stdout[-3000:]
    went = {r["id"]: r["nodes"] for r in run.task(standby_task)["resources"]}
    assert len(went[ha.name]) == 1 and went[ha.name] != [home.name]
    [moved] = evacuation(run)["moved"]
    assert moved["name"] == plain.name and moved["dest_uri"] != home.uri
    assert running_on(cluster, ha.name) == went[ha.name]
    assert len(running_on(cluster, plain.name)) == 1
    assert running_on(cluster, plain.name) != [home.name]
    conn = home.connect()
    try:
        assert [d.name() for d in conn.listAllDomains() if d.isActive()] == []
    finally:
        conn.close()
    ha.conn = cluster.node(went[ha.name][0]).connect()
    assert ha.wait_heartbeat(before + 2, timeout=60) > before  # live-migrated, not restarted
    assert sorted(ha.heartbeats()) == ha.heartbeats()
    plain.conn = cluster.node(running_on(cluster, plain.name)[0]).connect()

    again = cluster.run_playbook("virtops.kvm.evacuate", extra_vars=extra)
    assert again.rc == 0, again.stdout[-3000:]
    assert again.task(standby_task)["changed"] is False
    assert evacuation(again)["moved"] == []

    back = cluster.run_playbook(
        "virtops.kvm.evacuate",
        extra_vars={"evacuate_cluster_node": home.name, "evacuate_return": True},
    )
    assert back.rc == 0, back.stdout[-3000:]
    assert back.task("Bring the cluster node back out of standby")["changed"] is True
    settle(home)
    info = on(home, [{"name": "info", "virtops.kvm.cluster_info": {}}], tmp_path).task("info")
    node = next(n for n in info["cluster"]["nodes"] if n["name"] == home.name)
    assert node["online"] and not node["standby"]
    assert where(home, ha.name) == ("Started", went[ha.name])  # stickiness: it stays
