"""The pinning planner of virtops.kvm.tuning_plan, on hosts and guests given as data."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._domain_devices import Disk
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._tuning import (
    GuestView,
    HostView,
    Request,
    Settings,
    plan,
)

TAG = "cpu-dedicated"


def host(cells=((0, 1, 2, 3), (4, 5, 6, 7)), *, free_2m=None, resctrl=None, mem_mib=4096):
    view = HostView(
        cells={i: frozenset(c) for i, c in enumerate(cells)},
        cell_memory_mib={i: mem_mib for i in range(len(cells))},
    )
    if free_2m is not None:
        view.hugepages = {
            2048: dict(enumerate(free_2m)),
            1048576: dict.fromkeys(range(len(cells)), 0),
        }
    view.resctrl = resctrl or {"available": False, "reason": "resctrl is not mounted"}
    return view


def guest(name, vcpus=2, *, pins=None, tags=(), memory=512, active=False, disks=None, hp=None):
    return GuestView(
        name=name,
        active=active,
        tags=list(tags),
        max_vcpus=vcpus,
        memory_mib=memory,
        pins={v: frozenset(c) for v, c in (pins or {}).items()},
        hugepages=hp or {"enabled": False, "size": None},
        disks=disks or [],
    )


def req(name, **kw):
    return Request.from_params({"name": name, **kw}, 0)


def run(h, guests, requests, **settings):
    return plan(h, {g.name: g for g in guests}, requests, Settings(**settings))


def pins(entry):
    return {p["vcpu"]: p["cpuset"] for p in entry["tuning"]["vcpu_pins"]}


def test_dedicated_guests_get_disjoint_cpus_in_one_cell():
    result, messages, summary = run(
        host(),
        [guest("a"), guest("b", 3)],
        [req("a"), req("b")],
        reserved=frozenset({0}),
    )
    a, b = result
    # cell 1 has 4 free CPUs, cell 0 three: a goes to cell 1, then b to cell 0 (3 free)
    assert pins(a) == {0: "4", 1: "5"}
    assert a["cells"] == [1]
    assert pins(b) == {0: "1", 1: "2", 2: "3"}
    assert b["cells"] == [0]
    assert a["tuning"]["emulator_pin"] == "0"
    assert a["tuning"]["numa_memory"] == {"mode": "strict", "nodeset": "1"}
    assert a["tags"] == [TAG]
    assert summary["dedicated"] == {"a": "4-5", "b": "1-3"}
    assert summary["shared_pool"] == "6-7"
    assert messages == []


def test_plan_is_stable_when_guests_already_pinned():
    first, _msgs, _summary = run(
        host(), [guest("a"), guest("b")], [req("a"), req("b")], reserved=frozenset({0})
    )
    # the same guests, now carrying their pins and the tag; asked in the other order
    pinned = [
        guest(
            e["name"],
            pins={p["vcpu"]: {int(p["cpuset"])} for p in e["tuning"]["vcpu_pins"]},
            tags=[TAG],
        )
        for e in first
    ]
    second, _msgs, _summary = run(host(), pinned, [req("b"), req("a")], reserved=frozenset({0}))
    assert {e["name"]: pins(e) for e in second} == {e["name"]: pins(e) for e in first}


def test_refuses_overlap_with_a_dedicated_guest_outside_the_plan():
    other = guest("db", pins={0: {1}, 1: {2}}, tags=[TAG])
    with pytest.raises(KvmValidationError, match=r"overlaps CPUs dedicated.*db holds 2"):
        run(host(), [other, guest("a")], [req("a", cpus="2-3")], reserved=frozenset({0}))
    # without explicit CPUs the plan goes around them
    result, _msgs, summary = run(
        host(((0, 1, 2, 3, 4),)), [other, guest("a")], [req("a")], reserved=frozenset({0})
    )
    assert pins(result[0]) == {0: "3", 1: "4"}
    assert summary["dedicated"] == {"a": "3-4", "db": "1-2"}


def test_untagged_pinned_guest_is_not_dedicated_but_warned_about():
    other = guest("web", pins={0: {1}, 1: {2}})
    result, messages, _summary = run(
        host(((0, 1, 2),)), [other, guest("a")], [req("a", cpus="1-2")], reserved=frozenset({0})
    )
    assert pins(result[0]) == {0: "1", 1: "2"}
    assert any("web (not in the plan) has vCPUs pinned to 1-2" in m for m in messages)


def test_two_guests_of_the_plan_asking_for_the_same_cpus():
    with pytest.raises(KvmValidationError, match="a holds 2"):
        run(host(), [guest("a"), guest("b")], [req("a", cpus="1-2"), req("b", cpus="2-3")])


def test_not_enough_cpus_and_reserved_checks():
    with pytest.raises(KvmValidationError, match=r"needs 2 dedicated CPUs.*only 1 free"):
        run(host(((0, 1),)), [guest("a")], [req("a")], reserved=frozenset({0}))
    with pytest.raises(KvmValidationError, match="reserved for the host"):
        run(host(), [guest("a")], [req("a", cpus="0-1")], reserved=frozenset({0}))
    with pytest.raises(KvmValidationError, match="not on this host"):
        run(host(), [guest("a")], [req("a")], reserved=frozenset({9}))
    with pytest.raises(KvmValidationError, match="leaves no CPU"):
        run(host(((0, 1),)), [guest("a")], [req("a")], reserved=frozenset({0, 1}))
    with pytest.raises(KvmValidationError, match="no such guest"):
        run(host(), [], [req("ghost")])


def test_spans_cells_only_when_no_cell_fits():
    result, messages, _summary = run(
        host(), [guest("big", 6)], [req("big")], reserved=frozenset({0})
    )
    assert result[0]["cells"] == [0, 1]
    assert result[0]["tuning"]["numa_memory"]["nodeset"] == "0-1"
    assert any("span cells [0, 1]" in m for m in messages)
    with pytest.raises(KvmValidationError, match="NUMA cell 0 has only 3 free"):
        run(host(), [guest("big", 6)], [req("big", cell=0)], reserved=frozenset({0}))


def test_shared_guests_float_over_what_dedicated_guests_leave():
    result, _msgs, summary = run(
        host(),
        [guest("a"), guest("s", 2, tags=[TAG, "web"])],
        [req("s", cpu_policy="shared"), req("a")],
        reserved=frozenset({0}),
    )
    shared, dedicated = result
    assert dedicated["cpus"] == "4-5"
    assert pins(shared) == {0: "1-3,6-7", 1: "1-3,6-7"}
    assert shared["tags"] == ["web"]  # the dedicated tag is removed
    assert shared["tuning"]["numa_memory"]["nodeset"] == "0-1"
    assert summary["shared_pool"] == "1-3,6-7"


def test_emulator_placements():
    for placement, want in [("reserved", "0"), ("shared", "3"), ("vcpus", "1-2")]:
        result, _msgs, _summary = run(
            host(((0, 1, 2, 3),)),
            [guest("a")],
            [req("a", iothreads=2)],
            reserved=frozenset({0}),
            emulator_placement=placement,
        )
        assert result[0]["tuning"]["emulator_pin"] == want
        assert result[0]["tuning"]["iothread_pins"] == [
            {"iothread": 1, "cpuset": want},
            {"iothread": 2, "cpuset": want},
        ]
    result, _msgs, _summary = run(host(((0, 1, 2, 3),)), [guest("a")], [req("a")])
    assert result[0]["tuning"]["emulator_pin"] == "2-3"  # no reserved CPUs: the shared pool


def test_hugepages_checked_against_free_pages_of_the_cells():
    g = guest("a", memory=256)  # 128 pages of 2 MiB
    result, _msgs, _summary = run(
        host(free_2m=[0, 128]),
        [g],
        [req("a", hugepages=True, hugepage_size="2M")],
        reserved=frozenset({0}),
    )
    assert result[0]["cells"] == [1]
    assert result[0]["tuning"]["hugepages"] is True
    assert result[0]["tuning"]["hugepage_size"] == "2048KiB"
    with pytest.raises(KvmValidationError, match=r"needs 128 pages of 2048 KiB.*only 127 are free"):
        run(host(free_2m=[0, 127]), [g], [req("a", hugepages=True)], reserved=frozenset({0}))
    # a running guest already backed by them holds its pages
    running = guest("a", memory=256, active=True, hp={"enabled": True, "size": 2})
    run(host(free_2m=[0, 0]), [running], [req("a", hugepages=True)], reserved=frozenset({0}))
    with pytest.raises(KvmValidationError, match="no 4 KiB huge pages"):
        run(host(free_2m=[1, 1]), [g], [req("a", hugepages=True, hugepage_size="4K")])
    result, _msgs, _summary = run(host(), [g], [req("a", hugepages=False)])
    assert result[0]["tuning"]["hugepages"] is False
    assert "hugepage_size" not in result[0]["tuning"]


def test_memory_must_fit_strict_cells():
    with pytest.raises(KvmValidationError, match="does not fit NUMA cells"):
        run(host(mem_mib=1024), [guest("a", memory=2048)], [req("a")])
    result, _msgs, _summary = run(
        host(mem_mib=1024), [guest("a", memory=2048)], [req("a", numa=False)]
    )
    assert "numa_memory" not in result[0]["tuning"]


def test_cachetune_without_resctrl_says_so():
    result, messages, _summary = run(host(), [guest("a")], [req("a", cachetune={"size": "2MiB"})])
    assert "cachetune" not in result[0]["tuning"]
    assert any("cannot allocate cache" in m and "resctrl is not mounted" in m for m in messages)
    assert result[0]["notes"]
    with pytest.raises(KvmValidationError, match="cannot allocate cache"):
        run(host(), [guest("a")], [req("a", cachetune={"size": 2048})], cachetune_required=True)


def test_cachetune_with_resctrl():
    resctrl = {
        "available": True,
        "reason": "libvirt reports cache allocation controls",
        "cache_banks": [
            {"id": 0, "level": 3, "cpus": [0, 1, 2, 3], "size_bytes": 8 << 20, "allocation": True},
            {"id": 1, "level": 3, "cpus": [4, 5, 6, 7], "size_bytes": 8 << 20, "allocation": True},
        ],
    }
    result, messages, _summary = run(
        host(resctrl=resctrl),
        [guest("a")],
        [req("a", cachetune={"size": "1MiB"})],
        reserved=frozenset({0}),
    )
    assert result[0]["tuning"]["cachetune"] == [
        {"vcpus": "0-1", "cache_id": 1, "level": 3, "type": "both", "size": 1024}
    ]
    assert messages == []
    with pytest.raises(KvmValidationError, match="not below the L3 cache"):
        run(host(resctrl=resctrl), [guest("a")], [req("a", cachetune={"size": "8MiB"})])


def test_iotune_builds_the_complete_disk_list():
    disks = [
        Disk(target="vda", device="disk", bus="virtio", path="/img/a.qcow2"),
        Disk(target="vdb", device="disk", bus="virtio", pool="default", volume="b.qcow2"),
        Disk(target="sda", device="cdrom", bus="sata", path=""),
    ]
    result, _msgs, _summary = run(
        host(),
        [guest("a", disks=disks)],
        [req("a", iotune={"total_iops_sec": 500, "read_bytes_sec": 0}, iotune_disks=["vdb"])],
    )
    vda, vdb, sda = result[0]["disks"]
    assert vda == {"target": "vda", "device": "disk", "bus": "virtio", "path": "/img/a.qcow2"}
    assert vdb["pool"] == "default" and vdb["volume"] == "b.qcow2"
    assert vdb["iotune"] == {"total_iops_sec": 500}
    assert sda == {"target": "sda", "device": "cdrom", "bus": "sata", "path": ""}
    with pytest.raises(KvmValidationError, match=r"iotune_disks \['vdz'\]"):
        run(host(), [guest("a", disks=disks)], [req("a", iotune={}, iotune_disks=["vdz"])])
    net = [Disk(target="vda", device="disk", bus="virtio", path="")]
    with pytest.raises(KvmValidationError, match="neither a file"):
        run(host(), [guest("a", disks=net)], [req("a", iotune={"total_iops_sec": 1})])
    result, _msgs, _summary = run(host(), [guest("a", disks=disks)], [req("a")])
    assert result[0]["disks"] is None


def test_request_validation():
    with pytest.raises(KvmValidationError, match="hugepage_size needs hugepages"):
        req("a", hugepage_size="2M")
    with pytest.raises(KvmValidationError, match="unknown iotune keys"):
        req("a", iotune={"iops": 3})
    with pytest.raises(KvmValidationError, match="Invalid"):
        req("a", cpus="x-y")
    with pytest.raises(KvmValidationError, match="given more than once"):
        run(host(), [guest("a")], [req("a"), req("a")])
