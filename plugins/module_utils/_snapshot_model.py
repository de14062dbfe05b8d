# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Read side of guest snapshots: typed models of a guest's disks and of its snapshots.

Used by the ``snapshot`` and ``snapshot_info`` modules. Nothing here changes anything.

Vocabulary for external (overlay) snapshots, per disk ``d`` of snapshot ``S``:

``base(S, d)``
    the image the disk used when ``S`` was taken (recorded in the domain definition that
    libvirt keeps inside the snapshot). It holds the state of ``d`` at ``S`` and is never
    written while ``S`` exists.
``overlay(S, d)``
    the qcow2 file created on top of ``base(S, d)`` (the snapshot's ``<disks>`` source); it
    takes the writes made after ``S``.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _xml
from ._errors import KvmError, KvmValidationError, from_libvirt, is_error
from ._libvirt import libvirt
from ._libvirt import lookup_domain as find_domain

# ---------------------------------------------------------------------------------------
# Guest disks


@dataclass
class GuestDisk:
    """One ``<disk>`` of a guest definition."""

    target: str
    device: str = "disk"
    type: str = "file"
    fmt: str | None = None
    source: str | None = None
    readonly: bool = False
    backing: list[str] = field(default_factory=list)  # chain below source (live XML only)

    @property
    def snapshotable(self) -> bool:
        """A writable disk with an image (not a CD-ROM, floppy or read-only disk)."""
        return self.device in ("disk", "lun") and not self.readonly and self.source is not None

    @property
    def chain(self) -> list[str]:
        return ([self.source] if self.source else []) + self.backing


def _disk_source(disk) -> str | None:
    src = disk.find("source")
    if src is None:
        return None
    return src.get("file") or src.get("dev") or src.get("name") or src.get("volume")


def parse_disks(definition: str | Any) -> list[GuestDisk]:
    """The disks of a ``<domain>`` document or element, with backing chains when present."""
    root = (
        _xml.parse(definition, "domain XML") if isinstance(definition, (str, bytes)) else definition
    )
    disks = []
    for disk in root.findall("devices/disk"):
        target = _xml.attr(disk, "target", "dev")
        if not target:
            continue
        backing = []
        store = disk.find("backingStore")
        while store is not None and store.find("source") is not None:
            path = _disk_source(store)
            if path:
                backing.append(path)
            store = store.find("backingStore")
        disks.append(
            GuestDisk(
                target=target,
                device=disk.get("device", "disk"),
                type=disk.get("type", "file"),
                fmt=_xml.attr(disk, "driver", "type"),
                source=_disk_source(disk),
                readonly=disk.find("readonly") is not None,
                backing=backing,
            )
        )
    return disks


# ---------------------------------------------------------------------------------------
# Snapshots


@dataclass
class SnapshotDisk:
    name: str
    snapshot: str  # internal | external | no
    file: str | None = None  # external: overlay(S, d); internal: the image holding it
    base: str | None = None  # external: base(S, d)
    base_fmt: str | None = None


@dataclass
class SnapshotModel:
    name: str
    description: str | None
    state: str
    creation_time: int
    parent: str | None
    current: bool
    memory: str  # internal | external | no
    disks: list[SnapshotDisk]
    children: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        kinds = {d.snapshot for d in self.disks if d.snapshot != "no"}
        if self.memory == "external":
            kinds.add("external")
        if "external" in kinds:
            return "mixed" if "internal" in kinds else "external"
        return "internal"

    @property
    def has_memory(self) -> bool:
        return self.memory in ("internal", "external")

    def disk(self, name: str) -> SnapshotDisk | None:
        return next((d for d in self.disks if d.name == name), None)

    @property
    def external_disks(self) -> list[SnapshotDisk]:
        return [d for d in self.disks if d.snapshot == "external"]

    def facts(self) -> dict[str, Any]:
        created = datetime.datetime.fromtimestamp(self.creation_time, tz=datetime.timezone.utc)
        return {
            "name": self.name,
            "description": self.description,
            "state": self.state,
            "creation_time": self.creation_time,
            "creation_time_iso": created.isoformat(),
            "parent": self.parent,
            "children": sorted(self.children),
            "current": self.current,
            "kind": self.kind,
            "memory": self.has_memory,
            "disks": [asdict(d) for d in self.disks],
        }


def parse_snapshot(xml_text: str, *, current: bool = False) -> SnapshotModel:
    root = _xml.parse(xml_text, "snapshot XML")
    domain = root.find("domain")
    dom_disks = {d.target: d for d in parse_disks(domain)} if domain is not None else {}
    disks = []
    for el in root.findall("disks/disk"):
        name = el.get("name")
        kind = el.get("snapshot") or "internal"
        dd = dom_disks.get(name)
        file = _disk_source(el)
        base = base_fmt = None
        if kind == "external" and dd is not None:
            base, base_fmt = dd.source, dd.fmt
        elif kind == "internal" and dd is not None:
            file = dd.source
        disks.append(SnapshotDisk(name, kind, file, base, base_fmt))
    memory = _xml.attr(root, "memory", "snapshot")
    state = _xml.text(root, "state", "unknown")
    if memory is None:  # old snapshots: memory is implied by the state
        memory = "internal" if state in ("running", "paused") else "no"
    return SnapshotModel(
        name=_xml.text(root, "name", ""),
        description=_xml.text(root, "description"),
        state=state,
        creation_time=int(_xml.text(root, "creationTime", "0")),
        parent=_xml.text(root, "parent/name"),
        current=current,
        memory=memory,
        disks=disks,
    )


def list_snapshots(dom) -> dict[str, SnapshotModel]:
    """Every snapshot of ``dom`` by name, with ``children`` and ``current`` filled in."""
    try:
        objs = dom.listAllSnapshots(0)
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, f"list the snapshots of guest {dom.name()}") from exc
    snaps: dict[str, SnapshotModel] = {}
    for obj in objs:
        try:
            model = parse_snapshot(obj.getXMLDesc(0), current=bool(obj.isCurrent(0)))
        except libvirt.libvirtError as exc:
            if is_error(exc, libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT):
                continue  # deleted meanwhile
            raise from_libvirt(exc, f"read snapshot {obj.getName()}") from exc
        snaps[model.name] = model
    for snap in snaps.values():
        if snap.parent in snaps:
            snaps[snap.parent].children.append(snap.name)
    return snaps


def ordered(snaps: dict[str, SnapshotModel]) -> list[SnapshotModel]:
    """Oldest first: by creation time; within one second (libvirt's resolution) ancestors
    before descendants, then by name."""

    def depth(snap: SnapshotModel) -> int:
        n, seen = 0, set()
        while snap.parent in snaps and snap.parent not in seen:
            seen.add(snap.parent)
            snap = snaps[snap.parent]
            n += 1
        return n

    return sorted(snaps.values(), key=lambda s: (s.creation_time, depth(s), s.name))


def tree(snaps: dict[str, SnapshotModel]) -> list[dict[str, Any]]:
    """Nested view: roots oldest first, each with its ``children`` as nested nodes."""

    def node(snap: SnapshotModel) -> dict[str, Any]:
        kids = [snaps[c] for c in snap.children if c in snaps]
        kids.sort(key=lambda s: (s.creation_time, s.name))
        return {"name": snap.name, "current": snap.current, "children": [node(k) for k in kids]}

    return [node(s) for s in ordered(snaps) if s.parent not in snaps]


# ---------------------------------------------------------------------------------------
# Guests


def lookup_domain(conn, name: str):
    dom = find_domain(conn, name)
    if dom is None:
        raise KvmValidationError(f"Guest {name!r} does not exist", domain=name)
    return dom


def has_guest_agent(domain_root) -> bool:
    return any(
        c.get("name") == "org.qemu.guest_agent.0"
        for c in domain_root.findall("devices/channel/target")
    )


def backing_chain_offline(path: str) -> list[str]:
    """The backing chain of an image not in use by a running guest (``qemu-img info``).

    Raises when it cannot be read: a chain cut short would make images below look unused.
    """
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise KvmValidationError(
            f"qemu-img is needed on the KVM host to read the backing chain of {path}"
        )
    proc = subprocess.run(
        [qemu_img, "info", "-U", "--backing-chain", "--output=json", path],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise KvmError(f"Cannot read the backing chain of {path}: {proc.stderr.strip()}")
    data = json.loads(proc.stdout)
    if isinstance(data, dict):
        data = [data]
    return [entry["filename"] for entry in data]
