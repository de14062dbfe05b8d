"""The role virtops.kvm.cluster takes a node out of the lab cluster and adds it back (issue 16:
"adding a node, removing a node, and a second run that changes nothing all work").

The third node leaves with ``cluster_node_state: absent``: a resource that prefers it moves
away before its daemons stop, the other two stay online and quorate with two expected votes,
and Pacemaker no longer lists it. Back in the group, it joins again. The session's
``lab_cluster`` is three nodes again at the end, also when the test fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.lab import cluster as lab_cluster_mod
from tests.lab.cluster import on_node, remove_resource, stonith_device, where
from tests.lab.hosts import node_processes, path_on_host

pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(900)]

CONF = Path("/etc/corosync/corosync.conf")
AUTHKEY = Path("/etc/corosync/authkey")
CIB_DIR = Path("/var/lib/pacemaker/cib")
CLUSTER_DAEMONS = (
    "corosync",
    "pacemakerd",
    "pacemaker-based",
    "pacemaker-fenced",
    "pacemaker-execd",
    "pacemaker-attrd",
    "pacemaker-schedulerd",
    "pacemaker-controld",
)
DUMMY = "virtops-lab-membership"


def on_host(node, path: Path) -> Path:
    return path_on_host(node.uri, path)


def changed_tasks(run) -> set[str]:
    return {e["task"].split(" : ", 1)[-1] for e in run.results if e["result"].get("changed")}


def run_in(node, cmd: list[str]) -> str:
    """``cmd``'s output inside ``node``, whatever its exit code."""
    proc = subprocess.run(
        node.nsenter(cmd), capture_output=True, text=True, timeout=60, check=False
    )
    return proc.stdout


def quorum(node) -> dict[str, str]:
    """``corosync-quorumtool -s`` as a dict (Expected votes, Total votes, Quorate, ...)."""
    out = run_in(node, ["corosync-quorumtool", "-s"])
    return dict(re.findall(r"(?m)^([A-Z][A-Za-z ]+):\s+(.*?)\s*$", out))


def known_to_pacemaker(node, name: str) -> list[str]:
    """Where Pacemaker in ``node`` still lists ``name``: crm_mon, the CIB's nodes and status
    sections (empty: forgotten). Its peer cache (``crm_node -l``) keeps a removed node as
    "lost" until Pacemaker restarts; that is not checked."""
    now = lab_cluster_mod.status(node)
    found = [f"crm_mon: {name}"] if name in now.online + now.offline else []
    cib = lab_cluster_mod.cib(node)
    found += [f"CIB: <{e.tag} uname={name}>" for e in cib.xpath("//*[@uname=$n]", n=name)]
    return found


def restore(lab_cluster) -> None:
    """The third node back in the cluster: the role, or (if the role cannot) by hand."""
    first, third = lab_cluster.nodes[0], lab_cluster.nodes[2]
    run_in(
        first, ["crm_attribute", "--type", "nodes", "--node", third.name, "--name", "standby",
                "--delete"]
    )  # fmt: skip
    try:
        lab_cluster_mod.wait_online(first, lab_cluster.names, timeout=5)
        return
    except RuntimeError:
        pass
    run = lab_cluster.run_role()
    if run.rc != 0 or not node_processes(third, ("corosync",)):
        # the way the role would: the first node's key and configuration, then the daemons
        for path in (AUTHKEY, CONF):
            shutil.copy2(on_host(first, path), on_host(third, path))
        on_node(first, ["corosync-cfgtool", "-R"])
        if not node_processes(third, ("corosync",)):
            on_node(third, ["corosync"])
        if not node_processes(third, ("pacemakerd",)):
            on_node(third, ["sh", "-c", lab_cluster_mod.START_PACEMAKER])
    for node in lab_cluster.nodes:
        lab_cluster_mod.wait_online(node, lab_cluster.names, timeout=120)


@pytest.fixture
def third_node_back(lab_cluster):
    """The third node, and the cluster made of all three again when the test ends."""
    yield lab_cluster.nodes[2]
    restore(lab_cluster)


def test_role_removes_a_node_and_adds_it_back(lab_cluster, third_node_back, record_property):
    first, second, third = lab_cluster.nodes
    staying = [first.name, second.name]
    absent = {third.name: {"cluster_node_state": "absent"}}
    set_aside_before = set(on_host(third, CONF.parent).glob("removed-*"))
    # refused before any change: one node would remain
    run = lab_cluster.run_role(hostvars={**absent, second.name: {"cluster_node_state": "absent"}})
    assert run.rc != 0
    assert f"removing {second.name}, {third.name} would leave 1 node(s)" in run.stdout
    assert changed_tasks(run) == set()
    with stonith_device(lab_cluster):
        # a resource on the leaving node, which must move before its Pacemaker stops
        on_node(
            first,
            ["cibadmin", "--create", "-o", "resources", "--xml-pipe"],
            data=f'<primitive id="{DUMMY}" class="ocf" provider="pacemaker" type="Dummy"/>',
        )
        try:
            on_node(first, ["crm_resource", "--resource", DUMMY, "--move", "--node", third.name])
            wait_for(
                lambda: where(first, DUMMY) == ("Started", [third.name]),
                60,
                f"{DUMMY} started on {third.name}",
                interval=1,
            )

            started = time.monotonic()
            run = lab_cluster.run_role(hostvars=absent)
            removed = time.monotonic() - started
            record_property("remove_seconds", round(removed, 1))
            assert run.rc == 0, run.stdout[-4000:]
            assert {
                "Put the leaving node in standby",
                "Stop Pacemaker, then Corosync",
                "Move the leaving node's cluster files aside",
                "Reload Corosync",
                "Remove the nodes that left from Pacemaker",
            } <= changed_tasks(run)
            role, running_on = where(first, DUMMY)
            assert role == "Started" and running_on[0] in staying
        finally:
            remove_resource(first, DUMMY)

    # two nodes online and quorate, with two expected votes; the third forgotten and stopped;
    # two_node (corosync.conf with two nodes) is taken at runtime by the reload: quorum 1
    votes = quorum(first)
    assert (votes["Quorate"], votes["Quorum"], votes["Flags"]) == (
        "Yes",
        "1",
        "2Node Quorate WaitForAll",
    )
    for node in (first, second):
        seen = lab_cluster_mod.wait_online(node, staying, timeout=60)
        assert seen.offline == []
        assert known_to_pacemaker(node, third.name) == []
        text = on_host(node, CONF).read_text()
        assert f"name: {third.name}\n" not in text
    assert (votes["Quorate"], votes["Expected votes"], votes["Total votes"]) == ("Yes", "2", "2")
    assert node_processes(third, CLUSTER_DAEMONS) == []
    assert not on_host(third, CONF).exists() and not on_host(third, AUTHKEY).exists()
    aside = set(on_host(third, CONF.parent).glob("removed-*")) - set_aside_before
    assert [sorted(p.name for p in d.iterdir()) for d in aside] == [["authkey", "corosync.conf"]]
    assert list(on_host(third, CIB_DIR).iterdir()) == []

    run = lab_cluster.run_role(hostvars=absent)
    assert run.rc == 0, run.stdout[-4000:]
    assert changed_tasks(run) == set()

    # back in the group: it joins again
    started = time.monotonic()
    run = lab_cluster.run_role()
    added = time.monotonic() - started
    record_property("add_seconds", round(added, 1))
    assert run.rc == 0, run.stdout[-4000:]
    assert {"Start Corosync", "Start Pacemaker", "Write corosync.conf", "Reload Corosync"} <= (
        changed_tasks(run)
    )
    for node in lab_cluster.nodes:
        lab_cluster_mod.wait_online(node, lab_cluster.names, timeout=60)
    # a new member: not in standby (the leaving node's standby went with its CIB entry)
    standby = "//node[@uname=$n]//nvpair[@name='standby']"
    assert lab_cluster_mod.cib(first).xpath(standby, n=third.name) == []
    votes = quorum(third)
    assert (votes["Quorate"], votes["Expected votes"], votes["Total votes"]) == ("Yes", "3", "3")
    assert votes["Quorum"] == "2"
    assert "2Node" not in votes["Flags"] and "2Node" not in quorum(first)["Flags"]

    run = lab_cluster.run_role()
    assert run.rc == 0, run.stdout[-4000:]
    assert changed_tasks(run) == set()
    print(f"membership: removed in {removed:.1f} s, added back in {added:.1f} s")
