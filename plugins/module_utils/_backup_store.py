# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The backup directory: its layout, manifests, chains, verification and retention.

Layout under the backup directory ``dest``::

    dest/<guest>/<id>/manifest.json    written last: a backup without it is not a backup
    dest/<guest>/<id>/domain.xml       the guest's definition when it was backed up
    dest/<guest>/<id>/<disk>.qcow2     one image per disk (vda.qcow2...)
    dest/<guest>/.<id>.partial/        a backup being written (or one that was interrupted)

``<id>`` is ``<UTC time>-full`` or ``<UTC time>-inc`` (``20261201T112233Z-inc``); a second
backup in the same second gets ``-2``, ``-3``... after the time (``20261201T112233Z-2-inc``),
and backups are ordered by time, then that number (``id_key``), not by their text. An
incremental image holds only the clusters written since its parent; its
qcow2 header names the parent's image of the same disk as its backing file, relative
(``../<parent id>/vda.qcow2``), so that a chain can be read by ``qemu-img`` anywhere the
directory is copied to. The manifest holds each image's size and SHA-256; a backup
*verifies* when its files and its parents' files all match their manifests.

A backup is written in a hidden ``.partial`` directory, its manifest written there
atomically last, and the directory then renamed to ``<id>`` (a rename in one directory is
atomic): a backup directory without a manifest, or a ``.partial`` one, is never taken for
a complete backup. Nothing here talks to libvirt.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ._errors import KvmError, KvmValidationError

MANIFEST = "manifest.json"
DOMAIN_XML = "domain.xml"
FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".partial"
ID_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?-(full|inc)$")
_CHUNK = 4 * 1024 * 1024


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def id_key(backup_id: str) -> tuple[str, int, str]:
    """The order of backup ids: time, then the number of a later backup in the same second
    (``...Z-inc`` is 1, ``...Z-2-inc`` 2): ``-2-inc`` sorts before ``-inc`` as text."""
    match = ID_RE.match(backup_id)
    if match is None:
        return (backup_id, 0, "")
    return (backup_id[:16], int(match.group(1)[1:]) if match.group(1) else 1, match.group(2))


def new_id(guest_dir: str, mode: str, when: datetime.datetime) -> str:
    """A fresh backup id for ``mode`` (full | incremental), unique in ``guest_dir`` and
    ordered (``id_key``) after every backup or ``.partial`` directory of the same second,
    whichever its kind."""
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    kind = "full" if mode == "full" else "inc"
    names = os.listdir(guest_dir) if os.path.isdir(guest_dir) else []
    same_second = []
    for name in names:
        partial = name.startswith(".") and name.endswith(PARTIAL_SUFFIX)
        backup_id = name[1 : -len(PARTIAL_SUFFIX)] if partial else name
        if ID_RE.match(backup_id) and backup_id.startswith(stamp):
            same_second.append(id_key(backup_id)[1])
    n = max(same_second) + 1 if same_second else 1
    return f"{stamp}-{kind}" if n == 1 else f"{stamp}-{n}-{kind}"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write ``path`` through a temporary file in the same directory, fsync, rename."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# manifests


@dataclass
class DiskEntry:
    target: str  # vda
    file: str  # vda.qcow2 (in the backup's directory)
    size: int  # bytes of the file
    sha256: str
    virtual_size: int
    source: str | None = None  # the guest's image when it was backed up
    source_format: str | None = None
    backing: str | None = None  # ../<parent id>/vda.qcow2 for an incremental

    def facts(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Backup:
    id: str
    guest: str
    mode: str  # full | incremental
    path: str  # its directory
    parent: str | None
    checkpoint: str | None
    started: str
    finished: str
    disks: list[DiskEntry]
    quiesced: bool = False
    quiesce_detail: str = ""
    method: str = ""
    compressed: bool = False
    label: str | None = None
    uuid: str | None = None
    domain_xml_sha256: str | None = None

    @property
    def finished_time(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.finished)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "id": self.id,
            "guest": self.guest,
            "uuid": self.uuid,
            "mode": self.mode,
            "parent": self.parent,
            "checkpoint": self.checkpoint,
            "started": self.started,
            "finished": self.finished,
            "quiesced": self.quiesced,
            "quiesce_detail": self.quiesce_detail,
            "method": self.method,
            "compressed": self.compressed,
            "label": self.label,
            "domain_xml": DOMAIN_XML,
            "domain_xml_sha256": self.domain_xml_sha256,
            "disks": [d.facts() for d in self.disks],
        }

    @classmethod
    def from_manifest(cls, data: dict[str, Any], path: str) -> Backup:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        return cls(
            id=data["id"],
            guest=data["guest"],
            mode=data["mode"],
            path=path,
            parent=data.get("parent"),
            checkpoint=data.get("checkpoint"),
            started=data["started"],
            finished=data["finished"],
            disks=[DiskEntry(**d) for d in data["disks"]],
            quiesced=bool(data.get("quiesced")),
            quiesce_detail=data.get("quiesce_detail", ""),
            method=data.get("method", ""),
            compressed=bool(data.get("compressed")),
            label=data.get("label"),
            uuid=data.get("uuid"),
            domain_xml_sha256=data.get("domain_xml_sha256"),
        )

    def file(self, entry: DiskEntry) -> str:
        return os.path.join(self.path, entry.file)

    def facts(self) -> dict[str, Any]:
        out = self.manifest()
        out.pop("format")
        out["path"] = self.path
        out["size"] = sum(d.size for d in self.disks)
        return out


# ---------------------------------------------------------------------------------------
# a guest's backups


@dataclass
class Problem:
    backup: str
    detail: str


@dataclass
class GuestBackups:
    """The backups of one guest in ``dest/<guest>``, oldest first."""

    guest: str
    dir: str
    backups: list[Backup] = field(default_factory=list)
    unreadable: list[Problem] = field(default_factory=list)  # dirs with a bad manifest
    partial: list[str] = field(default_factory=list)  # .partial dirs, and dirs without manifest

    @classmethod
    def load(cls, dest: str, guest: str) -> GuestBackups:
        folder = os.path.join(dest, guest)
        found = cls(guest, folder)
        if not os.path.isdir(folder):
            return found
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if not os.path.isdir(path):
                continue
            if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
                found.partial.append(path)
                continue
            if not ID_RE.match(name):
                continue
            manifest = os.path.join(path, MANIFEST)
            if not os.path.exists(manifest):
                found.partial.append(path)
                continue
            try:
                with open(manifest, encoding="utf-8") as handle:
                    backup = Backup.from_manifest(json.load(handle), path)
                if backup.id != name:
                    raise ValueError(f"manifest names backup {backup.id}")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                found.unreadable.append(Problem(name, f"unreadable manifest: {exc}"))
                continue
            found.backups.append(backup)
        found.backups.sort(key=lambda b: id_key(b.id))
        return found

    def by_id(self, backup_id: str) -> Backup | None:
        return next((b for b in self.backups if b.id == backup_id), None)

    @property
    def latest(self) -> Backup | None:
        return self.backups[-1] if self.backups else None

    def chain(self, backup: Backup) -> list[Backup]:
        """``backup`` and its parents down to the full backup, full first.

        Raises ``KvmValidationError`` when a parent is missing (the chain is broken)."""
        chain = [backup]
        seen = {backup.id}
        while chain[0].parent is not None:
            parent = self.by_id(chain[0].parent)
            if parent is None or parent.id in seen:
                raise KvmValidationError(
                    f"Backup {backup.id} of {self.guest}: its parent {chain[0].parent} is"
                    " missing or unreadable, so the chain is broken"
                )
            seen.add(parent.id)
            chain.insert(0, parent)
        if chain[0].mode != "full":
            raise KvmValidationError(f"Backup chain of {backup.id} does not start with a full one")
        return chain

    def chains(self) -> list[list[Backup]]:
        """Every full backup with the incrementals built on it (by parent), oldest first.

        An incremental whose parent is missing forms a chain of its own (broken)."""
        children: dict[str | None, list[Backup]] = {}
        for backup in self.backups:
            parent = backup.parent if backup.parent and self.by_id(backup.parent) else None
            if backup.mode == "full" or parent is None:
                children.setdefault(None, []).append(backup)
            else:
                children.setdefault(parent, []).append(backup)
        out = []
        for root in children.get(None, []):
            members, todo = [], [root]
            while todo:
                item = todo.pop(0)
                members.append(item)
                todo.extend(children.get(item.id, []))
            out.append(sorted(members, key=lambda b: id_key(b.id)))
        return sorted(out, key=lambda c: id_key(c[0].id))


# ---------------------------------------------------------------------------------------
# verification


def check_backup(backup: Backup, *, checksums: bool) -> list[str]:
    """What is wrong with one backup's own files: missing, wrong size, wrong SHA-256
    (only with ``checksums``; size checks are cheap, checksums read every byte)."""
    problems = []
    xml = os.path.join(backup.path, DOMAIN_XML)
    if not os.path.isfile(xml):
        problems.append(f"{DOMAIN_XML} is missing")
    elif checksums and backup.domain_xml_sha256 and sha256_file(xml) != backup.domain_xml_sha256:
        problems.append(f"{DOMAIN_XML} does not match its checksum")
    for entry in backup.disks:
        path = backup.file(entry)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            problems.append(f"{entry.file} is missing")
            continue
        if size != entry.size:
            problems.append(f"{entry.file} is {size} bytes, the manifest says {entry.size}")
        elif checksums and sha256_file(path) != entry.sha256:
            problems.append(f"{entry.file} does not match its SHA-256 checksum")
    return problems


def verify_chain(store: GuestBackups, backup: Backup, *, checksums: bool = True) -> list[Problem]:
    """Every problem of ``backup``'s chain (empty: it verifies)."""
    try:
        chain = store.chain(backup)
    except KvmValidationError as exc:
        return [Problem(backup.id, exc.msg)]
    problems = []
    targets = {d.target for d in backup.disks}
    for member in chain:
        problems += [Problem(member.id, p) for p in check_backup(member, checksums=checksums)]
        if {d.target for d in member.disks} != targets:
            problems.append(Problem(member.id, "has other disks than the rest of its chain"))
    return problems


# ---------------------------------------------------------------------------------------
# retention


def parse_age(value: str) -> datetime.timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` -> a timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", value or "")
    if match is None:
        raise KvmValidationError(
            f"max_age {value!r} is not an age such as 7d, 12h, 90m or 2w (minutes, hours,"
            " days, weeks)"
        )
    unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
    return datetime.timedelta(**{unit: int(match.group(1))})


def retention_plan(
    store: GuestBackups,
    *,
    keep: int | None,
    max_age: datetime.timedelta | None,
    now: datetime.datetime,
    in_use: str | None = None,
) -> tuple[list[list[Backup]], list[list[Backup]]]:
    """(kept chains, deleted chains): whole chains only, never one backup of a chain.

    A chain is kept when it is among the newest ``keep`` chains or its newest backup is
    younger than ``max_age``; the newest chain, and the chain holding ``in_use`` (the backup
    the guest's next incremental builds on), are always kept.
    """
    chains = store.chains()
    kept, deleted = [], []
    for index, chain in enumerate(chains):
        newest_first = len(chains) - 1 - index  # 0 for the newest chain
        keep_it = newest_first == 0 or any(b.id == in_use for b in chain)
        if keep is not None and newest_first < keep:
            keep_it = True
        if max_age is not None and now - chain[-1].finished_time < max_age:
            keep_it = True
        if keep is None and max_age is None:
            keep_it = True
        (kept if keep_it else deleted).append(chain)
    return kept, deleted


def remove_tree(path: str) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise KvmError(f"Could not remove {path}: {exc}") from exc
