"""The pool module's xml option on libvirt's test driver (its state does not outlive a
connection, so the second runs are in tests/integration/test_xml_option.py)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.modules import pool

TEST = "test:///default"
DEFAULT = {"uri": TEST, "name": "default-pool", "type": "dir", "target": "/default-pool"}
PERMISSIONS = "<target><permissions><mode>0750</mode></permissions></target>"


def test_fragment_on_an_existing_pool_is_a_redefine(module_runner):
    result = module_runner(pool, {**DEFAULT, "xml": PERMISSIONS}, check_mode=True, diff=True)
    assert result["changed"] and result["actions"] == ["redefine"]
    assert result["restart_required"] == ["xml"]  # the test driver's pool runs
    assert "<mode>0750</mode>" in result["diff"]["after"]["xml"]
    assert "<mode>0750</mode>" not in (result["diff"]["before"]["xml"] or "")


def test_whole_definition_gives_the_type(module_runner):
    xml = (
        "<pool type='scsi'><name>unit-scsi</name><source><adapter name='host0'/></source>"
        "<target><path>/dev/disk/by-path</path></target></pool>"
    )
    result = module_runner(pool, {"uri": TEST, "name": "unit-scsi", "xml": xml, "active": False})
    assert not result.get("failed"), result
    assert result["actions"] == ["define"] and result["pool"]["type"] == "scsi"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"xml": "<target><path>/x</path></target>"}, "the definition would have '/x'"),
        ({"xml": "<pool type='logical'/>"}, "type 'logical', but type is 'dir'"),
        ({"xml": "<pool><name>other</name></pool>"}, "names storage pool 'other'"),
        ({"xml": "<network/>"}, "is a <network> definition"),
        ({"xml": "<target>"}, "Malformed xml option"),
        ({"type": "", "xml": "<target/>"}, "The pool type is needed"),
        ({"type": "iscsi", "source": {"dir": "/x"}}, "give the source of this type in the xml"),
    ],
)
def test_refused_before_any_change(module_runner, args, message):
    merged = {k: v for k, v in {**DEFAULT, **args}.items() if v != ""}  # "": not given
    result = module_runner(pool, merged)
    assert result["failed"] and message in result["msg"], result["msg"]


def test_a_new_pool_needs_what_its_type_needs_after_the_merge(module_runner):
    args = {"uri": TEST, "name": "unit-dir", "type": "dir"}
    missing = module_runner(pool, {**args, "xml": PERMISSIONS})
    assert (
        missing["failed"] and "'target' (the directory of the pool) is required" in missing["msg"]
    )
    given = module_runner(
        pool, {**args, "xml": "<target><path>/unit-dir</path></target>"}, check_mode=True
    )
    assert given["changed"] and given["actions"] == ["define", "start"]
