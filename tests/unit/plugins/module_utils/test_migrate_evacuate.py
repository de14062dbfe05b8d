"""Unit tests of _migrate_evacuate (all_running, balance_threshold_mib) against fake hosts."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmError,
    KvmValidationError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._migrate_evacuate import (
    Evacuator,
    Guest,
    balance_pick,
    running_guests,
)
from ansible_collections.virtops.kvm.plugins.module_utils._migrate_options import validate

from .migrate_fakes import DST, SRC, FakeHost, FakeKvm, error, move, opener_for, params

DST2 = "qemu+tcp://198.18.0.13/system"
GONE = "qemu+tcp://198.18.0.14/system"
IMAGES = {"images": "/var/lib/libvirt/images"}


@pytest.fixture
def hosts():
    return {
        SRC: FakeHost(SRC),
        DST: FakeHost(DST, pools=IMAGES),
        DST2: FakeHost(DST2, pools=IMAGES),
    }


def add(hosts, name, mem_mib, dest=DST, **kwargs):
    n = len(hosts[SRC].domains) + 1
    dom = hosts[SRC].add(
        name,
        uuid=f"11111111-2222-3333-4444-{n:012d}",
        mem_mib=mem_mib,
        disk=f"/var/lib/libvirt/images/{name}.qcow2",
        **kwargs,
    )
    dom.migrate_impl = move(hosts[SRC], hosts[dest])
    return dom


def evacuator(hosts, *, check_mode=False, **overrides):
    overrides = dict({"name": None, "all_running": True}, **overrides)
    kvm = FakeKvm(params(**overrides), hosts[SRC], check_mode=check_mode)
    return Evacuator(kvm, opener=opener_for(hosts))


def migrate_calls(hosts):
    return [c for c in hosts[SRC].calls if c[0] == "migrateToURI3"]


# -- pure helpers ----------------------------------------------------------------------------


def test_running_guests_are_largest_first_then_by_name_and_skip_stopped_ones():
    host = FakeHost(SRC)
    host.add("b", mem_mib=256)
    host.add("a", mem_mib=256)
    host.add("big", mem_mib=1024)
    host.add("off", mem_mib=4096, active=False)
    host.add("odd", mem_mib=0).mem_kib = 1  # a single KiB still counts as one MiB
    assert running_guests(host) == [
        Guest("big", 1024),
        Guest("a", 256),
        Guest("b", 256),
        Guest("odd", 1),
    ]


def test_running_guests_skips_a_guest_that_vanishes_while_listed():
    host = FakeHost(SRC)
    host.add("stays", mem_mib=256)
    gone = host.add("gone", mem_mib=512)

    def vanished():
        raise error(libvirt.VIR_ERR_NO_DOMAIN, "no domain gone")

    gone.info = vanished
    assert running_guests(host) == [Guest("stays", 256)]


def test_balance_pick_takes_the_guest_closest_to_half_the_gap():
    guests = [Guest("a", 2048), Guest("b", 1024), Guest("c", 512)]
    assert balance_pick(guests, 3000).name == "b"  # |1500-1024| < |1500-2048|
    assert balance_pick(guests, 4000).name == "a"


def test_balance_pick_never_takes_a_guest_as_large_as_the_gap_or_empty():
    assert balance_pick([Guest("a", 1000), Guest("z", 0)], 1000) is None
    assert balance_pick([], 5000) is None


def test_balance_pick_breaks_ties_by_name():
    assert balance_pick([Guest("y", 400), Guest("x", 600)], 2000).name == "x"
    assert balance_pick([Guest("y", 500), Guest("x", 500)], 2000).name == "x"


# -- input checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "g1"}, "name and all_running=true are mutually exclusive"),
        ({"parallel": 0}, "parallel must be 1 or more"),
        ({"balance_threshold_mib": -1}, "balance_threshold_mib cannot be negative"),
    ],
)
def test_bad_input_is_refused_before_anything_moves(hosts, overrides, message):
    add(hosts, "g1", 256)
    with pytest.raises(KvmValidationError, match=message):
        evacuator(hosts, **overrides).run()
    assert migrate_calls(hosts) == []
    assert set(hosts[SRC].domains) == {"g1"}


# -- evacuation ------------------------------------------------------------------------------


def test_serial_evacuation_moves_every_running_guest_largest_first(hosts):
    for name, mem in (("small", 256), ("large", 1024), ("mid", 512)):
        add(hosts, name, mem)
    add(hosts, "stopped", 512, active=False)
    result = evacuator(hosts).run()
    assert result["changed"] is True
    assert [m["name"] for m in result["moved"]] == ["large", "mid", "small"]
    assert {m["dest_uri"] for m in result["moved"]} == {DST}
    assert result["remaining"] == []
    assert result["source_uri"] == SRC
    assert {"large", "mid", "small"} <= set(hosts[DST].domains)
    assert "stopped" not in hosts[DST].domains


def test_excluded_guests_stay_running_on_the_source_and_are_never_migrated(hosts):
    add(hosts, "large", 1024)
    add(hosts, "ha", 512)
    add(hosts, "small", 256)
    result = evacuator(hosts, exclude=["ha", "not-here"], parallel=2).run()
    assert sorted(m["name"] for m in result["moved"]) == ["large", "small"]
    assert result["remaining"] == ["ha"]
    assert hosts[SRC].domains["ha"].active and "ha" not in hosts[DST].domains
    assert len(migrate_calls(hosts)) == 2


def test_exclude_without_all_running_is_refused():
    with pytest.raises(KvmValidationError, match="exclude needs all_running=true"):
        validate(params(exclude=["g1"]))


def test_nothing_running_changes_nothing(hosts):
    add(hosts, "stopped", 512, active=False)
    result = evacuator(hosts).run()
    assert result == {"changed": False, "moved": [], "remaining": [], "source_uri": SRC}


def test_the_first_guest_that_cannot_move_stops_the_evacuation(hosts):
    add(hosts, "large", 1024)
    mid = add(hosts, "mid", 512)
    add(hosts, "small", 256)

    def refuse(dom, uri, params, flags):
        raise error(libvirt.VIR_ERR_OPERATION_FAILED, "migration refused")

    mid.migrate_impl = refuse
    with pytest.raises(KvmError) as err:
        evacuator(hosts).run()
    exc = err.value
    assert "stopped: guest mid could not move" in exc.msg
    assert f"Moved: large -> {DST}" in exc.msg
    assert "Still on the source: mid, small" in exc.msg
    assert [m["name"] for m in exc.details["moved"]] == ["large"]
    assert [f["name"] for f in exc.details["failed"]] == ["mid"]
    assert exc.details["remaining"] == ["mid", "small"]
    assert len(migrate_calls(hosts)) == 2  # large and mid tried, small never
    assert "small" not in hosts[DST].domains
    assert hosts[SRC].domains["small"].active


def test_check_mode_moves_nothing_and_reserves_each_planned_move(hosts):
    """Two 600 MiB guests fit the destination one at a time, not both: the plan must say so."""
    hosts[DST] = FakeHost(DST, total_mib=1000, free_mib=1000, pools=IMAGES)
    add(hosts, "a", 600)
    add(hosts, "b", 600)
    with pytest.raises(KvmError) as err:
        evacuator(hosts, check_mode=True).run()
    assert [m["name"] for m in err.value.details["moved"]] == ["a"]
    assert [f["name"] for f in err.value.details["failed"]] == ["b"]
    assert migrate_calls(hosts) == []
    assert hosts[DST].domains == {}
    assert hosts[SRC].domains["a"].active and hosts[SRC].domains["b"].active


def test_check_mode_plans_every_guest_when_they_all_fit(hosts):
    add(hosts, "a", 600)
    add(hosts, "b", 600)
    result = evacuator(hosts, check_mode=True).run()
    assert [m["name"] for m in result["moved"]] == ["a", "b"]
    assert result["remaining"] == ["a", "b"]
    assert migrate_calls(hosts) == []


def test_parallel_evacuation_moves_every_guest(hosts):
    for i in range(4):
        add(hosts, f"g{i}", 256)
    result = evacuator(hosts, parallel=2).run()
    assert sorted(m["name"] for m in result["moved"]) == ["g0", "g1", "g2", "g3"]
    assert result["remaining"] == []


# -- balancing -------------------------------------------------------------------------------


def test_balance_moves_the_guest_that_best_halves_the_gap_then_stops(hosts):
    add(hosts, "g2048", 2048)
    add(hosts, "g1024", 1024)
    add(hosts, "g512", 512)
    # source: 8192 - 3584 = 4608 MiB uncommitted, DST 8192: gap 3584, half 1792 -> g2048;
    # then source 6656, DST 6144: no gap left.
    result = evacuator(
        hosts, dest_uri=None, dest_candidates=[SRC, DST, GONE], balance_threshold_mib=1000
    ).run()
    assert [m["name"] for m in result["moved"]] == ["g2048"]
    assert result["moved"][0]["dest_uri"] == DST
    assert result["remaining"] == ["g1024", "g512"]


def test_balance_below_the_threshold_moves_nothing(hosts):
    add(hosts, "g2048", 2048)
    result = evacuator(hosts, balance_threshold_mib=2048).run()  # gap is exactly 2048
    assert result["changed"] is False
    assert migrate_calls(hosts) == []


def test_balance_with_only_unreachable_candidates_moves_nothing(hosts):
    add(hosts, "g2048", 2048)
    result = evacuator(hosts, dest_uri=None, dest_candidates=[GONE], balance_threshold_mib=0).run()
    assert result["changed"] is False
    assert result["remaining"] == ["g2048"]
