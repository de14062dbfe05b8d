# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Restore a guest from its backups (module ``virtops.kvm.backup_restore``) and read a
backup directory (module ``virtops.kvm.backup_info``).

A restore first verifies the whole chain (every file's SHA-256 against its manifest) and
refuses a broken one. Each disk is then rebuilt with ``qemu-img convert`` from the chain's
top image, whose backing files are the images below it (``../<parent>/<disk>.qcow2``), into
a hidden file beside its final name; only when every disk is converted are the files
renamed into place and the guest defined (a new guest) or left with its new disks (the
original, shut off, with ``force``). The restore is recorded in the guest's metadata, so a
second run with the same backup changes nothing while the restored files are unchanged.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

from . import _xml
from ._backup import list_checkpoints, qemu_img
from ._backup_store import DOMAIN_XML, Backup, GuestBackups, verify_chain
from ._domain_xml import domain_xml
from ._errors import KvmError, KvmValidationError, from_libvirt, is_error
from ._libvirt import domain_state, is_local_uri, libvirt
from ._libvirt import lookup_domain as find_domain
from ._snapshot_model import parse_disks
from ._storage_users import StorageUsers

NS_URI = "https://virtops.dev/xmlns/kvm/backup-restore/1.0"
NS_PREFIX = "virtopsrestore"


@dataclass
class DiskRestore:
    target: str
    source: str  # the chain's top image in the backup
    path: str  # where it goes
    fmt: str  # qcow2 | raw
    replaces: bool  # an existing file is replaced

    def facts(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _file_state(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def read_record(dom) -> dict[str, Any] | None:
    try:
        text = dom.metadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS_URI, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        )
    except libvirt.libvirtError as exc:
        if is_error(exc, libvirt.VIR_ERR_NO_DOMAIN_METADATA):
            return None
        raise from_libvirt(exc, f"read the restore record of {dom.name()}") from exc
    root = _xml.parse(text, "restore record")
    return {
        "backup": root.get("backup"),
        "disks": {d.get("path"): [int(d.get("size")), int(d.get("mtime"))] for d in root},
    }


def _record_xml(backup_id: str, paths: list[str]) -> str:
    root = _xml.etree.Element("restore", backup=backup_id)
    for path in paths:
        state = _file_state(path) or [0, 0]
        _xml.etree.SubElement(root, "disk", path=path, size=str(state[0]), mtime=str(state[1]))
    return _xml.etree.tostring(root, encoding="unicode")


def _unchanged(record: dict[str, Any] | None, backup_id: str, paths: list[str]) -> bool:
    if not record or record["backup"] != backup_id or set(record["disks"]) != set(paths):
        return False
    return all(_file_state(p) == record["disks"][p] for p in paths)


class RestoreManager:
    def __init__(self, module) -> None:
        self.module = module
        self.p = module.params
        self.conn = module.conn
        self.result: dict[str, Any] = {"changed": False}

    def run(self) -> dict[str, Any]:
        if not is_local_uri(self.p["uri"]):
            raise KvmValidationError(
                "backup_restore writes image files on the KVM host: run it there with a local"
                " libvirt URI (qemu:///system)"
            )
        source, target = self.p["name"], self.p["target"] or self.p["name"]
        store = GuestBackups.load(self.p["dest"], source)
        backup = store.by_id(self.p["backup"]) if self.p["backup"] else store.latest
        if backup is None:
            have = ", ".join(b.id for b in store.backups) or "none"
            wanted = self.p["backup"] or "any complete backup"
            raise KvmValidationError(
                f"No backup {wanted} of guest {source} in {store.dir} (complete ones: {have})"
            )
        problems = verify_chain(store, backup, checksums=self.p["verify"])
        self.result["backup"] = backup.id
        self.result["chain"] = [b.id for b in _chain_or_self(store, backup)]
        if problems:
            raise KvmValidationError(
                f"Backup {backup.id} of {source} does not verify, nothing was restored: "
                + "; ".join(f"{p.backup}: {p.detail}" for p in problems),
                problems=[p.__dict__ for p in problems],
            )
        dom = find_domain(self.conn, target)
        saved = _xml.parse(_read(os.path.join(backup.path, DOMAIN_XML)), "saved domain XML")
        if dom is not None:
            plan, definition = self._plan_existing(dom, backup)
        else:
            plan, definition = self._plan_new(target, backup, saved, same=target == source)
        self.result["target"] = target
        self.result["disks"] = [d.facts() for d in plan]
        if self.result.get("unchanged"):
            self.result.pop("unchanged")
            self._start(dom)
            return self.result
        self.result["changed"] = True
        if self.module.check_mode:
            return self.result
        self._convert(plan)
        paths = [d.path for d in plan]
        try:
            if definition is not None:
                try:
                    dom = self.conn.defineXML(_xml.to_string(definition))
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, f"define the restored guest {target}") from exc
            else:
                self._forget_checkpoints(dom)
        except BaseException:
            if definition is not None:
                for path in paths:
                    _remove(path)
            raise
        try:
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                _record_xml(backup.id, paths),
                NS_PREFIX,
                NS_URI,
                libvirt.VIR_DOMAIN_AFFECT_CONFIG,
            )
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"record the restore in {target}") from exc
        self._start(dom)
        return self.result

    # ------------------------------------------------------------------ plans
    def _plan_existing(self, dom, backup: Backup):
        name = dom.name()
        disks = {d.target: d for d in parse_disks(domain_xml(dom, inactive=True))}
        plan = []
        for entry in backup.disks:
            disk = disks.get(entry.target)
            if disk is None or disk.source is None or disk.type != "file":
                raise KvmValidationError(
                    f"Guest {name} has no file disk {entry.target} to restore into"
                )
            plan.append(
                DiskRestore(
                    entry.target, _top(backup, entry.target), disk.source, disk.fmt or "raw", True
                )
            )
        if _unchanged(read_record(dom), backup.id, [d.path for d in plan]):
            self.result["unchanged"] = True
            self.result["msg"] = f"{name} was restored from {backup.id} and not changed since"
            return plan, None
        state = domain_state(dom)
        if state != "shutoff":
            raise KvmValidationError(
                f"Guest {name} is {state}: its disks are in use. Stop it before restoring into"
                " it, or restore into a new guest (target)"
            )
        self._refuse_used(plan, exclude=name)
        if not self.p["force"]:
            raise KvmValidationError(
                f"Restoring into guest {name} replaces its disks"
                f" ({', '.join(d.path for d in plan)}): set force=true to do it"
            )
        return plan, None

    def _plan_new(self, target: str, backup: Backup, saved, *, same: bool):
        saved_name = saved.findtext("name")
        root = saved
        root.find("name").text = target
        if not same:
            _xml.remove(root.find("uuid"))
            for mac in root.findall("devices/interface/mac"):
                _xml.remove(mac)  # libvirt makes new ones: two guests, one MAC is a conflict
        entries = {e.target: e for e in backup.disks}
        plan = []
        dropped = []
        for disk_el in root.findall("devices/disk"):
            tgt = _xml.attr(disk_el, "target", "dev")
            if tgt not in entries:
                if (
                    disk_el.get("device", "disk") in ("disk", "lun")
                    and disk_el.find("readonly") is None
                    and not same
                ):
                    dropped.append(tgt)
                    _xml.remove(disk_el)
                continue
            entry = entries[tgt]
            fmt = "raw" if entry.source_format == "raw" else "qcow2"
            if same and entry.source:
                path = entry.source
            else:
                folder = self.p["disk_dir"] or os.path.dirname(entry.source or backup.path)
                path = os.path.join(folder, f"{target}-{tgt}.{'img' if fmt == 'raw' else fmt}")
            exists = os.path.exists(path)
            if exists and not (same and self.p["force"]):
                raise KvmValidationError(
                    f"{path} exists already: the restore of {tgt} does not overwrite it"
                    + (" (force=true replaces it)" if same else " (choose disk_dir)")
                )
            disk_el.set("type", "file")
            for child in disk_el.findall("source") + disk_el.findall("backingStore"):
                _xml.remove(child)
            driver = _xml.ensure(disk_el, "driver")
            driver.set("name", "qemu")
            driver.set("type", fmt)
            source_el = _xml.etree.Element("source", file=path)
            disk_el.insert(list(disk_el).index(driver) + 1, source_el)
            plan.append(DiskRestore(tgt, _top(backup, tgt), path, fmt, exists))
        meta = root.find("metadata")
        if meta is not None:
            for old in meta.findall(f"{{{NS_URI}}}restore"):
                _xml.remove(old)
        if dropped:
            self.module.warn(
                f"Disks {', '.join(dropped)} of {saved_name} are not in backup {backup.id};"
                f" the restored guest {target} has no such disks"
            )
        self.result["dropped_disks"] = dropped
        self._refuse_used(plan, exclude=None)
        return plan, root

    def _refuse_used(self, plan: list[DiskRestore], exclude: str | None) -> None:
        paths = {os.path.normpath(d.path) for d in plan}
        users = []
        for disk in StorageUsers(self.conn).guest_disks():
            if disk.guest == exclude:
                continue
            keys = {k[1] for k in disk.source.keys if k[0] == "path"}
            if keys & paths:
                users.append(f"{disk.guest} ({disk.target})")
        if users:
            raise KvmValidationError(
                f"The restore would overwrite disks in use by guests: {', '.join(users)}"
            )

    # ------------------------------------------------------------------ apply
    def _convert(self, plan: list[DiskRestore]) -> None:
        staged: list[tuple[str, str]] = []
        try:
            for disk in plan:
                folder, base = os.path.split(disk.path)
                if not os.path.isdir(folder):
                    raise KvmValidationError(f"Directory {folder} for {disk.target} does not exist")
                tmp = os.path.join(folder, f".{base}.restore-{secrets.token_hex(4)}")
                staged.append((tmp, disk.path))
                qemu_img("convert", "-q", "-O", disk.fmt, disk.source, tmp)
                os.chmod(tmp, 0o600)
        except BaseException:
            for tmp, _final in staged:
                _remove(tmp)
            raise
        for tmp, final in staged:
            os.rename(tmp, final)

    def _forget_checkpoints(self, dom) -> None:
        """The images the checkpoints' bitmaps were in are replaced: drop their metadata
        (the next backup of the guest is a full one)."""
        for checkpoint in list_checkpoints(dom):
            try:
                dom.checkpointLookupByName(checkpoint.name, 0).delete(
                    libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
                )
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"drop checkpoint {checkpoint.name}") from exc

    def _start(self, dom) -> None:
        if not self.p["start"] or dom is None:
            return
        if domain_state(dom) == "running":
            return
        self.result["changed"] = True
        if self.module.check_mode:
            return
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"start the restored guest {dom.name()}") from exc
        self.result["started"] = True


def _chain_or_self(store: GuestBackups, backup: Backup) -> list[Backup]:
    try:
        return store.chain(backup)
    except KvmValidationError:
        return [backup]


def _top(backup: Backup, target: str) -> str:
    entry = next(e for e in backup.disks if e.target == target)
    return backup.file(entry)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise KvmError(f"Cannot read {path}: {exc}") from exc


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------
# backup_info


def backup_info(conn, dest: str, guest: str | None, *, verify: bool) -> dict[str, Any]:
    """The backups in ``dest`` (of ``guest``, or of every guest there), their chains, and
    whether each chain verifies; with a connection, whether the guest's next ``auto`` backup
    can be incremental (the last backup's checkpoint still exists)."""
    if not os.path.isdir(dest):
        raise KvmValidationError(f"Backup directory {dest} does not exist")
    names = (
        [guest]
        if guest
        else sorted(n for n in os.listdir(dest) if os.path.isdir(os.path.join(dest, n)))
    )
    guests = []
    for name in names:
        store = GuestBackups.load(dest, name)
        chains = []
        for chain in store.chains():
            problems = verify_chain(store, chain[-1], checksums=verify)
            chains.append(
                {
                    "full": chain[0].id,
                    "backups": [b.id for b in chain],
                    "size": sum(d.size for b in chain for d in b.disks),
                    "verified": verify and not problems,
                    "intact": not problems,
                    "problems": [f"{p.backup}: {p.detail}" for p in problems],
                }
            )
        checkpoints = None
        dom = find_domain(conn, name) if conn is not None else None
        if dom is not None:
            checkpoints = [c.name for c in list_checkpoints(dom)]
        latest = store.latest
        guests.append(
            {
                "guest": name,
                "dir": store.dir,
                "backups": [b.facts() for b in store.backups],
                "chains": chains,
                "latest": latest.id if latest else None,
                "partial": store.partial,
                "unreadable": [f"{p.backup}: {p.detail}" for p in store.unreadable],
                "checkpoints": checkpoints,
                "next_incremental_possible": bool(
                    latest
                    and checkpoints is not None
                    and latest.checkpoint in checkpoints
                    and chains
                    and chains[-1]["backups"][-1] == latest.id
                    and chains[-1]["intact"]
                ),
            }
        )
    return {"guests": guests}
