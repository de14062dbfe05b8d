# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Is a guest still at a snapshot? The judgement behind an idempotent revert.

libvirt says which snapshot is *current* (the one the guest was last taken at or reverted
to) but not whether the guest has changed since. Right after it creates or reverts to a
snapshot, the ``snapshot`` module records a *point* in the guest's metadata (namespace
:data:`NS_URI`), in two copies:

- in the live definition (only while the guest runs), marked ``live="yes"``, with the
  guest's vCPU time and each snapshot disk's write-request counter (``virDomainBlockStats``
  ``wr_req``). A restarted guest gets its live definition from the persistent one, whose
  copy is marked ``live="no"``, so the ``live="yes"`` copy exists only while the very QEMU
  process that was recorded still runs.
- in the persistent definition, with the size and modification time (ns) of each snapshot
  disk's top image file (read on the host, so only with a local URI).

A later ``state: reverted`` is judged *unchanged* (no change) only when all of these hold:

1. the snapshot is libvirt's current snapshot and the recorded point names it (name and
   creation time, so a re-created snapshot of the same name does not match);
2. the guest is in the power state the revert would leave it in;
3. running/paused guest: it is the recorded QEMU process, no disk of the snapshot got a
   write request since, and for a memory snapshot the time its vCPU threads ran
   (``virDomainGetVcpus``) did not move (the guest was paused all along: a guest that ran
   has a different memory state);
   shut-off guest: it was shut off when recorded, uses the same image files, and no image
   file changed size or modification time.

Anything else, including a missing or foreign record, means "revert". Writes the guest has
cached but not yet sent to its disks are invisible to both methods; they would be lost by a
revert too, which is what a snapshot revert means.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from . import _xml
from ._errors import KvmValidationError, from_libvirt, is_error
from ._libvirt import domain_state, libvirt
from ._snapshot_model import SnapshotModel, parse_disks

NS_URI = "https://github.com/virtops/kvm/xmlns/snapshot-state/1"
NS_KEY = "vksnap"


@dataclass
class DiskPoint:
    target: str
    file: str | None = None
    wr_reqs: int | None = None
    size: int | None = None
    mtime_ns: int | None = None


@dataclass
class Point:
    snapshot: str
    created: int
    live: bool
    power: str
    cpu_time: int | None = None
    token: str = ""
    disks: list[DiskPoint] = field(default_factory=list)

    def to_xml(self) -> str:
        root = _xml.etree.Element("state")
        root.set("snapshot", self.snapshot)
        root.set("created", str(self.created))
        root.set("live", "yes" if self.live else "no")
        root.set("power", self.power)
        root.set("token", self.token)
        if self.cpu_time is not None:
            root.set("cpu_time", str(self.cpu_time))
        for d in self.disks:
            attrs = {k: v for k, v in vars(d).items() if v is not None and k != "target"}
            _xml.sub(root, "disk", target=d.target, **attrs)
        return _xml.to_string(root, pretty=False)

    @classmethod
    def from_xml(cls, text: str) -> Point:
        root = _xml.parse(text, "snapshot state metadata")

        def num(el, name):
            value = el.get(name)
            return int(value) if value not in (None, "") else None

        return cls(
            snapshot=root.get("snapshot", ""),
            created=num(root, "created") or 0,
            live=root.get("live") == "yes",
            power=root.get("power", ""),
            cpu_time=num(root, "cpu_time"),
            token=root.get("token", ""),
            disks=[
                DiskPoint(
                    target=d.get("target", ""),
                    file=d.get("file"),
                    wr_reqs=num(d, "wr_reqs"),
                    size=num(d, "size"),
                    mtime_ns=num(d, "mtime_ns"),
                )
                for d in root.findall("disk")
            ],
        )


def expected_power(snap: SnapshotModel, running_state: str) -> str:
    """The power state a revert leaves the guest in."""
    if running_state in ("running", "paused"):
        return running_state
    if snap.has_memory:
        return "paused" if snap.state == "paused" else "running"
    return "shutoff"


def _file_stat(path: str | None) -> tuple[int | None, int | None]:
    if not path:
        return None, None
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


def _targets(snap: SnapshotModel) -> list[str]:
    return [d.name for d in snap.disks if d.snapshot != "no"]


def vcpu_time(dom) -> int | None:
    """Nanoseconds the guest's vCPU threads have run: constant while it is paused.

    Not ``virDomainGetInfo``'s cpuTime, which is the whole QEMU process and keeps growing
    while the guest is paused (QEMU's main loop and I/O threads run on).
    """
    try:
        infos = dom.vcpus()[0]
    except libvirt.libvirtError:
        return None  # unknown: the judgement then says "changed"
    return sum(int(info[2]) for info in infos)


def measure(dom, snap: SnapshotModel, *, live: bool, local: bool) -> Point:
    """The guest's point now, for the disks of ``snap``."""
    power = domain_state(dom)
    active = power not in ("shutoff", "crashed")
    xml = dom.XMLDesc(0 if active else libvirt.VIR_DOMAIN_XML_INACTIVE)
    sources = {d.target: d.source for d in parse_disks(xml)}
    point = Point(snap.name, snap.creation_time, live, power)
    if active and live:
        point.cpu_time = vcpu_time(dom)
    for target in _targets(snap):
        dp = DiskPoint(target, file=sources.get(target))
        if active and live:
            try:
                dp.wr_reqs = int(dom.blockStats(target)[2])
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"read the I/O counters of disk {target}") from exc
        if local:
            dp.size, dp.mtime_ns = _file_stat(dp.file)
        point.disks.append(dp)
    return point


def read_point(dom, *, live: bool) -> Point | None:
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if live else libvirt.VIR_DOMAIN_AFFECT_CONFIG
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS_URI, flags)
    except libvirt.libvirtError as exc:
        if is_error(exc, libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_OPERATION_INVALID):
            return None
        raise from_libvirt(exc, f"read the snapshot metadata of guest {dom.name()}") from exc
    try:
        return Point.from_xml(text)
    except KvmValidationError:
        return None


def record(dom, snap: SnapshotModel, *, local: bool) -> None:
    """Record the guest's point at ``snap`` (live and persistent copies, see module doc)."""
    token = secrets.token_hex(8)
    active = bool(dom.isActive())
    targets = []
    if active:
        targets.append((True, libvirt.VIR_DOMAIN_AFFECT_LIVE))
    if dom.isPersistent():
        targets.append((False, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    for live, flags in targets:
        point = measure(dom, snap, live=live, local=local)
        point.token = token
        try:
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, point.to_xml(), NS_KEY, NS_URI, flags
            )
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"record the snapshot state of guest {dom.name()}") from exc


@dataclass
class Judgement:
    unchanged: bool
    method: str
    reason: str
    checks: list[dict[str, Any]] = field(default_factory=list)

    def facts(self, *, reverted: bool) -> dict[str, Any]:
        return {
            "unchanged": self.unchanged,
            "reverted": reverted,
            "method": self.method,
            "reason": self.reason,
            "checks": self.checks,
        }


class _Checks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})
        return bool(ok)


def judge(dom, snap: SnapshotModel, *, running_state: str, local: bool) -> Judgement:
    """Decide whether ``dom`` is at ``snap`` and unchanged since (see the module doc)."""
    checks = _Checks()

    def verdict(ok: bool, method: str, reason: str) -> Judgement:
        return Judgement(ok, method, reason, checks.items)

    if not checks.add("snapshot is current", snap.current):
        return verdict(False, "current-snapshot", f"{snap.name} is not the current snapshot")
    want = expected_power(snap, running_state)
    power = domain_state(dom)
    if not checks.add("power state", power == want, f"guest is {power}, revert leaves {want}"):
        return verdict(False, "power-state", f"the guest is {power}, the revert leaves it {want}")

    if want in ("running", "paused"):
        rec = read_point(dom, live=True)
        same = rec is not None and rec.live and _names(rec, snap)
        if not checks.add(
            "recorded point in this QEMU process",
            same,
            "live record of this snapshot" if same else "no live record of this snapshot",
        ):
            return verdict(
                False, "write-counters", "no record of this snapshot in the running guest"
            )
        now = measure(dom, snap, live=True, local=False)
        ok = _compare_disks(checks, rec, now, "wr_reqs", "write requests")
        if snap.has_memory:
            ok = (
                checks.add(
                    "vCPU time unchanged (paused since)",
                    rec.cpu_time is not None and rec.cpu_time == now.cpu_time,
                    f"{rec.cpu_time} -> {now.cpu_time} ns",
                )
                and ok
            )
        method = "write-counters+vcpu-time" if snap.has_memory else "write-counters"
        reason = "no writes since the recorded point" if ok else "the guest changed since"
        if ok and snap.has_memory:
            reason += " and the guest has not run"
        return verdict(ok, method, reason)

    if not local:
        checks.add("image files readable on this host", False, "remote URI")
        return verdict(False, "image-files", "image files cannot be checked over a remote URI")
    rec = read_point(dom, live=False)
    same = rec is not None and _names(rec, snap) and rec.power == "shutoff"
    if not checks.add(
        "recorded point while shut off",
        same,
        "persistent record of this snapshot" if same else "no record made while shut off",
    ):
        return verdict(False, "image-files", "no record of this snapshot made while shut off")
    now = measure(dom, snap, live=False, local=True)
    ok = _compare_disks(checks, rec, now, "file", "image file")
    ok = _compare_disks(checks, rec, now, "size", "image size") and ok
    ok = _compare_disks(checks, rec, now, "mtime_ns", "image modification time") and ok
    reason = "image files unchanged since the recorded point" if ok else "image files changed"
    return verdict(ok, "image-files", reason)


def _names(rec: Point, snap: SnapshotModel) -> bool:
    return rec.snapshot == snap.name and rec.created == snap.creation_time


def _compare_disks(checks: _Checks, rec: Point, now: Point, attr: str, label: str) -> bool:
    before = {d.target: getattr(d, attr) for d in rec.disks}
    ok = True
    for disk in now.disks:
        old, new = before.get(disk.target), getattr(disk, attr)
        ok = (
            checks.add(
                f"{disk.target}: {label} unchanged",
                old is not None and old == new,
                f"{old} -> {new}",
            )
            and ok
        )
    return ok
