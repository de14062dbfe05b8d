"""cluster_guest run in-process on a CIB file made by Pacemaker's tools (CIB_file), with the
guest's definition written from libvirt's test driver."""

from __future__ import annotations

import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _client
from ansible_collections.virtops.kvm.plugins.modules import cluster_guest
from tests.pacemaker_cib import c14n, cib_for_modules, make_cib, needs_pacemaker

pytestmark = needs_pacemaker

TEST_URI = "test:///default"


@pytest.fixture
def cib(tmp_path, monkeypatch):
    return cib_for_modules(tmp_path, monkeypatch)


@pytest.fixture
def args(tmp_path):
    return {
        "uri": TEST_URI,
        "name": "test",
        "config": str(tmp_path / "test.xml"),
        "write_config": True,
        "wait": False,
    }


def test_check_apply_check_apply(cib, args, module_runner, tmp_path):
    args = {
        **args,
        "allow_migrate": True,
        "preferred_nodes": ["n2"],
        "priority": 5,
        "utilization": {"memory": 128, "vcpus": 1},
        "stickiness": 150,
        "meta": {"migration-threshold": 3},
    }
    before = cib.query()
    predicted = module_runner(cluster_guest, args, check_mode=True, diff=True)
    assert predicted.get("failed") is not True, predicted
    assert predicted["changed"] is True and predicted["config_written"] is True
    assert predicted["diff"]["before"] == {}
    assert c14n(cib.query()) == c14n(before)  # check mode wrote nothing
    assert not (tmp_path / "test.xml").exists()

    applied = module_runner(cluster_guest, args, diff=True)
    assert applied["changed"] is True
    assert applied["resource"] == predicted["resource"]
    resource = applied["resource"]
    assert resource["agent"] == "ocf:heartbeat:VirtualDomain"
    assert resource["params"]["config"] == args["config"]
    assert resource["params"]["hypervisor"] == TEST_URI
    assert resource["meta"] == {
        "target-role": "Started",
        "allow-migrate": "true",
        "priority": "5",
        "resource-stickiness": "150",
        "migration-threshold": "3",
    }
    assert resource["utilization"] == {"hv_memory": "128", "cpu": "1"}
    assert resource["operations"]["monitor"] == {"interval": 10, "timeout": 30}
    assert resource["operations"]["migrate_to"] == {"timeout": 120}
    assert resource["preferred_nodes"] == ["n2"]
    assert etree.parse(str(tmp_path / "test.xml")).findtext("name") == "test"

    written = cib.query()
    for check_mode in (True, False):
        again = module_runner(cluster_guest, args, check_mode=check_mode, diff=True)
        assert again["changed"] is False, again["diff"]
        assert again["diff"]["before"] == again["diff"]["after"]
    assert c14n(cib.query()) == c14n(written)
    # The scheduler takes the resource as written: it would start it on the preferred node.
    assert "Start      test    (    n2 )" in cib.transition()


def test_a_change_touches_only_what_it_names(cib, args, module_runner):
    module_runner(cluster_guest, {**args, "preferred_nodes": ["n1"]})
    cib.tool("crm_resource", "--resource", "test", "--ban", "--node", "n3")  # a user's own ban
    changed = module_runner(
        cluster_guest, {**args, "monitor_interval": 20, "preferred_nodes": ["n2"]}, diff=True
    )
    assert changed["changed"] is True
    diff = changed["diff"]
    assert diff["before"]["operations"]["monitor"]["interval"] == 10
    assert diff["after"]["operations"]["monitor"]["interval"] == 20
    assert diff["after"]["preferred_nodes"] == ["n2"]
    assert diff["after"]["constraints"] == ["cli-ban-test-on-n3", "test-prefer-n2"]
    assert diff["before"]["params"] == diff["after"]["params"]


def test_migration_parameters_are_the_agents_own(cib, args, module_runner):
    wanted = {**args, "allow_migrate": True, "migration_transport": "tcp"}
    first = module_runner(cluster_guest, {**wanted, "migrate_options": "--unsafe"})
    assert first["resource"]["params"]["migration_transport"] == "tcp"
    assert first["resource"]["params"]["migrate_options"] == "--unsafe"
    # not set: left as it is; set again: no change
    assert module_runner(cluster_guest, wanted)["changed"] is False
    assert (
        module_runner(cluster_guest, {**wanted, "migrate_options": "--unsafe"})["changed"] is False
    )
    changed = module_runner(cluster_guest, {**wanted, "migrate_options": "--unsafe --compressed"})
    assert changed["changed"] is True
    assert changed["resource"]["params"]["migrate_options"] == "--unsafe --compressed"


def test_stopped_sets_the_target_role(cib, args, module_runner):
    module_runner(cluster_guest, args)
    result = module_runner(cluster_guest, {**args, "state": "stopped"}, diff=True)
    assert result["changed"] is True
    assert result["diff"]["before"]["meta"]["target-role"] == "Started"
    assert result["resource"]["meta"]["target-role"] == "Stopped"


def test_refused_without_fencing(tmp_path, monkeypatch, args, module_runner):
    cib = make_cib(tmp_path / "nofence.xml", fencing=False)
    monkeypatch.setenv("CIB_file", str(cib.path))
    before = cib.query()
    refused = module_runner(cluster_guest, args)
    assert refused["failed"] is True
    assert "stonith-enabled is false" in refused["msg"]
    assert "allow_without_fencing" in refused["msg"]
    assert c14n(cib.query()) == c14n(before)
    assert not (tmp_path / "test.xml").exists()

    # Where a warning lands depends on ansible-core's version and on what ran before in
    # this process (controller or target side): recorded at the wrapper instead.
    seen = []
    monkeypatch.setattr(_client.KvmModule, "warn", lambda self, msg: seen.append(msg))
    allowed = module_runner(cluster_guest, {**args, "allow_without_fencing": True})
    assert allowed.get("failed") is not True, allowed
    assert allowed["changed"] is True
    assert any("highly available without fencing" in w for w in seen), seen


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"order_after": ["no-such-storage"]}, "not a resource of the cluster"),
        ({"resource_id": "1bad id"}, "not a valid Pacemaker id"),
        ({"preferred_nodes": ["n1"], "forbidden_nodes": ["n1"]}, "both preferred and forbidden"),
        ({"meta": {"target-role": "Stopped"}}, "use state"),
        ({"meta": {"resource-stickiness": 0}}, "stickiness"),
        ({"write_config": False}, "cannot be read"),
        ({"config": "relative.xml"}, "absolute path"),
    ],
)
def test_bad_input_changes_nothing(cib, args, module_runner, extra, message):
    before = cib.query()
    result = module_runner(cluster_guest, {**args, **extra})
    assert result["failed"] is True
    assert message in result["msg"]
    assert c14n(cib.query()) == c14n(before)


def test_a_config_of_another_guest_is_refused(cib, args, module_runner, tmp_path):
    (tmp_path / "test.xml").write_text("<domain type='qemu'><name>other</name></domain>")
    result = module_runner(cluster_guest, {**args, "write_config": False})
    assert result["failed"] is True
    assert "defines guest 'other'" in result["msg"]


def test_absent_removes_the_resource_and_its_constraints(cib, args, module_runner):
    module_runner(cluster_guest, {**args, "state": "stopped", "forbidden_nodes": ["n3"]})
    cib.create(
        "constraints",
        '<rsc_colocation id="with-fence" rsc="test" with-rsc="fence-lab" score="100"/>',
    )
    absent = {"uri": TEST_URI, "name": "test", "state": "absent"}
    predicted = module_runner(cluster_guest, absent, check_mode=True, diff=True)
    assert predicted["changed"] is True
    assert predicted["diff"]["after"] == {}
    assert "test-avoid-n3" in predicted["diff"]["before"]["constraints"]
    assert '<primitive id="test"' in cib.query()

    removed = module_runner(cluster_guest, absent)
    assert removed["changed"] is True and removed["resource"] is None
    text = cib.query()
    root = etree.fromstring(text.encode())
    assert not root.xpath("//*[@id='test' or @rsc='test' or @with-rsc='test']")
    assert not root.xpath("//nvpair[@name='stop-orphan-resources']")
    assert root.xpath("//primitive[@id='fence-lab']")
    assert module_runner(cluster_guest, absent)["changed"] is False


def test_a_foreign_resource_is_not_touched(cib, args, module_runner):
    cib.create("resources", '<primitive id="test" class="ocf" provider="pacemaker" type="Dummy"/>')
    before = cib.query()
    for state in ("started", "absent"):
        result = module_runner(cluster_guest, {**args, "state": state})
        assert result["failed"] is True
        assert "not an ocf:heartbeat:VirtualDomain primitive" in result["msg"]
    assert c14n(cib.query()) == c14n(before)


@pytest.mark.parametrize(("stickiness", "moves"), [(0, True), (None, False)])
def test_a_guest_found_running_stays_where_it_runs(cib, args, module_runner, stickiness, moves):
    """Pacemaker's default stickiness of 0 would move a guest found running on the node that
    also runs the stonith device; the module's default keeps it there."""
    if stickiness is not None:
        args = {**args, "stickiness": stickiness}
    assert module_runner(cluster_guest, args)["changed"] is True
    cib.simulate("--op-inject", "test_monitor_0@n1=0")  # the probe finds it running on n1
    assert "fence-lab" in cib.tool("crm_resource", "--locate", "--resource", "fence-lab").stdout
    assert "n1" in cib.tool("crm_resource", "--locate", "--resource", "fence-lab").stdout
    planned = cib.transition()
    assert ("test" in planned and "n1 -> n" in planned) is moves, planned


def test_wait_times_out_naming_what_it_saw(cib, args, module_runner):
    # On a CIB file nothing carries out the scheduler's plan: the resource stays stopped.
    result = module_runner(cluster_guest, {**args, "wait": True, "wait_timeout": 1})
    assert result["failed"] is True
    assert "Timed out after 1 s waiting for resource test to be Started" in result["msg"]
    assert "role Stopped on []" in result["msg"]
