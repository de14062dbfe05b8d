"""_pacemaker on CIB files made by Pacemaker's tools: version-checked writes, status, and the
removal sequence that leaves a running guest alone (proved with Pacemaker's scheduler)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _pacemaker as pcmk
from ansible_collections.virtops.kvm.plugins.module_utils import _pacemaker_resource as resource
from tests.pacemaker_cib import make_cib, needs_pacemaker

pytestmark = needs_pacemaker

GUEST = (
    '<primitive id="g1" class="ocf" provider="heartbeat" type="VirtualDomain">'
    '<instance_attributes id="g1-ia"><nvpair id="g1-ia-config" name="config" '
    'value="/srv/g1.xml"/></instance_attributes>'
    '<operations><op id="g1-monitor-10s" name="monitor" interval="10s" timeout="30s"/>'
    "</operations></primitive>"
)


@pytest.fixture
def cib(tmp_path):
    return make_cib(tmp_path / "cib.xml")


@pytest.fixture
def running(cib):
    """g1 started by the scheduler on a node (simulated agent)."""
    cib.create("resources", GUEST)
    cib.simulate("--simulate")
    return cib


def test_seconds():
    assert [pcmk.seconds(v) for v in ("10", "10s", "2min", "1h", "1500ms", "PT5S", None)] == [
        10,
        10,
        120,
        3600,
        1,
        None,
        None,
    ]


def test_a_write_over_a_changed_cib_is_refused(cib):
    tools = pcmk.Tools(cib.run)
    read = tools.query()
    cib.prop("no-quorum-policy", "freeze")  # someone else writes meanwhile
    resource.keep_orphan(read, "g1")
    with pytest.raises(pcmk.StaleCib):
        tools.replace(read)
    assert pcmk.cluster_properties(tools.query())["no-quorum-policy"] == "freeze"


def test_write_with_retry_recomputes_on_the_new_cib(cib):
    tools = pcmk.Tools(cib.run)
    calls = []

    def change(work):
        calls.append(pcmk.version(work)["epoch"])
        if len(calls) == 1:
            cib.prop("no-quorum-policy", "freeze")  # lands between this read and its write
        resource.keep_orphan(work, "g1")

    written = pcmk.write_with_retry(tools, change)[1]
    assert written is True
    assert len(calls) == 2 and calls[1] > calls[0]
    after = tools.query()
    assert pcmk.cluster_properties(after)["no-quorum-policy"] == "freeze"
    assert pcmk.cluster_properties(after)["stop-orphan-resources"] == "false"
    # Nothing left to change: no write, the epoch stays.
    epoch = pcmk.version(after)["epoch"]
    assert pcmk.write_with_retry(tools, lambda work: resource.keep_orphan(work, "g1"))[1] is False
    assert pcmk.version(tools.query())["epoch"] == epoch


def test_an_unmanaged_resource_deleted_is_still_stopped(running):
    """Why removal does not rely on is-managed=false: the orphan is managed again."""
    assert "Stop" not in running.transition()
    running.tool(
        "crm_resource",
        "--resource",
        "g1",
        "--meta",
        "--set-parameter",
        "is-managed",
        "--parameter-value",
        "false",
    )
    running.tool("cibadmin", "--delete", "-o", "resources", "--xml-text", '<primitive id="g1"/>')
    assert "Stop       g1" in running.transition()


def test_removal_with_the_orphan_kept_stops_nothing(running):
    tools = pcmk.Tools(running.run)
    running.prop("stop-orphan-resources", "true")  # the user's own setting stays below ours
    pcmk.write_with_retry(
        tools, lambda work: (resource.remove_resource(work, "g1"), resource.keep_orphan(work, "g1"))
    )
    cib = tools.query()
    assert pcmk.primitive(cib, "g1") is None
    assert pcmk.has_history(cib, "g1")  # the orphan is still known, and not stopped
    assert pcmk.cluster_properties(cib)["stop-orphan-resources"] == "false"
    assert running.transition().strip() == ""
    # Releasing before the history is gone would stop it: the sequence's order matters.
    pcmk.write_with_retry(tools, lambda work: resource.release_orphan(work, "g1"))
    assert pcmk.cluster_properties(tools.query())["stop-orphan-resources"] == "true"
    assert "Stop       g1" in running.transition()


def test_cluster_info_of_a_running_guest_with_a_failure(running, monkeypatch, tmp_path):
    config = tmp_path / "g1.xml"
    config.write_text("<domain type='qemu'><name>guest-one</name></domain>")
    running.tool(
        "crm_resource",
        "--resource",
        "g1",
        "--set-parameter",
        "config",
        "--parameter-value",
        str(config),
    )
    node = pcmk.running_on(pcmk.status_resource(pcmk.Tools(running.run).status(), "g1"))[0]
    running.simulate("--op-inject", f"g1_monitor_10000@{node}=1", "--simulate")
    monkeypatch.setenv("CIB_file", str(running.path))
    info = pcmk.cluster_info(pcmk.Tools(running.run))
    assert info["quorate"] is True
    assert [n["name"] for n in info["nodes"]] == ["n1", "n2", "n3"]
    assert all(n["online"] and not n["unclean"] for n in info["nodes"])
    assert info["stonith"] == {
        "enabled": True,
        "devices": [{"id": "fence-lab", "agent": "fence_virtopslab"}],
    }
    [g1] = info["guests"]
    assert g1["resource"] == "g1" and g1["guest"] == "guest-one"
    assert g1["role"] == "Started" and g1["nodes"] == [node] and g1["node"] == node
    assert g1["managed"] is True and g1["failed"] is False  # recovered in place
    assert [(f["operation"], f["node"], f["fail_count"]) for f in g1["failures"]] == [
        ("monitor", node, 1)
    ]
    assert g1["failures"][0]["interval_ms"] == 10000
    assert g1["settled"] is True and info["settled"] is True
    # Stopped by request but still running: not settled until Pacemaker acts.
    running.tool(
        "crm_resource",
        "--resource",
        "g1",
        "--meta",
        "--set-parameter",
        "target-role",
        "--parameter-value",
        "Stopped",
    )
    info = pcmk.cluster_info(pcmk.Tools(running.run))
    assert info["guests"][0]["settled"] is False and info["settled"] is False


def test_cluster_info_sees_nodes_go_and_fencing_off(running, monkeypatch):
    running.prop("stonith-enabled", "false")
    running.simulate("--node-down", "n3", "--simulate")
    monkeypatch.setenv("CIB_file", str(running.path))
    info = pcmk.cluster_info(pcmk.Tools(running.run))
    assert {n["name"]: n["online"] for n in info["nodes"]} == {"n1": True, "n2": True, "n3": False}
    assert info["stonith"]["enabled"] is False
    assert info["properties"]["stonith-enabled"] == "false"
    assert pcmk.fencing_problem(pcmk.Tools(running.run).query()) == (
        "the cluster property stonith-enabled is false"
    )
