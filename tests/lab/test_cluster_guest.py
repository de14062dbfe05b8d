"""cluster_guest and cluster_info on the lab cluster (``lab_cluster``: three namespaced nodes
with real Corosync and Pacemaker) with a real tiny guest whose files are on the lab's shared
directory: made highly available where it runs, a second run and check mode change nothing,
and removal leaves it running and defined."""

from __future__ import annotations

import time

import pytest
from lxml import etree

from tests.helpers import wait_for
from tests.lab import cluster as lab_cluster_mod
from tests.lab.cluster import STONITH_ID, cib, configuration, on, on_node, where

pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def fenced_cluster(lab_cluster):
    """The lab cluster with the lab fence agent as its stonith device (removed afterwards)."""
    with lab_cluster_mod.stonith_device(lab_cluster):
        yield lab_cluster


@pytest.fixture
def cleanup(fenced_cluster):
    """Resources a failed test left: deleted with their constraints (Pacemaker stops them)."""
    made: list[str] = []
    yield made
    for rid in made:
        lab_cluster_mod.remove_resource(fenced_cluster.nodes[0], rid)


def test_a_running_guest_made_ha_and_taken_out_again(
    fenced_cluster, tiny_guest, cleanup, tmp_path, record_property
):
    node = fenced_cluster.nodes[0]
    others = fenced_cluster.nodes[1:]
    guest = tiny_guest(conn=node.connect())
    cleanup.append(guest.name)
    dom_id = guest.dom.ID()
    config = guest.files.dir / "domain.xml"
    args = {
        "name": guest.name,
        "config": str(config),
        "write_config": True,
        "allow_migrate": True,
        "migration_transport": "tcp",  # the lab's libvirtds listen on TCP (tests/lab/hosts.py)
        "utilization": {"memory": 192, "vcpus": 1},
    }
    task = {"name": "ha", "virtops.kvm.cluster_guest": args}

    before = configuration(node)
    predicted = on(node, [task], tmp_path, check=True, diff=True)
    assert predicted.rc == 0, predicted.stdout
    result = predicted.task("ha")
    assert result["changed"] is True and result["config_written"] is True
    assert result["diff"]["before"] == {}
    assert result["diff"]["after"]["meta"]["target-role"] == "Started"
    assert not config.exists()
    assert configuration(node) == before

    started = time.monotonic()
    applied = on(node, [task], tmp_path)
    record_property("make_ha_seconds", round(time.monotonic() - started, 1))
    assert applied.rc == 0, applied.stdout
    result = applied.task("ha")
    assert result["changed"] is True
    assert result["nodes"] == [node.name] and result["role"] == "Started"
    assert etree.parse(str(config)).findtext("name") == guest.name
    # Pacemaker found it running where it was: not restarted, not started anywhere else.
    assert guest.dom.ID() == dom_id
    guest.wait_heartbeat(guest.last_heartbeat() + 1, timeout=60)
    for other in others:
        conn = other.connect()
        try:
            assert guest.name not in [d.name() for d in conn.listAllDomains()]
        finally:
            conn.close()
    assert where(others[0], guest.name) == ("Started", [node.name])

    for check in (True, False):
        again = on(node, [task], tmp_path, check=check)
        assert again.rc == 0, again.stdout
        assert again.task("ha")["changed"] is False, again.task("ha")

    info = on(node, [{"name": "info", "virtops.kvm.cluster_info": {}}], tmp_path)
    assert info.rc == 0, info.stdout
    cluster = info.task("info")["cluster"]
    assert cluster["quorate"] is True and cluster["dc"] in fenced_cluster.names
    assert sorted(n["name"] for n in cluster["nodes"] if n["online"]) == fenced_cluster.names
    assert cluster["expected_votes"] == 3 and cluster["total_votes"] == 3
    assert cluster["stonith"]["enabled"] is True
    assert [d["id"] for d in cluster["stonith"]["devices"]] == [STONITH_ID]
    [ha] = [g for g in cluster["guests"] if g["resource"] == guest.name]
    assert ha["guest"] == guest.name and ha["node"] == node.name and ha["role"] == "Started"
    assert ha["managed"] is True and ha["failed"] is False and ha["failures"] == []
    assert ha["settled"] is True and cluster["settled"] is True

    absent = {"name": "out", "virtops.kvm.cluster_guest": {"name": guest.name, "state": "absent"}}
    started = time.monotonic()
    removed = on(node, [absent], tmp_path)
    record_property("remove_ha_seconds", round(time.monotonic() - started, 1))
    assert removed.rc == 0, removed.stdout
    assert removed.task("out")["changed"] is True
    assert removed.task("out")["nodes"] == [node.name]
    after = cib(node)
    assert not after.xpath("//*[@id=$id or @rsc=$id]", id=guest.name)
    assert not after.xpath("//nvpair[@name='stop-orphan-resources']")
    # Left running and defined where it ran, and nothing stops it once the cluster settled.
    wait_for(
        lambda: on_node(node, ["crm_resource", "--wait", "--timeout", "60s"]) is not None,
        90,
        "the cluster to settle",
    )
    assert guest.dom.isActive() and guest.dom.isPersistent() and guest.dom.ID() == dom_id
    guest.wait_heartbeat(guest.last_heartbeat() + 1, timeout=60)
    again = on(node, [absent], tmp_path)
    assert again.rc == 0 and again.task("out")["changed"] is False


def test_a_guest_pacemaker_starts_is_placed_stopped_and_left_defined(
    fenced_cluster, tiny_guest, cleanup, tmp_path
):
    """Defined (not running) on one node, preferred on another: Pacemaker starts it there
    from the shared definition (transient); stopped and started through the cluster; when
    removed it is defined where it runs."""
    home, preferred = fenced_cluster.nodes[0], fenced_cluster.nodes[1]
    guest = tiny_guest(conn=home.connect(), start=False)
    cleanup.append(guest.name)
    config = guest.files.dir / "domain.xml"
    args = {
        "name": guest.name,
        "config": str(config),
        "write_config": True,
        "preferred_nodes": [preferred.name],
        "monitor_interval": 5,
    }
    made = on(home, [{"name": "ha", "virtops.kvm.cluster_guest": args}], tmp_path)
    assert made.rc == 0, made.stdout
    assert made.task("ha")["nodes"] == [preferred.name]
    guest.conn = preferred.connect()  # teardown removes it there too
    assert not guest.dom.isPersistent()  # VirtualDomain starts guests from the file
    guest.wait_heartbeat(0, timeout=120)

    stop = {**args, "write_config": False, "state": "stopped"}
    stopped = on(home, [{"name": "stop", "virtops.kvm.cluster_guest": stop}], tmp_path)
    assert stopped.rc == 0, stopped.stdout
    assert stopped.task("stop")["changed"] is True
    assert stopped.task("stop")["role"] == "Stopped" and stopped.task("stop")["nodes"] == []
    assert where(home, guest.name) == ("Stopped", [])
    conn = preferred.connect()
    try:
        assert guest.name not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()

    start = {**stop, "state": "started"}
    again = on(home, [{"name": "start", "virtops.kvm.cluster_guest": start}], tmp_path)
    assert again.rc == 0, again.stdout
    assert again.task("start")["nodes"] == [preferred.name]
    guest.wait_heartbeat(0, timeout=120)

    absent = {"name": guest.name, "state": "absent"}
    elsewhere = on(home, [{"name": "out", "virtops.kvm.cluster_guest": absent}], tmp_path)
    assert elsewhere.rc != 0  # it must run where the guest is, to leave it defined there
    assert preferred.name in elsewhere.task("out")["msg"]
    assert where(home, guest.name)[0] == "Started"
    removed = on(preferred, [{"name": "out", "virtops.kvm.cluster_guest": absent}], tmp_path)
    assert removed.rc == 0, removed.stdout
    assert removed.task("out")["changed"] is True
    wait_for(
        lambda: on_node(home, ["crm_resource", "--wait", "--timeout", "60s"]) is not None,
        90,
        "the cluster to settle",
    )
    assert where(home, guest.name) == (None, [])
    assert guest.dom.isActive() and guest.dom.isPersistent()
    guest.wait_heartbeat(guest.last_heartbeat() + 1, timeout=60)
