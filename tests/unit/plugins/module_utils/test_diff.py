"""The difference tracker."""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._diff import Change, DifferenceTracker


def test_empty_tracker_is_unchanged():
    tracker = DifferenceTracker()
    assert not tracker
    assert tracker.changes == []
    assert tracker.diff() == {"before": {}, "after": {}}


def test_add_reports_whether_a_setting_differs():
    tracker = DifferenceTracker()
    assert tracker.add("memory", 1024, 2048, restart_required=True) is True
    assert tracker.add("autostart", True, True) is False
    assert tracker.add("vcpus", 2, 4) is True
    assert bool(tracker)
    assert tracker.changed_names() == ["memory", "vcpus"]
    assert tracker.restart_required() == ["memory"]
    assert [c.name for c in tracker.entries] == ["memory", "autostart", "vcpus"]


def test_diff_nests_dotted_names():
    tracker = DifferenceTracker()
    tracker.add("cpu.mode", "host-model", "custom")
    tracker.add("cpu.model", None, "EPYC")
    tracker.add("name", "g1", "g1")
    assert tracker.diff() == {
        "before": {"cpu": {"mode": "host-model", "model": None}, "name": "g1"},
        "after": {"cpu": {"mode": "custom", "model": "EPYC"}, "name": "g1"},
    }
    assert tracker.diff(only_changed=True) == {
        "before": {"cpu": {"mode": "host-model", "model": None}},
        "after": {"cpu": {"mode": "custom", "model": "EPYC"}},
    }


def test_dotted_name_replaces_a_scalar_parent():
    tracker = DifferenceTracker()
    tracker.add("a", 1, 2)
    tracker.add("a.b", 3, 4)
    assert tracker.diff()["after"] == {"a": {"b": 4}}


def test_change_compares_structures():
    assert not Change("disks", [{"dev": "vda"}], [{"dev": "vda"}]).changed
    assert Change("disks", [{"dev": "vda"}], [{"dev": "vdb"}]).changed
    assert Change("x", None, 0).changed
