"""The reconciler on libvirt's test driver, with the connection injected."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._domain import DomainManager
from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import DomainInfo
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError

from .domain_fakes import FakeKvm


@pytest.fixture
def conn():
    c = libvirt.open("test:///default")
    yield c
    c.close()


def run(conn, **params):
    check = params.pop("_check", False)
    return DomainManager(FakeKvm(conn, params, check_mode=check)).run()


BASE = {
    "name": "g1",
    "virt_type": "qemu",
    "memory": 256,
    "vcpus": 2,
    "interfaces": [{"network": "default"}],
    "tags": ["a"],
}


def test_create_check_apply_check_apply(conn):
    assert run(conn, _check=True, **BASE)["changed"] is True
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("g1")  # check mode created nothing
    first = run(conn, **BASE)
    assert first["changed"] is True and first["state"] == "shutoff"
    assert run(conn, _check=True, **BASE)["changed"] is False
    second = run(conn, **BASE)
    assert second["changed"] is False
    assert second["diff"]["before"] == second["diff"]["after"]


def test_check_mode_leaves_xml_identical_and_predicts(conn):
    run(conn, **BASE)
    dom = conn.lookupByName("g1")
    before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    edited = {**BASE, "memory": 384, "tags": ["a", "b"], "state": "running"}
    predicted = run(conn, _check=True, **edited)
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    # 384 MiB is above the maximum of 256 MiB: the maximum follows
    assert predicted["changes"] == ["tags", "max_memory", "memory"]
    assert predicted["state"] == "running" and dom.isActive() == 0
    applied = run(conn, **edited)
    assert applied["changes"] == predicted["changes"]
    assert applied["state"] == "running"
    assert run(conn, **edited)["changed"] is False


def test_running_guest_live_and_restart_fields(conn):
    run(conn, **{**BASE, "state": "running"})
    result = run(
        conn,
        **{
            **BASE,
            "state": "running",
            "memory": 128,
            "max_memory": 512,
            "title": "t",
            "tags": ["x"],
        },
    )
    assert result["restart_required"] == ["max_memory"]
    assert {"title", "tags"} <= set(result["live_applied"])
    dom = conn.lookupByName("g1")
    live_tags = dom.metadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        "https://virtops.dev/xmlns/kvm/1.0",
        libvirt.VIR_DOMAIN_AFFECT_LIVE,
    )
    assert ">x</" in live_tags
    assert (
        dom.metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None, libvirt.VIR_DOMAIN_AFFECT_LIVE) == "t"
    )


def test_validation_before_change(conn):
    run(conn, **BASE)
    before = conn.lookupByName("g1").XMLDesc(0)
    with pytest.raises(KvmValidationError, match="Unknown libvirt network"):
        run(conn, **{**BASE, "interfaces": [{"network": "nope"}]})
    with pytest.raises(KvmValidationError, match="is below memory"):
        run(conn, **{**BASE, "max_memory": 128})
    assert conn.lookupByName("g1").XMLDesc(0) == before


def test_memory_required_to_create(conn):
    with pytest.raises(KvmValidationError, match="memory is required"):
        run(conn, name="g2", virt_type="qemu")


def test_absent(conn):
    run(conn, **{**BASE, "state": "running"})
    assert run(conn, name="g1", state="absent", _check=True)["changed"] is True
    assert conn.lookupByName("g1")
    assert run(conn, name="g1", state="absent")["changed"] is True
    assert run(conn, name="g1", state="absent")["changed"] is False


def test_shutdown_and_states(conn):
    run(conn, **{**BASE, "state": "running"})
    assert run(conn, name="g1", state="paused")["state"] == "paused"
    result = run(conn, name="g1", state="shutdown")
    assert result["state"] == "shutoff" and result["changed"]
    assert run(conn, name="g1", state="shutdown")["changed"] is False


def test_info_by_tag(conn):
    run(conn, **BASE)
    run(conn, **{**BASE, "name": "g2", "tags": ["b"]})
    info = DomainInfo(conn)
    assert [g["name"] for g in info.collect(tags=["a"])] == ["g1"]
    assert [g["name"] for g in info.collect(states=["running"])] == ["test"]
    [g1] = info.collect(name="g1")
    assert g1["config"]["memory"] == 256 and g1["interfaces"][0]["mac"]
    assert info.collect(name="missing") == []


def test_check_mode_from_nothing_predicts_with_warnings(conn):
    """Network, pool, volume and bridge not there yet: check mode predicts, the real run fails."""
    spec = {
        **BASE,
        "state": "running",
        "interfaces": [{"network": "net-later"}, {"bridge": "br-later"}],
        "disks": [{"pool": "pool-later", "volume": "v.qcow2"}],
    }
    kvm = FakeKvm(conn, spec, check_mode=True)
    predicted = DomainManager(kvm).run()
    assert predicted["changed"] is True and predicted["state"] == "running"
    assert len(kvm.warnings) == 3, kvm.warnings  # one each, the pool's not repeated by probing
    assert kvm.warnings[0].startswith("Storage pool 'pool-later' does not exist yet; check mode")
    assert any("Libvirt network 'net-later' does not exist yet" in w for w in kvm.warnings)
    assert any("bridge 'br-later' on the host does not exist yet" in w for w in kvm.warnings)
    assert all(w.endswith("(the real run fails if it does not).") for w in kvm.warnings)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("g1")
    with pytest.raises(KvmValidationError, match="Unknown storage pool 'pool-later'"):
        run(conn, **spec)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("g1")  # the real run failed before defining anything


def test_check_mode_inactive_network_and_missing_volume(conn):
    """A stopped network and a volume missing from an existing pool are assumed too."""
    conn.networkLookupByName("default").destroy()
    pool = conn.storagePoolLookupByName("default-pool")
    spec = {**BASE, "state": "running", "disks": [{"pool": pool.name(), "volume": "later.img"}]}
    kvm = FakeKvm(conn, spec, check_mode=True)
    assert DomainManager(kvm).run()["changed"] is True
    assert any(
        "Libvirt network 'default' is not active; check mode assumes an earlier task starts it" in w
        for w in kvm.warnings
    ), kvm.warnings
    assert any(
        "Volume 'later.img' in storage pool 'default-pool' does not exist" in w
        for w in kvm.warnings
    )
    with pytest.raises(KvmValidationError, match="is not active"):
        run(conn, **{**spec, "disks": []})
    with pytest.raises(KvmValidationError, match=r"Unknown volume 'later\.img'"):
        run(conn, **{**spec, "state": "present"})


@pytest.mark.parametrize(
    ("cpuset", "message"),
    [
        ("0-1000000", r"CPU 1000000 is beyond the highest CPU number libvirt accepts \(16383\)"),
        ("0-3,^1,12", r"names CPUs the host does not have \(host CPUs 0-7\)"),
    ],
)
def test_cpusets_are_bounded_before_anything_changes(conn, cpuset, message):
    with pytest.raises(KvmValidationError, match=message):
        run(conn, **BASE, tuning={"emulator_pin": cpuset})
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("g1")  # nothing was defined


def test_cpuset_exclusion_reaches_the_definition(conn):
    result = run(conn, **BASE, tuning={"emulator_pin": "0-3,^1"})
    assert "<emulatorpin cpuset='0,2-3'/>" in result["xml"].replace('"', "'")


@pytest.mark.parametrize("limit", ["memory_hard_limit", "memory_soft_limit"])
def test_a_memory_limit_of_zero_removes_it_and_then_changes_nothing(conn, limit):
    run(conn, **BASE, tuning={limit: 512})
    assert "<memtune>" in conn.lookupByName("g1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    removed = run(conn, **BASE, tuning={limit: 0})
    assert removed["changed"] is True and removed["changes"] == [f"tuning.{limit}"]
    assert "memtune" not in conn.lookupByName("g1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert run(conn, **BASE, tuning={limit: 0})["changed"] is False
