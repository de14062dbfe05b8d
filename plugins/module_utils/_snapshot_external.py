# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""External (overlay) snapshots: the deletions and reverts libvirt 9.0 does not do.

libvirt 9.0 *deletes* an external snapshot whose overlay is in the guest's active backing
chain itself (block commit of the overlay into its base: an active commit with pivot for
the top image of a running guest, a commit of an intermediate image otherwise, offline
with ``qemu-img`` for a shut-off guest) and removes the overlay file; the module uses that
and validates first what libvirt would refuse half-way. Two things are left to us:

Revert (libvirt 9.0: "revert to external snapshot not supported yet")
    1. for each external disk a fresh, empty qcow2 overlay is made on ``base(S, d)`` with
       ``qemu-img create`` (``base`` itself is never written) while the guest still runs on
       its old overlays. If no child snapshot is based on ``overlay(S, d)`` the old overlay
       only holds writes the revert discards and the new one replaces it under the same
       name (made under a hidden name beside it, then renamed over it); otherwise it is the
       base of that child and stays, and the new overlay gets a new name
       (``<overlay>.rN.qcow2``) recorded in the snapshot (redefined);
    2. the guest is stopped (a revert discards its current state), the new overlays are put
       in place, the persistent definition's disks point at them and ``S`` becomes current;
    3. only then are the replaced overlays removed, and the guest is started (or started
       paused) when the revert should leave it running.
    A failure in 1 changes nothing; a failure in 2 is undone (see :class:`_Revert`).
    The guest's configuration is left as it is now (only disk contents are restored).

Delete of a snapshot whose overlay is not in the active chain (a snapshot the guest was
reverted away from; it has no child): its overlay holds only discarded writes, so it is
removed without a merge, the metadata is deleted, and a base left without any user (an
overlay of the parent that a revert replaced) is removed too.

Everything here handles image files directly and so needs the module to run on the KVM
host (a local URI) with ``qemu-img``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _xml
from ._domain_xml import domain_xml
from ._errors import KvmError, KvmValidationError, from_libvirt
from ._libvirt import domain_state, libvirt
from ._snapshot_model import (
    SnapshotModel,
    backing_chain_offline,
    parse_disks,
)


def active_chains(dom, *, local: bool) -> dict[str, list[str]]:
    """Per disk target: the image chain the guest uses now, top first."""
    if dom.isActive():
        return {d.target: d.chain for d in parse_disks(domain_xml(dom))}
    chains = {}
    for disk in parse_disks(domain_xml(dom, inactive=True)):
        if disk.source and local and disk.type == "file" and disk.device in ("disk", "lun"):
            chains[disk.target] = backing_chain_offline(disk.source)
        else:
            chains[disk.target] = disk.chain
    return chains


def _qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise KvmValidationError("qemu-img is needed on the KVM host for this operation")
    return path


def _require_local(local: bool, what: str) -> None:
    if not local:
        raise KvmValidationError(
            f"{what} handles image files directly: run the module on the KVM host "
            "(a local libvirt URI such as qemu:///system)"
        )


# ---------------------------------------------------------------------------------------
# Delete


@dataclass
class ExternalDeletePlan:
    method: str  # libvirt | discard
    remove_files: list[str] = field(default_factory=list)
    detail: str = ""


def plan_external_delete(
    dom, snaps: dict[str, SnapshotModel], snap: SnapshotModel, *, local: bool
) -> ExternalDeletePlan:
    """How to delete external ``snap`` without losing data; refuse what cannot be done."""
    chains = active_chains(dom, local=local)
    kids = [snaps[c] for c in snap.children if c in snaps]
    if len(kids) > 1:
        raise KvmValidationError(
            f"Snapshot {snap.name} has {len(kids)} child snapshots"
            f" ({', '.join(sorted(snap.children))}):"
            " an external snapshot can only be merged into one line of snapshots; delete the"
            " snapshots of the other branches first",
            snapshot=snap.name,
        )
    ext = snap.external_disks
    if kids:
        kid = kids[0]
        if snap.current:
            raise KvmValidationError(
                f"Snapshot {snap.name} is current and has a child ({kid.name}), after a revert:"
                f" delete {kid.name} first",
                snapshot=snap.name,
            )
        for d in ext:
            kd = kid.disk(d.name)
            if kd is None or kd.base != d.file:
                raise KvmValidationError(
                    f"Snapshot {snap.name}: disk {d.name} of its child {kid.name} is not based on"
                    f" its overlay {d.file} (the guest was reverted to {snap.name} since):"
                    f" delete {kid.name} first",
                    snapshot=snap.name,
                )
            if d.file not in chains.get(d.name, []):
                raise KvmValidationError(
                    f"Snapshot {snap.name}: its overlay {d.file} is not in the active image"
                    f" chain of disk {d.name} (the guest was reverted elsewhere): delete the"
                    f" newer snapshots of that branch first",
                    snapshot=snap.name,
                )
        return ExternalDeletePlan("libvirt", detail="block commit into the base (libvirt)")

    tops = {d.name: (chains.get(d.name) or [None])[0] for d in ext}
    if all(tops[d.name] == d.file for d in ext):
        return ExternalDeletePlan("libvirt", detail="active block commit into the base (libvirt)")
    if any(tops[d.name] == d.file for d in ext):
        raise KvmValidationError(
            f"Snapshot {snap.name}: some of its overlays are in use and some are not; the"
            " guest's disks were changed outside this module",
            snapshot=snap.name,
        )
    # A snapshot the guest was reverted away from: its overlays hold discarded writes.
    _require_local(local, f"Deleting snapshot {snap.name}, which the guest is no longer at,")
    in_use = {path for chain in chains.values() for path in chain}
    referenced = set()
    for other in snaps.values():
        if other.name == snap.name:
            continue
        for d in other.external_disks:
            referenced.update(p for p in (d.file, d.base) if p)
    parent = snaps.get(snap.parent) if snap.parent else None
    remove = []
    for d in ext:
        if d.file and d.file not in in_use and d.file not in referenced:
            remove.append(d.file)
        pd = parent.disk(d.name) if parent else None
        orphan_base = (
            pd is not None
            and pd.snapshot == "external"
            and d.base
            and d.base != pd.file
            and d.base not in referenced
            and d.base not in in_use
        )
        if orphan_base:
            remove.append(d.base)
    return ExternalDeletePlan(
        "discard", remove, "overlay held only writes discarded by a revert; removed unmerged"
    )


def apply_external_delete(dom, snap: SnapshotModel, plan: ExternalDeletePlan) -> None:
    try:
        obj = dom.snapshotLookupByName(snap.name, 0)
        if plan.method == "libvirt":
            obj.delete(0)
            return
        obj.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, f"delete snapshot {snap.name}") from exc
    left = []
    for path in plan.remove_files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            left.append(f"{path} ({exc.strerror})")
    if left:
        raise KvmError(
            f"Deleted snapshot {snap.name}, but could not remove {', '.join(left)}; these"
            " files held only writes discarded by a revert and nothing uses them"
        )


# ---------------------------------------------------------------------------------------
# Revert


@dataclass
class RevertDisk:
    target: str
    base: str
    base_fmt: str
    overlay: str
    replace: bool  # the overlay path is the snapshot's current one (rewritten in place)


@dataclass
class ExternalRevertPlan:
    disks: list[RevertDisk]

    @property
    def redefine(self) -> bool:
        return any(not d.replace for d in self.disks)

    def facts(self) -> list[dict[str, str]]:
        return [
            {"disk": d.target, "base": d.base, "overlay": d.overlay, "new_file": not d.replace}
            for d in self.disks
        ]


def plan_external_revert(
    dom, snaps: dict[str, SnapshotModel], snap: SnapshotModel, *, local: bool
) -> ExternalRevertPlan:
    _require_local(local, f"Reverting to external snapshot {snap.name}")
    _qemu_img()
    if snap.kind != "external" or snap.has_memory:
        raise KvmValidationError(
            f"Snapshot {snap.name} is {snap.kind} with memory={snap.has_memory}: only disk-only"
            " external snapshots can be reverted by this module's external path"
        )
    current = {d.target: d for d in parse_disks(domain_xml(dom, inactive=True))}
    referenced = {
        p for other in snaps.values() for d in other.external_disks for p in (d.file, d.base) if p
    }
    disks = []
    for d in snap.external_disks:
        if d.name not in current:
            raise KvmValidationError(
                f"Snapshot {snap.name} has disk {d.name}, which the guest no longer has"
            )
        if not d.base or not os.path.exists(d.base):
            raise KvmValidationError(
                f"Snapshot {snap.name}: the image holding disk {d.name} at the snapshot"
                f" ({d.base}) is missing"
            )
        if not d.file:
            raise KvmValidationError(f"Snapshot {snap.name}: disk {d.name} has no overlay file")
        based_on_overlay = any(
            (kd := snaps[c].disk(d.name)) is not None and kd.base == d.file
            for c in snap.children
            if c in snaps
        )
        if not based_on_overlay:
            disks.append(RevertDisk(d.name, d.base, d.base_fmt or "raw", d.file, True))
            continue
        stem = d.file[: -len(".qcow2")] if d.file.endswith(".qcow2") else d.file
        n = 1
        while os.path.exists(f"{stem}.r{n}.qcow2") or f"{stem}.r{n}.qcow2" in referenced:
            n += 1
        disks.append(RevertDisk(d.name, d.base, d.base_fmt or "raw", f"{stem}.r{n}.qcow2", False))
    return ExternalRevertPlan(disks)


OverlayMaker = Callable[[str, str, str], None]


def make_overlay(path: str, base: str, base_fmt: str) -> None:
    """A new, empty qcow2 file at ``path`` on ``base`` (``qemu-img create``)."""
    proc = subprocess.run(
        [_qemu_img(), "create", "-q", "-f", "qcow2", "-F", base_fmt, "-b", base, path],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise KvmError(
            f"qemu-img could not create overlay {path} on {base}:"
            f" {proc.stderr.strip() or f'exit status {proc.returncode}'}"
        )


def _beside(path: str, tag: str) -> str:
    """A fresh hidden name in ``path``'s directory (same file system: renames are atomic)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{tag}-{secrets.token_hex(4)}")


def _unlink_own(path: str) -> str | None:
    """Remove a file this run made; a message when it could not be removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"could not remove {path}, made by this run: {exc.strerror}"
    return None


@dataclass
class _Staged:
    disk: RevertDisk
    made: str  # the new overlay as made: a hidden name beside an overlay it replaces
    backup: str | None = None  # the replaced overlay, still linked here until the end
    placed: bool = False  # ``made`` moved to ``disk.overlay``


class _Revert:
    """One external revert as a transaction; see :func:`apply_external_revert`."""

    def __init__(self, dom, snap: SnapshotModel, plan: ExternalRevertPlan) -> None:
        self.dom = dom
        self.snap = snap
        self.plan = plan
        self.staged: list[_Staged] = []
        self.old_definition: str | None = None  # set once the definition was switched

    # -- 1. new overlays, the guest untouched
    def stage(self, make: OverlayMaker) -> None:
        paths = [_beside(d.overlay, "new") if d.replace else d.overlay for d in self.plan.disks]
        for path in paths:
            if os.path.lexists(path):
                raise KvmError(f"Overlay file {path} exists already; it is left alone")
        for d, path in zip(self.plan.disks, paths):
            try:
                make(path, d.base, d.base_fmt)
            except KvmError as exc:
                if os.path.lexists(path):  # partly written by the failed create: ours
                    self.staged.append(_Staged(d, path))
                raise KvmError(
                    f"could not make the new overlay of disk {d.target} ({d.overlay}): {exc.msg}",
                    disk=d.target,
                ) from exc
            self.staged.append(_Staged(d, path))

    # -- 2. the switch, once the guest is stopped
    def place_files(self) -> None:
        for st in self.staged:
            if not st.disk.replace:
                continue
            try:
                st.backup = _swap_in(st.made, st.disk.overlay)
            except OSError as exc:
                raise KvmError(
                    f"Could not move the new overlay {st.made} to {st.disk.overlay}:"
                    f" {exc.strerror}",
                    disk=st.disk.target,
                ) from exc
            st.placed = True

    def switch_definition(self) -> None:
        name = self.dom.name()
        # written back whole by defineXML: a read without secrets would drop the console
        # password (never returned: only defined, or redefined on undo)
        old = domain_xml(self.dom, inactive=True, secure=True)
        root = _xml.parse(old, "domain XML")
        by_target = {d.target: d for d in self.plan.disks}
        for disk in root.findall("devices/disk"):
            rd = by_target.get(_xml.attr(disk, "target", "dev") or "")
            if rd is None:
                continue
            disk.set("type", "file")
            for stale in disk.findall("source") + disk.findall("backingStore"):
                _xml.remove(stale)
            driver = _xml.ensure(disk, "driver")
            driver.set("name", "qemu")
            driver.set("type", "qcow2")
            driver.addnext(_xml.etree.Element("source", file=rd.overlay))
        try:
            self.dom.connect().defineXML(_xml.to_string(root))
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"point guest {name} at the reverted disks") from exc
        self.old_definition = old

    def make_current(self) -> None:
        by_target = {d.target: d for d in self.plan.disks}
        try:
            obj = self.dom.snapshotLookupByName(self.snap.name, 0)
            snap_root = _xml.parse(
                obj.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE), "snapshot XML"
            )
            for el in snap_root.findall("disks/disk"):
                rd = by_target.get(el.get("name", ""))
                if rd is not None and not rd.replace:
                    src = el.find("source")
                    if src is None:
                        src = _xml.sub(el, "source")
                    src.set("file", rd.overlay)
            self.dom.snapshotCreateXML(
                _xml.to_string(snap_root),
                libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
                | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT,
            )
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"make {self.snap.name} the current snapshot") from exc

    # -- 3. done: the replaced overlays go
    def commit(self) -> list[str]:
        problems = []
        for st in self.staged:
            if st.backup is None:
                continue
            try:
                os.unlink(st.backup)
            except OSError as exc:
                problems.append(
                    f"Reverted guest {self.dom.name()} to {self.snap.name}, but could not remove"
                    f" {st.backup} (the replaced overlay of disk {st.disk.target}, which held"
                    f" only the discarded writes): {exc.strerror}"
                )
        return problems

    # -- failure: back to where the run started
    def undo(self) -> list[str]:
        """Undo what was done, newest first; what could not be undone, in words."""
        problems = []
        defined_new = False
        if self.old_definition is not None:
            try:
                self.dom.connect().defineXML(self.old_definition)
            except libvirt.libvirtError as exc:
                defined_new = True
                problems.append(
                    f"could not restore the definition of guest {self.dom.name()}:"
                    f" {exc.get_error_message()}"
                )
        for st in reversed(self.staged):
            if st.placed and st.backup is not None:
                try:
                    os.rename(st.backup, st.disk.overlay)  # drops the new one, ours
                except OSError as exc:
                    problems.append(
                        f"could not put overlay {st.disk.overlay} back: {exc.strerror}; the"
                        f" guest's data of disk {st.disk.target} is in {st.backup}"
                    )
                continue
            path = st.disk.overlay if st.placed else st.made
            if defined_new and not st.disk.replace:
                problems.append(f"kept {path}: the guest's definition uses it")
                continue
            problem = _unlink_own(path)
            if problem:
                problems.append(problem)
        return problems


def _swap_in(new: str, final: str) -> str | None:
    """Move ``new`` to ``final``. The file it replaces stays reachable under the returned name
    (a hard link, so ``final`` is never missing) until the caller removes or restores it."""
    if not os.path.lexists(final):
        os.rename(new, final)
        return None
    backup = _beside(final, "old")
    try:
        os.link(final, backup)
        linked = True
    except OSError:  # no hard links on this file system: a moment without ``final``
        os.rename(final, backup)
        linked = False
    try:
        os.rename(new, final)
    except OSError:
        if linked:
            os.unlink(backup)
        else:
            os.rename(backup, final)
        raise
    return backup


def apply_external_revert(
    dom,
    snap: SnapshotModel,
    plan: ExternalRevertPlan,
    power: str,
    *,
    make: OverlayMaker = make_overlay,
) -> list[str]:
    """Carry out ``plan``; ``power`` is the state to leave the guest in. Returns warnings.

    Nothing is removed before its replacement is in place:

    1. every new overlay is made while the guest still runs on its old ones - beside the
       overlay it replaces under a hidden name, or at its own new name; if one fails, the
       files made are removed and nothing else has changed;
    2. the guest is stopped, each new overlay is renamed over the one it replaces (which
       stays linked under a hidden name), the definition points at the new overlays and the
       snapshot becomes current; if a step fails, every step is undone (old overlays and
       definition back, files made removed) and a guest that ran is started again;
    3. the replaced overlays are removed, and the guest is started as ``power`` asks.
    """
    name = dom.name()
    was = domain_state(dom)
    txn = _Revert(dom, snap, plan)
    try:
        txn.stage(make)
    except Exception as exc:
        problems = txn.undo()
        raise _failed(exc, snap, name, problems, "the guest was not touched") from exc
    try:
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"stop guest {name} to revert it") from exc
        txn.place_files()
        txn.switch_definition()
        txn.make_current()
    except Exception as exc:
        problems = txn.undo()
        state = _restart(dom, was) if not problems else ""
        raise _failed(exc, snap, name, problems, state) from exc
    warnings = txn.commit()

    if power in ("running", "paused"):
        flags = libvirt.VIR_DOMAIN_START_PAUSED if power == "paused" else 0
        try:
            dom.createWithFlags(flags)
        except libvirt.libvirtError as exc:
            raise from_libvirt(
                exc, f"start guest {name} after the revert (the revert itself is complete)"
            ) from exc
    return warnings


def _restart(dom, was: str) -> str:
    """Start ``dom`` again after an undone revert when it ran before; its state, in words."""
    if was not in ("running", "paused"):
        return "it is shut off and uses its previous disks, unchanged"
    try:
        if not dom.isActive():
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if was == "paused" else 0)
    except libvirt.libvirtError as exc:
        return (
            "it uses its previous disks, unchanged, but is shut off: starting it again failed"
            f" ({exc.get_error_message()})"
        )
    return f"it was started again ({was}) on its previous disks, unchanged"


def _failed(
    exc: Exception, snap: SnapshotModel, name: str, problems: list[str], state: str
) -> KvmError:
    reason = exc.msg if isinstance(exc, KvmError) else f"{type(exc).__name__}: {exc}"
    details = {**(exc.details if isinstance(exc, KvmError) else {}), "snapshot": snap.name}
    if problems:
        return KvmError(
            f"Revert of guest {name} to snapshot {snap.name} failed ({reason}) and could not"
            f" be undone completely: {'; '.join(problems)}",
            **details,
        )
    return KvmError(
        f"Revert of guest {name} to snapshot {snap.name} failed and was undone; {state}."
        f" Cause: {reason}",
        **details,
    )
