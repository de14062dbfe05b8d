"""Unit tests of the external snapshot revert and delete: their plans and the order of their steps.

A fake guest records every libvirt call it gets, with the image directory's files (name ->
content) at that moment; a fake ``qemu-img create`` writes a small file. The failure paths
make one step fail and check that the guest keeps its old overlays, intact, and that only
the files the run made are gone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmError,
    KvmValidationError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot_external import (
    ExternalDeletePlan,
    ExternalRevertPlan,
    RevertDisk,
    active_chains,
    apply_external_delete,
    apply_external_revert,
    make_overlay,
    plan_external_delete,
    plan_external_revert,
)
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot_model import (
    SnapshotDisk,
    SnapshotModel,
)

OLD = "writes after the snapshot"

DOMAIN = """<domain type='qemu'>
  <name>g</name>
  <devices>
    {disks}
    <disk type='file' device='cdrom'>
      <source file='/nonexistent/seed.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <graphics type='vnc' port='-1' autoport='yes' passwd='s3cret'/>
  </devices>
</domain>"""

DISK = """<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{path}'/>
      <target dev='{target}' bus='virtio'/>
    </disk>"""


def domain_xml(disks: dict[str, Path]) -> str:
    return DOMAIN.format(
        disks="\n    ".join(DISK.format(path=p, target=t) for t, p in disks.items())
    )


def sources(xml: str) -> dict[str, str]:
    root = etree.fromstring(xml)
    return {
        d.find("target").get("dev"): d.find("source").get("file")
        for d in root.findall("devices/disk")
        if d.get("device") == "disk"
    }


def fail(msg: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(msg)
    exc.err = (
        libvirt.VIR_ERR_INTERNAL_ERROR,
        libvirt.VIR_FROM_NONE,
        msg,
        2,
        None,
        None,
        None,
        0,
        0,
    )
    return exc


class FakeSnapshot:
    def __init__(self, dom: FakeDom, name: str) -> None:
        self.dom = dom
        self.name = name

    def getXMLDesc(self, flags=0):
        return self.dom.snapshot_xml

    def delete(self, flags=0):
        self.dom.event("snapshot.delete", flags)


class FakeConn:
    def __init__(self, dom: FakeDom) -> None:
        self.dom = dom

    def defineXML(self, xml):
        self.dom.event("define", sources(xml))
        if self.dom.fail_define:
            self.dom.fail_define -= 1
            raise fail("define refused")
        self.dom.xml = xml
        return self.dom


class FakeDom:
    """A guest with file disks in ``folder``; ``events`` lists (call, detail, files)."""

    def __init__(self, folder: Path, disks: dict[str, Path], *, running: bool) -> None:
        self.folder = folder
        self.xml = domain_xml(disks)
        self.active = running
        self.events: list[tuple[str, object, dict[str, str]]] = []
        self.snapshot_xml = ""
        self.fail_define = 0  # how many defineXML calls fail
        self.fail_snapshot = False
        self.fail_start = False

    def files(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(self.folder.iterdir()) if p.is_file()}

    def event(self, call: str, detail: object = None) -> None:
        self.events.append((call, detail, self.files()))

    def calls(self) -> list[str]:
        return [e[0] for e in self.events]

    def at(self, call: str) -> dict[str, str]:
        return next(files for c, _d, files in self.events if c == call)

    # libvirt.virDomain
    def name(self):
        return "g"

    def state(self, flags=0):
        return [libvirt.VIR_DOMAIN_RUNNING if self.active else libvirt.VIR_DOMAIN_SHUTOFF, 0]

    def isActive(self):
        return self.active

    def XMLDesc(self, flags=0):
        if flags & libvirt.VIR_DOMAIN_XML_SECURE:
            return self.xml
        return self.xml.replace(" passwd='s3cret'", "")  # as libvirt: secrets only on request

    def connect(self):
        return FakeConn(self)

    def destroy(self):
        self.event("destroy")
        self.active = False

    def createWithFlags(self, flags=0):
        self.event("start", flags)
        if self.fail_start:
            raise fail("start refused")
        self.active = True

    def snapshotLookupByName(self, name, flags=0):
        return FakeSnapshot(self, name)

    def snapshotCreateXML(self, xml, flags):
        root = etree.fromstring(xml)
        self.event(
            "snapshot.redefine",
            {d.get("name"): d.find("source").get("file") for d in root.findall("disks/disk")},
        )
        if self.fail_snapshot:
            raise fail("redefine refused")
        self.snapshot_xml = xml


def fake_make(dom: FakeDom, fail_on: str | None = None, partial: bool = True):
    """A ``qemu-img create`` stand-in: writes ``overlay on <base>``; fails for paths that
    contain ``fail_on``, leaving a partly written file as a real failed create may."""

    def make(path: str, base: str, base_fmt: str) -> None:
        if fail_on and fail_on in path:
            if partial:
                Path(path).write_text("partial")
            dom.event("make.failed", path)
            raise KvmError(f"qemu-img could not create overlay {path} on {base}: No space left")
        Path(path).write_text(f"overlay on {Path(base).name}")
        dom.event("make", path)

    return make


@pytest.fixture
def guest(tmp_path):
    """A running guest on ``vda.s1.qcow2`` (on ``vda.raw``) and ``vdb.s1.qcow2`` (on
    ``vdb.raw``), snapshot ``s1`` whose overlays they are."""
    for name in ("vda.raw", "vdb.raw"):
        (tmp_path / name).write_text("base")
    for name in ("vda.s1.qcow2", "vdb.s1.qcow2"):
        (tmp_path / name).write_text(OLD)
    dom = FakeDom(
        tmp_path,
        {"vda": tmp_path / "vda.s1.qcow2", "vdb": tmp_path / "vdb.s1.qcow2"},
        running=True,
    )
    dom.snapshot_xml = (
        "<domainsnapshot><name>s1</name><disks>"
        f"<disk name='vda' snapshot='external'><source file='{tmp_path}/vda.s1.qcow2'/></disk>"
        f"<disk name='vdb' snapshot='external'><source file='{tmp_path}/vdb.s1.qcow2'/></disk>"
        "</disks></domainsnapshot>"
    )
    return dom


def snapshot(folder: Path) -> SnapshotModel:
    return SnapshotModel(
        name="s1",
        description=None,
        state="disk-snapshot",
        creation_time=1,
        parent=None,
        current=False,
        memory="no",
        disks=[
            SnapshotDisk(
                t, "external", str(folder / f"{t}.s1.qcow2"), str(folder / f"{t}.raw"), "raw"
            )
            for t in ("vda", "vdb")
        ],
    )


def in_place_plan(folder: Path) -> ExternalRevertPlan:
    return ExternalRevertPlan(
        [
            RevertDisk(t, str(folder / f"{t}.raw"), "raw", str(folder / f"{t}.s1.qcow2"), True)
            for t in ("vda", "vdb")
        ]
    )


def fork_plan(folder: Path) -> ExternalRevertPlan:
    """vda replaced in place, vdb forked to a new name (its overlay is a child's base)."""
    return ExternalRevertPlan(
        [
            RevertDisk("vda", str(folder / "vda.raw"), "raw", str(folder / "vda.s1.qcow2"), True),
            RevertDisk(
                "vdb", str(folder / "vdb.raw"), "raw", str(folder / "vdb.s1.r1.qcow2"), False
            ),
        ]
    )


START = {
    "vda.raw": "base",
    "vda.s1.qcow2": OLD,
    "vdb.raw": "base",
    "vdb.s1.qcow2": OLD,
}


# ---------------------------------------------------------------------------------------
# revert: the order on success


def test_revert_makes_new_overlays_before_stopping_and_removes_old_ones_last(guest, tmp_path):
    warnings = apply_external_revert(
        guest, snapshot(tmp_path), in_place_plan(tmp_path), "running", make=fake_make(guest)
    )

    assert warnings == []
    assert guest.calls() == ["make", "make", "destroy", "define", "snapshot.redefine", "start"]
    # Both new overlays exist (under hidden names) before the guest is stopped ...
    at_stop = guest.at("destroy")
    assert {k: v for k, v in at_stop.items() if not k.startswith(".")} == START
    assert sorted(v for k, v in at_stop.items() if k.startswith(".")) == [
        "overlay on vda.raw",
        "overlay on vdb.raw",
    ]
    # ... and when the definition is switched, each is in place while the replaced overlay's
    # data is still on disk (linked under a hidden name).
    at_define = guest.at("define")
    assert at_define["vda.s1.qcow2"] == "overlay on vda.raw"
    assert at_define["vdb.s1.qcow2"] == "overlay on vdb.raw"
    assert sorted(v for k, v in at_define.items() if k.startswith(".")) == [OLD, OLD]
    # Afterwards only the new overlays are left, under the old names.
    assert guest.files() == {
        "vda.raw": "base",
        "vda.s1.qcow2": "overlay on vda.raw",
        "vdb.raw": "base",
        "vdb.s1.qcow2": "overlay on vdb.raw",
    }
    assert sources(guest.xml) == {
        "vda": f"{tmp_path}/vda.s1.qcow2",
        "vdb": f"{tmp_path}/vdb.s1.qcow2",
    }
    assert guest.active
    # the definition written back keeps the console password (read with XML_SECURE)
    graphics = etree.fromstring(guest.xml).find("devices/graphics")
    assert graphics.get("passwd") == "s3cret"


def test_revert_to_a_snapshot_with_a_child_forks_and_keeps_the_childs_base(guest, tmp_path):
    apply_external_revert(
        guest, snapshot(tmp_path), fork_plan(tmp_path), "shutoff", make=fake_make(guest)
    )

    assert guest.calls() == ["make", "make", "destroy", "define", "snapshot.redefine"]
    assert guest.at("make")["vda.s1.qcow2"] == OLD
    assert guest.files() == {
        **START,
        "vda.s1.qcow2": "overlay on vda.raw",
        "vdb.s1.qcow2": OLD,  # the child's base: kept
        "vdb.s1.r1.qcow2": "overlay on vdb.raw",
    }
    assert sources(guest.xml)["vdb"] == f"{tmp_path}/vdb.s1.r1.qcow2"
    redefined = guest.events[4][1]
    assert redefined == {"vda": f"{tmp_path}/vda.s1.qcow2", "vdb": f"{tmp_path}/vdb.s1.r1.qcow2"}
    assert not guest.active


# ---------------------------------------------------------------------------------------
# revert: failures


def test_failed_create_changes_nothing_and_removes_only_its_own_files(guest, tmp_path):
    before_xml = guest.xml
    with pytest.raises(KvmError) as err:
        apply_external_revert(
            guest,
            snapshot(tmp_path),
            in_place_plan(tmp_path),
            "running",
            make=fake_make(guest, fail_on="vdb.s1.qcow2.new"),
        )

    msg = err.value.msg
    assert "failed and was undone; the guest was not touched" in msg, msg
    assert "No space left" in msg and err.value.details["disk"] == "vdb"
    assert guest.calls() == ["make", "make.failed"]  # never stopped, never redefined
    assert guest.files() == START  # old overlays intact; vda's new one and vdb's partial gone
    assert guest.xml == before_xml and guest.active


def test_failed_create_of_a_forked_overlay_removes_it(guest, tmp_path):
    with pytest.raises(KvmError):
        apply_external_revert(
            guest,
            snapshot(tmp_path),
            fork_plan(tmp_path),
            "shutoff",
            make=fake_make(guest, fail_on="vdb.s1.r1.qcow2"),
        )
    assert guest.files() == START
    assert "destroy" not in guest.calls()


def test_an_existing_file_at_the_new_name_is_refused_and_left_alone(guest, tmp_path):
    (tmp_path / "vdb.s1.r1.qcow2").write_text("someone else's")
    with pytest.raises(KvmError, match="exists already"):
        apply_external_revert(
            guest, snapshot(tmp_path), fork_plan(tmp_path), "shutoff", make=fake_make(guest)
        )
    assert guest.files() == {**START, "vdb.s1.r1.qcow2": "someone else's"}


def test_failed_define_puts_old_overlays_back_and_starts_the_guest_again(guest, tmp_path):
    before_xml = guest.xml
    guest.fail_define = 1
    with pytest.raises(KvmError) as err:
        apply_external_revert(
            guest, snapshot(tmp_path), fork_plan(tmp_path), "shutoff", make=fake_make(guest)
        )

    msg = err.value.msg
    assert "was undone; it was started again (running) on its previous disks" in msg, msg
    assert "define refused" in msg
    assert guest.calls() == ["make", "make", "destroy", "define", "start"]
    assert guest.files() == START
    assert guest.xml == before_xml and guest.active


def test_failed_snapshot_redefine_restores_the_definition_too(guest, tmp_path):
    before_xml = guest.xml
    guest.fail_snapshot = True
    guest.active = False
    with pytest.raises(KvmError) as err:
        apply_external_revert(
            guest, snapshot(tmp_path), fork_plan(tmp_path), "running", make=fake_make(guest)
        )

    assert "it is shut off and uses its previous disks, unchanged" in err.value.msg
    assert guest.calls() == ["make", "make", "define", "snapshot.redefine", "define"]
    assert guest.events[-1][1] == sources(before_xml)  # the old definition, defined again
    assert guest.files() == START
    assert guest.xml == before_xml and not guest.active


def test_an_undo_that_cannot_restore_the_definition_keeps_the_files_it_uses(guest, tmp_path):
    guest.fail_snapshot = True
    guest.fail_define = 0
    calls = []

    def define_then_refuse(xml):
        calls.append(xml)
        if len(calls) == 2:  # the undo's define
            guest.event("define", sources(xml))
            raise fail("libvirtd went away")
        guest.xml = xml
        guest.event("define", sources(xml))

    class Conn:
        defineXML = staticmethod(define_then_refuse)

    guest.connect = Conn
    with pytest.raises(KvmError) as err:
        apply_external_revert(
            guest, snapshot(tmp_path), fork_plan(tmp_path), "shutoff", make=fake_make(guest)
        )

    msg = err.value.msg
    assert "could not be undone completely" in msg and "libvirtd went away" in msg, msg
    assert f"kept {tmp_path}/vdb.s1.r1.qcow2" in msg
    # The guest's definition still names the forked overlay: it is there, and vda's old
    # overlay is back at its own name.
    assert sources(guest.xml)["vdb"] == f"{tmp_path}/vdb.s1.r1.qcow2"
    assert guest.files() == {**START, "vdb.s1.r1.qcow2": "overlay on vdb.raw"}


def test_a_failed_start_after_the_revert_says_the_revert_is_complete(guest, tmp_path):
    guest.fail_start = True
    with pytest.raises(KvmError, match="the revert itself is complete"):
        apply_external_revert(
            guest, snapshot(tmp_path), in_place_plan(tmp_path), "running", make=fake_make(guest)
        )
    assert guest.files()["vda.s1.qcow2"] == "overlay on vda.raw"
    assert not [k for k in guest.files() if k.startswith(".")]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_make_overlay_failure_names_the_file_and_qemu_imgs_reason(tmp_path):
    with pytest.raises(KvmError) as err:
        make_overlay(str(tmp_path / "new.qcow2"), str(tmp_path / "missing.raw"), "raw")
    assert (
        f"could not create overlay {tmp_path}/new.qcow2 on {tmp_path}/missing.raw" in err.value.msg
    )
    assert "No such file" in err.value.msg


# ---------------------------------------------------------------------------------------
# delete


def test_discard_delete_removes_metadata_first_then_tries_every_file(guest, tmp_path):
    stuck = tmp_path / "not-removable"
    stuck.mkdir()
    (stuck / "x").write_text("x")
    plan = ExternalDeletePlan("discard", [str(stuck), str(tmp_path / "vdb.s1.qcow2")])
    with pytest.raises(KvmError) as err:
        apply_external_delete(guest, snapshot(tmp_path), plan)
    assert guest.calls() == ["snapshot.delete"]
    assert guest.events[0][1] == libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
    assert "vdb.s1.qcow2" not in guest.files()  # tried after the one that failed
    assert f"could not remove {stuck}" in err.value.msg


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_an_unreadable_backing_chain_stops_the_delete_plan(tmp_path):
    """A chain cut short would make the images below look unused (and removable)."""
    dom = FakeDom(tmp_path, {"vda": tmp_path / "gone.qcow2"}, running=False)
    with pytest.raises(KvmError, match="Cannot read the backing chain of"):
        active_chains(dom, local=True)


# ---------------------------------------------------------------------------------------
# plans: what delete and revert will do, and what they refuse


def model(
    folder: Path,
    name: str,
    disks: dict[str, tuple[str, str]],
    *,
    parent: str | None = None,
    children: tuple[str, ...] = (),
    current: bool = False,
    memory: str = "no",
) -> SnapshotModel:
    """Snapshot ``name`` with, per disk target, (overlay, base) file names in ``folder``."""
    return SnapshotModel(
        name=name,
        description=None,
        state="disk-snapshot",
        creation_time=1,
        parent=parent,
        current=current,
        memory=memory,
        disks=[
            SnapshotDisk(t, "external", str(folder / f), str(folder / b), "raw")
            for t, (f, b) in disks.items()
        ],
        children=list(children),
    )


def s1_with_child(folder: Path, **kwargs) -> tuple[SnapshotModel, SnapshotModel]:
    s1 = model(
        folder,
        "s1",
        {"vda": ("vda.s1.qcow2", "vda.raw"), "vdb": ("vdb.s1.qcow2", "vdb.raw")},
        children=("s2",),
        **kwargs,
    )
    s2 = model(
        folder,
        "s2",
        {"vda": ("vda.s2.qcow2", "vda.s1.qcow2"), "vdb": ("vdb.s2.qcow2", "vdb.s1.qcow2")},
        parent="s1",
    )
    return s1, s2


def test_delete_plan_refuses_a_snapshot_with_two_children(guest, tmp_path):
    s1, s2 = s1_with_child(tmp_path)
    s1.children = ["s3", "s2"]
    s3 = model(tmp_path, "s3", {"vda": ("vda.s3.qcow2", "vda.s1.qcow2")}, parent="s1")
    snaps = {"s1": s1, "s2": s2, "s3": s3}
    with pytest.raises(KvmValidationError, match=r"has 2 child snapshots \(s2, s3\)"):
        plan_external_delete(guest, snaps, s1, local=True)


def test_delete_plan_counts_only_children_that_still_exist(guest, tmp_path):
    s1, s2 = s1_with_child(tmp_path)
    s1.children = ["s2", "gone"]
    plan = plan_external_delete(guest, {"s1": s1, "s2": s2}, s1, local=True)
    assert plan.method == "libvirt"
    assert plan.detail == "block commit into the base (libvirt)"


def test_delete_plan_refuses_a_current_snapshot_with_a_child(guest, tmp_path):
    s1, s2 = s1_with_child(tmp_path, current=True)
    with pytest.raises(KvmValidationError, match="is current and has a child \\(s2\\)"):
        plan_external_delete(guest, {"s1": s1, "s2": s2}, s1, local=True)


def test_delete_plan_refuses_when_the_child_is_not_based_on_the_overlay(guest, tmp_path):
    s1, s2 = s1_with_child(tmp_path)
    s2.disk("vdb").base = str(tmp_path / "vdb.s1.r1.qcow2")  # s1 was reverted to since
    with pytest.raises(KvmValidationError, match="disk vdb of its child s2 is not based on"):
        plan_external_delete(guest, {"s1": s1, "s2": s2}, s1, local=True)


def test_delete_plan_refuses_an_overlay_outside_the_active_chain(guest, tmp_path):
    s1, s2 = s1_with_child(tmp_path)
    for snap, old in ((s1, "file"), (s2, "base")):
        setattr(snap.disk("vda"), old, str(tmp_path / "vda.elsewhere.qcow2"))
    with pytest.raises(KvmValidationError, match="not in the active image chain of disk vda"):
        plan_external_delete(guest, {"s1": s1, "s2": s2}, s1, local=True)


def test_delete_plan_of_the_guests_top_overlays_is_an_active_commit(guest, tmp_path):
    plan = plan_external_delete(guest, {"s1": snapshot(tmp_path)}, snapshot(tmp_path), local=False)
    assert plan.method == "libvirt"
    assert plan.detail == "active block commit into the base (libvirt)"
    assert plan.remove_files == []


def test_delete_plan_refuses_overlays_partly_in_use(guest, tmp_path):
    snap = snapshot(tmp_path)
    snap.disk("vdb").file = str(tmp_path / "vdb.other.qcow2")
    with pytest.raises(KvmValidationError, match="some of its overlays are in use and some are"):
        plan_external_delete(guest, {"s1": snap}, snap, local=True)


def reverted_away(folder: Path) -> dict[str, SnapshotModel]:
    """s1 (the guest's overlays now), and s2 the guest was reverted away from: vda.s2 sits
    on an old overlay of s1 that the revert replaced, vdb.s2 on s1's current overlay."""
    s1 = model(
        folder,
        "s1",
        {"vda": ("vda.s1.qcow2", "vda.raw"), "vdb": ("vdb.s1.qcow2", "vdb.raw")},
        children=("s2",),
    )
    s2 = model(
        folder,
        "s2",
        {"vda": ("vda.s2.qcow2", "vda.s1.old.qcow2"), "vdb": ("vdb.s2.qcow2", "vdb.s1.qcow2")},
        parent="s1",
    )
    return {"s1": s1, "s2": s2}


def test_delete_plan_of_a_reverted_away_snapshot_needs_a_local_uri(guest, tmp_path):
    snaps = reverted_away(tmp_path)
    with pytest.raises(KvmValidationError, match="run the module on the KVM host"):
        plan_external_delete(guest, snaps, snaps["s2"], local=False)


def test_delete_plan_of_a_reverted_away_snapshot_discards_its_files_and_orphan_base(
    guest, tmp_path
):
    snaps = reverted_away(tmp_path)
    plan = plan_external_delete(guest, snaps, snaps["s2"], local=True)
    assert plan.method == "discard"
    assert plan.remove_files == [
        str(tmp_path / "vda.s2.qcow2"),
        str(tmp_path / "vda.s1.old.qcow2"),
        str(tmp_path / "vdb.s2.qcow2"),
    ]
    assert str(tmp_path / "vdb.s1.qcow2") not in plan.remove_files  # the guest's overlay


def test_delete_plan_keeps_files_another_snapshot_still_uses(guest, tmp_path):
    snaps = reverted_away(tmp_path)
    snaps["s3"] = model(
        tmp_path,
        "s3",
        {"vda": ("vda.s3.qcow2", "vda.s1.old.qcow2"), "vdb": ("vdb.s3.qcow2", "vdb.s2.qcow2")},
        parent="s1",
    )
    plan = plan_external_delete(guest, snaps, snaps["s2"], local=True)
    assert plan.remove_files == [str(tmp_path / "vda.s2.qcow2")]


def test_revert_plan_needs_a_local_uri(guest, tmp_path):
    snap = snapshot(tmp_path)
    with pytest.raises(KvmValidationError, match="Reverting to external snapshot s1 handles"):
        plan_external_revert(guest, {"s1": snap}, snap, local=False)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
@pytest.mark.parametrize(
    ("memory", "kind", "match"),
    [
        ("external", "external", "is external with memory=True"),
        ("no", "internal", "is internal with memory=False"),
    ],
)
def test_revert_plan_takes_only_disk_only_external_snapshots(guest, tmp_path, memory, kind, match):
    snap = snapshot(tmp_path)
    snap.memory = memory
    for d in snap.disks:
        d.snapshot = kind
    with pytest.raises(KvmValidationError, match=match):
        plan_external_revert(guest, {"s1": snap}, snap, local=True)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_revert_plan_refuses_a_disk_the_guest_no_longer_has(guest, tmp_path):
    snap = snapshot(tmp_path)
    snap.disk("vdb").name = "vdc"
    with pytest.raises(KvmValidationError, match="has disk vdc, which the guest no longer has"):
        plan_external_revert(guest, {"s1": snap}, snap, local=True)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_revert_plan_refuses_a_missing_base_image(guest, tmp_path):
    (tmp_path / "vdb.raw").unlink()
    snap = snapshot(tmp_path)
    with pytest.raises(KvmValidationError, match=f"\\({tmp_path}/vdb.raw\\) is missing"):
        plan_external_revert(guest, {"s1": snap}, snap, local=True)
    assert guest.events == []


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_revert_plan_without_children_rewrites_the_overlays_in_place(guest, tmp_path):
    snap = snapshot(tmp_path)
    plan = plan_external_revert(guest, {"s1": snap}, snap, local=True)
    assert plan == in_place_plan(tmp_path)
    assert plan.redefine is False
    assert [f["new_file"] for f in plan.facts()] == [False, False]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_revert_plan_forks_an_overlay_a_child_is_based_on_to_a_free_name(guest, tmp_path):
    snap = snapshot(tmp_path)
    snap.children = ["s2", "s3"]
    s2 = model(
        tmp_path,
        "s2",
        {"vda": ("vda.s2.qcow2", "vda.x.qcow2"), "vdb": ("vdb.s2.qcow2", "vdb.s1.qcow2")},
    )
    s3 = model(tmp_path, "s3", {"vdb": ("vdb.s3.qcow2", "vdb.s1.r2.qcow2")})  # r2 is taken
    (tmp_path / "vdb.s1.r1.qcow2").write_text("left by an earlier revert")  # r1 is taken
    plan = plan_external_revert(guest, {"s1": snap, "s2": s2, "s3": s3}, snap, local=True)
    assert plan.disks[0] == in_place_plan(tmp_path).disks[0]
    assert plan.disks[1] == RevertDisk(
        "vdb", str(tmp_path / "vdb.raw"), "raw", str(tmp_path / "vdb.s1.r3.qcow2"), False
    )
    assert plan.redefine is True
    assert plan.facts()[1] == {
        "disk": "vdb",
        "base": str(tmp_path / "vdb.raw"),
        "overlay": str(tmp_path / "vdb.s1.r3.qcow2"),
        "new_file": True,
    }
