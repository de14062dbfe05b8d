"""Unit tests of the snapshot and snapshot_info modules on libvirt's test driver.

The test driver keeps snapshots as metadata only (no images), which is enough for the
request validation, check mode, idempotence of present/absent, retention order, the tree,
and the revert judgement of a shut-off guest (whose image files are real files here).
"""

from __future__ import annotations

import os
import secrets

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule
from ansible_collections.virtops.kvm.plugins.modules import snapshot, snapshot_info

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is needed for the test driver")

URI = "test:///default"

DOMAIN = """<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{path}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/nonexistent/seed.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
  </devices>
</domain>"""


@pytest.fixture
def conn():
    # test:///default is shared by the connections of one process while one stays open.
    c = libvirt.open(URI)
    yield c
    c.close()


@pytest.fixture
def guest(conn, tmp_path):
    """``guest(fmt='qcow2', running=False)`` defines a test-driver guest with a real file."""
    made = []

    def _make(fmt: str = "qcow2", running: bool = False):
        name = f"ut-snap-{secrets.token_hex(3)}"
        path = tmp_path / f"{name}.{fmt}"
        path.write_bytes(b"\0" * 4096)
        dom = conn.defineXML(DOMAIN.format(name=name, fmt=fmt, path=path))
        made.append(dom)
        if running:
            dom.create()
        elif dom.isActive():
            dom.destroy()
        return dom, path

    yield _make
    for dom in made:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def run(module_runner, args, module=snapshot, **kw):
    return module_runner(module, {"uri": URI, **args}, **kw)


def names(dom):
    return sorted(s.getName() for s in dom.listAllSnapshots(0))


def test_present_absent_check_apply_check_apply(module_runner, guest):
    dom, _path = guest()
    args = {"domain": dom.name(), "name": "s1", "description": "first"}
    res = run(module_runner, args, check_mode=True, diff=True)
    assert res["changed"] and names(dom) == []
    assert res["diff"]["after"]["snapshot"] == "s1" and res["snapshot"] is None
    res = run(module_runner, args)
    assert res["changed"] and names(dom) == ["s1"]
    assert res["snapshot"]["description"] == "first" and res["snapshot"]["current"]
    assert res["created"] == {"kind": "internal", "memory": False, "disks": {"vda": "internal"}}
    assert not run(module_runner, args, check_mode=True)["changed"]
    assert not run(module_runner, args)["changed"]

    # the description is the one thing that can change on an existing snapshot
    res = run(module_runner, {**args, "description": "renamed"}, diff=True)
    assert res["changed"] and res["snapshot"]["description"] == "renamed"
    assert res["diff"]["before"]["description"] == "first"

    absent = {"domain": dom.name(), "name": "s1", "state": "absent"}
    assert run(module_runner, absent, check_mode=True)["changed"] and names(dom) == ["s1"]
    res = run(module_runner, absent)
    assert res["changed"] and names(dom) == [] and res["snapshot"] is None
    assert not run(module_runner, absent, check_mode=True)["changed"]
    assert not run(module_runner, absent)["changed"]


def test_bad_input_fails_before_anything_changes(module_runner, guest):
    dom, _path = guest()
    raw, _path = guest(fmt="raw")
    running_raw, _path = guest(fmt="raw", running=True)
    cases = [
        ({"domain": "ut-snap-missing", "name": "s"}, "Guest 'ut-snap-missing' does not exist"),
        ({"domain": dom.name(), "name": "a/b"}, "Invalid snapshot name"),
        ({"domain": dom.name(), "name": "s", "memory": True}, "needs a running guest"),
        ({"domain": raw.name(), "name": "s"}, "needs qcow2 disks; not qcow2: vda (raw)"),
        ({"domain": running_raw.name(), "name": "s"}, "A memory snapshot of guest"),
        ({"domain": running_raw.name(), "name": "s", "memory": False}, "includes its memory"),
        ({"domain": dom.name(), "name": "s", "disks": ["vdz"]}, "has no disk 'vdz'"),
        ({"domain": dom.name(), "name": "s", "disks": ["sda"]}, "cannot be snapshotted"),
        ({"domain": dom.name(), "name": "s", "quiesce": True}, "quiesce works with"),
        (
            {"domain": running_raw.name(), "name": "s", "kind": "external", "memory": True},
            "disk-only",
        ),
        ({"domain": dom.name(), "name": "nope", "state": "reverted"}, "has no snapshot 'nope'"),
        (
            {"domain": dom.name(), "name": "x-1", "retain": {"prefix": "n-", "keep": 2}},
            "must start with retain.prefix",
        ),
        (
            {"domain": dom.name(), "name": "n-1", "retain": {"prefix": "n-", "keep": 0}},
            "at least 1",
        ),
        (
            {"domain": dom.name(), "name": "s", "disks": ["vda"], "exclude_disks": ["vda"]},
            "mutually exclusive",
        ),
    ]
    for args, message in cases:
        res = run(module_runner, args)
        assert res.get("failed"), args
        assert message in res["msg"], (args, res["msg"])
    for d in (dom, raw, running_raw):
        assert names(d) == []


def test_check_mode_of_a_guest_not_defined_yet_predicts_with_a_warning(module_runner, monkeypatch):
    # module warnings are caught here: once a test has loaded controller code (the inventory
    # plugin's tests), Ansible sends them to its display instead of the result
    warned = []
    monkeypatch.setattr(KvmModule, "warn", lambda _self, msg: warned.append(msg))
    args = {"domain": "ut-snap-later", "name": "s1", "kind": "internal", "memory": False}
    res = run(module_runner, args, check_mode=True, diff=True)
    assert res["changed"] and not res.get("failed"), res
    assert warned == [
        "Guest 'ut-snap-later' does not exist yet; check mode assumes an earlier task creates "
        "it (the real run fails if it does not)."
    ]
    assert res["created"] == {"kind": "internal", "memory": False, "disks": {}}
    assert res["diff"] == {"before": {"snapshot": None}, "after": {"snapshot": "s1"}}
    absent = run(module_runner, {**args, "state": "absent"}, check_mode=True)
    assert not absent["changed"] and len(warned) == 2  # a new guest has no snapshot
    res = run(module_runner, args)
    assert res.get("failed") and "Guest 'ut-snap-later' does not exist" in res["msg"]


def test_kinds_are_not_mixed(module_runner, guest, conn):
    dom, _path = guest()
    assert run(module_runner, {"domain": dom.name(), "name": "i1"})["changed"]
    res = run(module_runner, {"domain": dom.name(), "name": "e1", "kind": "external"})
    assert res.get("failed") and "has internal snapshots" in res["msg"]
    assert names(dom) == ["i1"]


def test_retention_deletes_oldest_beyond_keep(module_runner, guest):
    dom, _path = guest()
    retain = {"prefix": "nightly-", "keep": 2}
    for i in range(1, 4):
        res = run(module_runner, {"domain": dom.name(), "name": f"nightly-{i}", "retain": retain})
        assert res["changed"]
    assert names(dom) == ["nightly-2", "nightly-3"]
    assert res["retention"] == {
        "prefix": "nightly-",
        "keep": 2,
        "kept": ["nightly-2", "nightly-3"],
        "deleted": ["nightly-1"],
    }
    # check mode counts the snapshot it would take
    res = run(
        module_runner,
        {"domain": dom.name(), "name": "nightly-4", "retain": retain},
        check_mode=True,
    )
    assert res["changed"] and res["retention"]["deleted"] == ["nightly-2"]
    assert names(dom) == ["nightly-2", "nightly-3"]
    # an existing snapshot within the limit: nothing to do
    res = run(module_runner, {"domain": dom.name(), "name": "nightly-3", "retain": retain})
    assert not res["changed"] and res["retention"]["deleted"] == []


def test_revert_of_stopped_guest_is_judged_by_image_files(module_runner, guest):
    dom, path = guest()
    run(module_runner, {"domain": dom.name(), "name": "s1"})
    run(module_runner, {"domain": dom.name(), "name": "s2"})
    revert = {"domain": dom.name(), "name": "s1", "state": "reverted"}

    res = run(module_runner, revert, check_mode=True)
    assert res["changed"] and res["revert_judgement"]["method"] == "current-snapshot"
    res = run(module_runner, revert)
    assert res["changed"] and res["snapshot"]["current"]
    res = run(module_runner, revert, check_mode=True)
    assert not res["changed"], res["revert_judgement"]
    judged = res["revert_judgement"]
    assert judged["unchanged"] and judged["method"] == "image-files"
    assert {c["check"] for c in judged["checks"]} >= {
        "snapshot is current",
        "vda: image modification time unchanged",
    }
    assert not run(module_runner, revert)["changed"]

    # a write to the image (a started guest, an offline edit): revert again
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    res = run(module_runner, revert, check_mode=True)
    assert res["changed"]
    failed = [c for c in res["revert_judgement"]["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["vda: image modification time unchanged"]

    # running when the revert would leave it shut off: revert
    dom.create()
    res = run(module_runner, revert, check_mode=True)
    assert res["changed"] and res["revert_judgement"]["method"] == "power-state"


def test_memory_snapshot_of_a_running_guest_reverts_each_time(module_runner, guest):
    dom, _path = guest(running=True)
    res = run(module_runner, {"domain": dom.name(), "name": "m1"})
    assert res["created"]["memory"] is True and res["snapshot"]["state"] == "running"
    res = run(module_runner, {"domain": dom.name(), "name": "m1", "state": "reverted"})
    # the test driver's vCPU time moves like a running guest's: it has changed since
    assert res["changed"]
    res = run(
        module_runner, {"domain": dom.name(), "name": "m1", "state": "reverted"}, check_mode=True
    )
    assert res["changed"] and not res["revert_judgement"]["unchanged"]
    assert res["revert_judgement"]["method"] == "write-counters+vcpu-time"


def test_snapshot_info_tree(module_runner, guest):
    dom, _path = guest()
    for name in ("a", "b"):
        run(module_runner, {"domain": dom.name(), "name": name})
    run(module_runner, {"domain": dom.name(), "name": "a", "state": "reverted"})
    run(module_runner, {"domain": dom.name(), "name": "c"})
    res = run(module_runner, {"domain": dom.name()}, module=snapshot_info)
    assert not res["changed"] and res["current"] == "c"
    by_name = {s["name"]: s for s in res["snapshots"]}
    assert by_name["a"]["children"] == ["b", "c"] and by_name["c"]["parent"] == "a"
    assert res["tree"][0]["name"] == "a"
    assert sorted(n["name"] for n in res["tree"][0]["children"]) == ["b", "c"]
    one = run(module_runner, {"domain": dom.name(), "name": "b"}, module=snapshot_info)
    assert [s["name"] for s in one["snapshots"]] == ["b"] and one["tree"] == []
    none = run(module_runner, {"domain": dom.name(), "name": "zz"}, module=snapshot_info)
    assert none["snapshots"] == []
