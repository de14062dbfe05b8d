# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Reconcile one snapshot of one guest (module ``virtops.kvm.snapshot``) and read them all
(module ``virtops.kvm.snapshot_info``).

Shape: read the guest and its snapshots -> validate the request against them (bad input
fails here, before anything changes) -> plan -> apply unless in check mode -> report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from . import _xml
from ._check_mode import assumed_in_check_mode
from ._diff import DifferenceTracker
from ._domain_xml import domain_xml
from ._errors import KvmValidationError, from_libvirt
from ._libvirt import domain_state, is_local_uri, libvirt
from ._snapshot_external import (
    apply_external_delete,
    apply_external_revert,
    plan_external_delete,
    plan_external_revert,
)
from ._snapshot_model import (
    GuestDisk,
    SnapshotModel,
    has_guest_agent,
    list_snapshots,
    lookup_domain,
    ordered,
    parse_disks,
    tree,
)
from ._snapshot_state import expected_power, judge, record

_BAD_NAME_CHARS = set("/\\\n\r\t")


@dataclass
class CreatePlan:
    xml: str
    flags: int
    kind: str
    memory: bool
    disks: dict[str, str]  # target -> internal | external | no
    overlays: dict[str, str] = field(default_factory=dict)


class SnapshotManager:
    def __init__(self, module) -> None:
        self.module = module
        self.p = module.params
        self.conn = module.conn
        self.local = is_local_uri(self.p["uri"])
        self.diff = DifferenceTracker()
        self.result: dict[str, Any] = {"changed": False}

    # ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._validate_params()
        try:
            self.dom = lookup_domain(self.conn, self.p["domain"])
        except KvmValidationError:
            if not self.module.check_mode:
                raise
            return self._check_without_guest()
        self.snaps = list_snapshots(self.dom)
        state = self.p["state"]
        if state == "present":
            self._present()
        elif state == "absent":
            self._absent()
        else:
            self._reverted()
        if not self.module.check_mode and self.result["changed"]:
            self.snaps = list_snapshots(self.dom)
        snap = self.snaps.get(self.p["name"])
        if state != "absent" or self.module.check_mode:
            self.result["snapshot"] = snap.facts() if snap else None
        else:
            self.result["snapshot"] = None
        if self.module.diff_mode:
            self.result["diff"] = self.diff.diff()
        return self.result

    def _check_without_guest(self) -> dict[str, Any]:
        """Check mode, guest missing: an earlier task may define it, with no snapshots yet."""
        name, state = self.p["name"], self.p["state"]
        subject = f"Guest {self.p['domain']!r}"
        if state == "reverted":
            subject += f" (with snapshot {name!r})"
        self.module.warn(assumed_in_check_mode(subject))
        if state == "present":
            self.diff.add("snapshot", None, name)
            # memory and the disks follow the guest's state and definition, unknown here
            self.result["created"] = {
                "kind": self.p["kind"] or "internal",
                "memory": self.p["memory"],
                "disks": {},
            }
            if self.p["retain"] is not None:
                self.result["retention"] = {**self.p["retain"], "kept": [name], "deleted": []}
        elif state == "reverted":
            self.diff.add("revert", None, {"current": name})
        else:
            self.diff.add("snapshot", None, None)
        self.result["changed"] = state != "absent"
        self.result["snapshot"] = None
        if self.module.diff_mode:
            self.result["diff"] = self.diff.diff()
        return self.result

    def _validate_params(self) -> None:
        name = self.p["name"]
        if not name or _BAD_NAME_CHARS & set(name):
            raise KvmValidationError(f"Invalid snapshot name {name!r}")
        retain = self.p["retain"]
        if retain is not None:
            if self.p["state"] != "present":
                raise KvmValidationError("retain is only used with state=present")
            if retain["keep"] < 1:
                raise KvmValidationError("retain.keep must be at least 1")
            if not retain["prefix"] or not name.startswith(retain["prefix"]):
                raise KvmValidationError(
                    f"Snapshot name {name!r} must start with retain.prefix {retain['prefix']!r}"
                )

    # ---------------------------------------------------------------------------------
    # present
    def _present(self) -> None:
        name = self.p["name"]
        existing = self.snaps.get(name)
        if existing is None:
            plan = self._plan_create()
            if self.p["retain"] is not None:
                self._retention(validate_only=True)  # refuse before taking the new one
            self.diff.add("snapshot", None, name)
            if not self.module.check_mode:
                self._create(plan)
            self.result["changed"] = True
            self.result["created"] = {"kind": plan.kind, "memory": plan.memory, "disks": plan.disks}
            if plan.overlays:
                self.result["created"]["overlays"] = plan.overlays
        else:
            self._check_existing(existing)
            desc = self.p["description"]
            if desc is not None and self.diff.add("description", existing.description or "", desc):
                if not self.module.check_mode:
                    self._set_description(existing, desc)
                self.result["changed"] = True
        if self.p["retain"] is not None:
            self._retention()

    def _check_existing(self, snap: SnapshotModel) -> None:
        """Snapshots cannot be changed: warn when the request differs from what exists."""
        want_kind = self.p["kind"]
        if want_kind is not None and snap.kind != want_kind:
            self.module.warn(
                f"Snapshot {snap.name} exists as a {snap.kind} snapshot, not {want_kind};"
                " it is left as it is (delete it to take a new one)"
            )
        if self.p["memory"] is not None and self.p["memory"] != snap.has_memory:
            self.module.warn(
                f"Snapshot {snap.name} exists with memory={snap.has_memory}; it is left as it is"
            )

    def _guest_disks(self) -> list[GuestDisk]:
        active = bool(self.dom.isActive())
        return parse_disks(domain_xml(self.dom, inactive=not active))

    def _select_disks(self, disks: list[GuestDisk]) -> tuple[list[GuestDisk], list[GuestDisk]]:
        known = {d.target for d in disks}
        wanted = self.p["disks"]
        excluded = set(self.p["exclude_disks"] or [])
        for target in (wanted or []) + sorted(excluded):
            if target not in known:
                raise KvmValidationError(
                    f"Guest {self.p['domain']} has no disk {target!r}"
                    f" (it has: {', '.join(sorted(known))})"
                )
        chosen, skipped = [], []
        for disk in disks:
            if not disk.snapshotable:
                if wanted and disk.target in wanted:
                    raise KvmValidationError(
                        f"Disk {disk.target} is read-only, a {disk.device} or has no image:"
                        " it cannot be snapshotted"
                    )
                skipped.append(disk)
            elif (wanted is not None and disk.target not in wanted) or disk.target in excluded:
                skipped.append(disk)
            else:
                chosen.append(disk)
        if not chosen:
            raise KvmValidationError(f"No disk of guest {self.p['domain']} is selected")
        return chosen, skipped

    def _plan_create(self) -> CreatePlan:
        name, kind = self.p["name"], self.p["kind"] or "internal"
        power = domain_state(self.dom)
        active = power in ("running", "paused")
        root = _xml.parse(domain_xml(self.dom), "domain XML")
        disks = self._guest_disks()
        chosen, skipped = self._select_disks(disks)
        memory = self.p["memory"]
        if memory is None:
            memory = kind == "internal" and active

        other = {s.kind for s in self.snaps.values()} - {kind}
        if other:
            raise KvmValidationError(
                f"Guest {self.p['domain']} has {', '.join(sorted(other))} snapshots: this module"
                f" keeps a guest's snapshots of one kind, so a {kind} snapshot is not taken"
                " (libvirt cannot delete or revert a mix of them)"
            )
        if memory and not active:
            raise KvmValidationError(
                f"A memory snapshot needs a running guest; {self.p['domain']} is {power}"
            )
        if self.p["quiesce"]:
            if kind != "external":
                raise KvmValidationError("quiesce works with kind=external (disk-only) snapshots")
            if not active or not has_guest_agent(root):
                raise KvmValidationError(
                    "quiesce needs a running guest with a guest agent channel"
                    " (org.qemu.guest_agent.0)"
                )

        flags = 0
        overlays: dict[str, str] = {}
        if kind == "internal":
            if active and not memory:
                raise KvmValidationError(
                    f"An internal snapshot of a running guest includes its memory (QEMU savevm);"
                    f" {self.p['domain']} is {power}: use memory=true, kind=external, or stop"
                    " the guest first"
                )
            need_qcow2 = chosen
            if memory:  # savevm writes every writable disk: all of them must take it
                need_qcow2 = [d for d in disks if d.snapshotable]
                if skipped and any(d.snapshotable for d in skipped):
                    raise KvmValidationError(
                        "A memory snapshot includes every writable disk; disks cannot be"
                        " excluded (use kind=external for a subset)"
                    )
            raw = [
                f"{d.target} ({d.fmt or 'unknown format'})" for d in need_qcow2 if d.fmt != "qcow2"
            ]
            if raw:
                what = "A memory snapshot" if memory else "An internal snapshot"
                raise KvmValidationError(
                    f"{what} of guest {self.p['domain']} needs qcow2 disks; not qcow2: "
                    f"{', '.join(raw)}. Use kind=external (disk-only overlays) for raw disks",
                    disks=raw,
                )
        else:
            if memory:
                raise KvmValidationError(
                    "External snapshots taken by this module are disk-only: memory must be false"
                )
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            if self.p["quiesce"]:
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
            for disk in chosen:
                if disk.type not in ("file", "block"):
                    raise KvmValidationError(
                        f"Disk {disk.target} is of type {disk.type}: external snapshots need a"
                        " file or block device disk"
                    )
                folder = self.p["overlay_dir"] or os.path.dirname(disk.source)
                path = os.path.join(folder, f"{self.p['domain']}-{disk.target}.{name}.qcow2")
                if self.local:
                    if not os.path.isdir(folder):
                        raise KvmValidationError(f"Overlay directory {folder} does not exist")
                    if os.path.exists(path):
                        raise KvmValidationError(f"Overlay file {path} exists already")
                overlays[disk.target] = path

        snap = _xml.etree.Element("domainsnapshot")
        _xml.sub(snap, "name", name)
        if self.p["description"]:
            _xml.sub(snap, "description", self.p["description"])
        if kind == "internal":
            _xml.sub(snap, "memory", snapshot="internal" if memory else "no")
        else:
            _xml.sub(snap, "memory", snapshot="no")
        disks_el = _xml.sub(snap, "disks")
        plan_disks: dict[str, str] = {}
        for disk in disks:
            if disk in chosen:
                mode = kind
                el = _xml.sub(disks_el, "disk", name=disk.target, snapshot=mode)
                if kind == "external":
                    _xml.sub(el, "driver", type="qcow2")
                    _xml.sub(el, "source", file=overlays[disk.target])
            elif disk.snapshotable:
                mode = "no"
                _xml.sub(disks_el, "disk", name=disk.target, snapshot="no")
            else:
                continue
            plan_disks[disk.target] = mode
        return CreatePlan(_xml.to_string(snap), flags, kind, bool(memory), plan_disks, overlays)

    def _create(self, plan: CreatePlan) -> None:
        try:
            obj = self.dom.snapshotCreateXML(plan.xml, plan.flags)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"create snapshot {self.p['name']}") from exc
        self.snaps = list_snapshots(self.dom)
        record(self.dom, self.snaps[obj.getName()], local=self.local)

    def _set_description(self, snap: SnapshotModel, desc: str) -> None:
        try:
            obj = self.dom.snapshotLookupByName(snap.name, 0)
            root = _xml.parse(
                obj.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE), "snapshot XML"
            )
            _xml.ensure(root, "description").text = desc
            flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
            if snap.current:
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
            self.dom.snapshotCreateXML(_xml.to_string(root), flags)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"update the description of snapshot {snap.name}") from exc

    # ---------------------------------------------------------------------------------
    # retention
    def _retention(self, *, validate_only: bool = False) -> None:
        prefix, keep = self.p["retain"]["prefix"], self.p["retain"]["keep"]
        matching = [s for s in ordered(self.snaps) if s.name.startswith(prefix)]
        names = [s.name for s in matching]
        if self.p["name"] not in names:  # check mode: the new one is not there yet
            names.append(self.p["name"])
        doomed = names[: max(len(names) - keep, 0)]
        self.result["retention"] = {
            "prefix": prefix,
            "keep": keep,
            "kept": names[len(doomed) :],
            "deleted": doomed,
        }
        if not doomed:
            return
        # Validate every deletion before the first one (oldest first, the order used).
        for victim in doomed:
            if victim in self.snaps:
                self._plan_delete(self.snaps[victim])
        if validate_only:
            return
        self.diff.add("retention.deleted", [], doomed)
        self.result["changed"] = True
        if self.module.check_mode:
            return
        for victim in doomed:
            self.snaps = list_snapshots(self.dom)
            snap = self.snaps.get(victim)
            if snap is not None:
                self._delete(snap, self._plan_delete(snap))

    # ---------------------------------------------------------------------------------
    # absent
    def _plan_delete(self, snap: SnapshotModel):
        if snap.kind == "external":
            return plan_external_delete(self.dom, self.snaps, snap, local=self.local)
        if snap.kind == "mixed":
            raise KvmValidationError(
                f"Snapshot {snap.name} mixes internal and external disks: delete it with libvirt"
                " tools after merging its overlays by hand"
            )
        return None

    def _delete(self, snap: SnapshotModel, plan) -> None:
        if plan is not None:
            apply_external_delete(self.dom, snap, plan)
            return
        try:
            self.dom.snapshotLookupByName(snap.name, 0).delete(0)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"delete snapshot {snap.name}") from exc

    def _absent(self) -> None:
        snap = self.snaps.get(self.p["name"])
        if snap is None:
            self.diff.add("snapshot", None, None)
            return
        plan = self._plan_delete(snap)
        self.diff.add("snapshot", snap.name, None)
        self.result["changed"] = True
        self.result["deleted"] = {
            "kind": snap.kind,
            "method": plan.method if plan is not None else "libvirt",
            "detail": plan.detail if plan is not None else "internal snapshot deleted by libvirt",
        }
        if not self.module.check_mode:
            self._delete(snap, plan)

    # ---------------------------------------------------------------------------------
    # reverted
    def _reverted(self) -> None:
        name = self.p["name"]
        snap = self.snaps.get(name)
        if snap is None:
            raise KvmValidationError(
                f"Guest {self.p['domain']} has no snapshot {name!r}"
                f" (it has: {', '.join(s.name for s in ordered(self.snaps)) or 'none'})",
                snapshot=name,
            )
        running_state = self.p["running_state"]
        judgement = judge(self.dom, snap, running_state=running_state, local=self.local)
        before = {
            "current": next((s.name for s in self.snaps.values() if s.current), None),
            "power": domain_state(self.dom),
        }
        want_power = expected_power(snap, running_state)
        if judgement.unchanged:
            self.diff.add("revert", before, before)
            self.result["revert_judgement"] = judgement.facts(reverted=False)
            return
        plan = None
        if snap.kind == "external":
            plan = plan_external_revert(self.dom, self.snaps, snap, local=self.local)
            self.result["revert_method"] = "external: fresh overlay on the snapshot's base images"
            self.result["revert_overlays"] = plan.facts()
        elif snap.kind == "mixed":
            raise KvmValidationError(f"Snapshot {name} mixes internal and external disks")
        else:
            self.result["revert_method"] = "internal: libvirt revert"
        self.diff.add("revert", before, {"current": name, "power": want_power})
        self.result["changed"] = True
        self.result["revert_judgement"] = judgement.facts(reverted=True)
        if self.module.check_mode:
            return
        if plan is not None:
            for warning in apply_external_revert(self.dom, snap, plan, want_power):
                self.module.warn(warning)
        else:
            flags = 0
            if running_state == "running":
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
            elif running_state == "paused":
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
            try:
                self.dom.revertToSnapshot(self.dom.snapshotLookupByName(name, 0), flags)
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"revert guest {self.p['domain']} to {name}") from exc
        self.snaps = list_snapshots(self.dom)
        record(self.dom, self.snaps[name], local=self.local)


def snapshot_info(conn, domain: str, name: str | None = None) -> dict[str, Any]:
    """The guest's current snapshot and its snapshots (only ``name``, when given) as a list
    and, when ``name`` is not given, as a tree."""
    snaps = list_snapshots(lookup_domain(conn, domain))
    listed = ordered(snaps)
    if name is not None:
        listed = [s for s in listed if s.name == name]
    return {
        "current": next((s.name for s in snaps.values() if s.current), None),
        "snapshots": [s.facts() for s in listed],
        "tree": tree(snaps) if name is None else [],
    }
