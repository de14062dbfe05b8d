"""_pacemaker_node (module cluster_node) on a CIB file made by Pacemaker's own tools:
crm_attribute sets the standby attribute in the file, and crm_simulate plays the cluster,
running the transition when the module waits (``crm_resource --wait``)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _pacemaker as pcmk
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmTimeoutError,
    KvmValidationError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._pacemaker_node import converge
from tests.pacemaker_cib import make_cib, needs_pacemaker

pytestmark = needs_pacemaker

DUMMY = '<primitive id="{0}" class="ocf" provider="pacemaker" type="Dummy"/>'


class Cluster:
    """The CIB file as the module's runner sees it. After each write the scheduler's
    transition runs on the file, as a cluster would act on it; with ``stuck`` nothing runs
    and ``crm_resource --wait`` times out."""

    def __init__(self, cib) -> None:
        self.cib = cib
        self.calls: list[list[str]] = []
        self.stuck = False

    def run(self, argv, data):
        self.calls.append(argv)
        if argv[0].endswith("crm_resource") and "--wait" in argv:
            if self.stuck:
                return 124, "", "Timed out"
            self.cib.simulate("--simulate")
            return 0, "", ""
        if argv[0].endswith("crm_node"):
            return 0, "n1\n", ""
        done = self.cib.run(argv, data)
        if argv[0].endswith("crm_attribute") and not self.stuck:
            self.cib.simulate("--simulate")
        return done

    def writes(self) -> list[list[str]]:
        return [c for c in self.calls if c[0].endswith("crm_attribute")]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    cib = make_cib(tmp_path / "cib.xml")
    monkeypatch.setenv("CIB_file", str(cib.path))
    for rid in ("web", "db"):
        cib.create("resources", DUMMY.format(rid))
    # both start on n1 (the scheduler's choice is pinned with a location preference)
    for rid in ("web", "db"):
        cib.create(
            "constraints",
            f'<rsc_location id="{rid}-prefers-n1" rsc="{rid}" node="n1" score="100"/>',
        )
    cib.simulate("--simulate")
    return Cluster(cib)


def node(cluster, name):
    status = pcmk.Tools(cluster.run).status()
    return next(n for n in pcmk.status_nodes(status) if n["name"] == name)


def run(cluster, **kwargs):
    args = {
        "name": "n1",
        "state": "standby",
        "wait": True,
        "wait_timeout": 5,
        "force": False,
        "check_mode": False,
        "sleep": lambda _s: None,
    }
    args.update(kwargs)
    return converge(pcmk.Tools(cluster.run), **args)


def test_standby_moves_every_resource_and_reports_where(cluster):
    result = run(cluster)
    assert result.changed and result.before == {"standby": False}
    assert result.after == {"standby": True}
    moved = {r["id"]: r for r in result.resources}
    assert set(moved) == {"web", "db", "fence-lab"}
    for res in moved.values():
        assert res["before"] == ["n1"] and len(res["nodes"]) == 1 and res["nodes"] != ["n1"]
    assert result.node == {"name": "n1", "online": True, "standby": True, "resources": []}
    assert result.warnings == []
    assert node(cluster, "n1")["standby"]
    again = run(cluster)
    assert not again.changed and again.resources == [] and cluster.writes()[1:] == []


def test_check_mode_predicts_and_writes_nothing(cluster):
    result = run(cluster, check_mode=True)
    assert result.changed and result.node["standby"] is True
    assert {r["id"] for r in result.resources} == {"web", "db", "fence-lab"}
    assert all(r["nodes"] == ["n1"] for r in result.resources)  # nothing moved
    assert cluster.writes() == [] and not node(cluster, "n1")["standby"]


def test_online_takes_the_node_out_of_standby_and_a_second_run_changes_nothing(cluster):
    run(cluster)
    back = run(cluster, state="online")
    assert back.changed and back.before == {"standby": True} and back.after == {"standby": False}
    assert not node(cluster, "n1")["standby"]
    assert not run(cluster, state="online").changed


def test_the_local_node_is_the_default(cluster):
    assert run(cluster, name=None).node["name"] == "n1"


def test_a_resource_no_other_node_may_run_is_reported_stopped(cluster):
    for other in ("n2", "n3"):
        cluster.cib.create(
            "constraints",
            f'<rsc_location id="db-not-{other}" rsc="db" node="{other}" score="-INFINITY"/>',
        )
    cluster.cib.simulate("--simulate")
    result = run(cluster)
    assert {r["id"]: r["nodes"] for r in result.resources}["db"] == []
    assert result.warnings == ["Resource db was stopped, not moved: no other node may run it"]


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        (None, {"name": "n9"}, "n9 is not a node of this cluster"),
        ("last", {"name": "n3"}, "n3 is the last online node out of standby"),
        ("no-quorum", {}, "The cluster has no quorum here"),
    ],
)
def test_refusals_change_nothing(cluster, setup, kwargs, message):
    if setup == "last":
        run(cluster, name="n1", wait=False)
        run(cluster, name="n2", wait=False)
    if setup == "no-quorum":
        text = cluster.cib.path.read_text()  # the quorum the last DC recorded
        cluster.cib.path.write_text(text.replace('have-quorum="true"', 'have-quorum="false"', 1))
    written = len(cluster.writes())
    with pytest.raises(KvmValidationError, match=message):
        run(cluster, **kwargs)
    assert len(cluster.writes()) == written


def test_force_puts_the_last_node_in_standby_and_its_resources_stop(cluster):
    run(cluster, name="n2", wait=False)
    run(cluster, name="n3", wait=False)
    result = run(cluster, force=True)
    assert result.changed and all(r["nodes"] == [] for r in result.resources)
    assert len(result.warnings) == 3  # web, db and the stonith device


def test_a_cluster_that_does_not_settle_times_out(cluster):
    cluster.stuck = True
    with pytest.raises(KvmTimeoutError, match="waiting for node n1 to run no resource"):
        run(cluster)
    assert node(cluster, "n1")["standby"]  # the node stays in the state asked for
