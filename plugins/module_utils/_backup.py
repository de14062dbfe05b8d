# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Back up one guest (module ``virtops.kvm.backup``).

Shape: read the guest, its checkpoints and its backups -> clean what an interrupted run
left (a ``.partial`` directory, a checkpoint of ours without a complete backup) -> plan
(full or incremental, which disks, why) -> in check mode stop there -> take the backup
in a ``.partial`` directory -> checksums, manifest, rename -> drop older checkpoints of
ours -> retention.

A running guest is backed up by libvirt's backup job in push mode (QEMU copies each disk
as it was when the job started into a qcow2 file, the guest keeps running). With qcow2
disks the job also creates a checkpoint (a dirty bitmap in each image) named
``virtops-backup-<id>``; the next incremental backup copies only what was written since.
A shut-off guest is copied with ``qemu-img convert`` (full only). A failed or aborted job
leaves no checkpoint: libvirt keeps the checkpoint of an aborted backup job, so it is
deleted here, and so is any of ours whose backup never got its manifest (the module was
killed, the host rebooted).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from . import _xml
from ._backup_store import (
    DOMAIN_XML,
    MANIFEST,
    PARTIAL_SUFFIX,
    Backup,
    DiskEntry,
    GuestBackups,
    check_backup,
    fsync_dir,
    new_id,
    now_utc,
    parse_age,
    remove_tree,
    retention_plan,
    sha256_file,
    write_json_atomic,
)
from ._diff import DifferenceTracker
from ._domain_xml import domain_xml
from ._errors import KvmError, KvmTimeoutError, KvmValidationError, from_libvirt, is_error
from ._libvirt import domain_state, is_local_uri, libvirt
from ._snapshot_model import GuestDisk, has_guest_agent, lookup_domain, parse_disks

CHECKPOINT_PREFIX = "virtops-backup-"
_DESC_PREFIX = "virtops.kvm backup "


def qemu_img(*args: str) -> str:
    """Run ``qemu-img``; its stdout, or a ``KvmError`` with its message."""
    path = shutil.which("qemu-img")
    if path is None:
        raise KvmValidationError("qemu-img (Debian package qemu-utils) is needed on the KVM host")
    proc = subprocess.run([path, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise KvmError(
            f"qemu-img {args[0]} failed: {proc.stderr.strip() or f'exit status {proc.returncode}'}",
            command=["qemu-img", *args],
        )
    return proc.stdout


def virtual_size(path: str) -> int:
    import json  # noqa: PLC0415 - only here

    return int(json.loads(qemu_img("info", "--output=json", "-U", path))["virtual-size"])


# ---------------------------------------------------------------------------------------
# checkpoints


@dataclass
class Checkpoint:
    name: str
    description: str  # "virtops.kvm backup <dir of the backup>"

    @property
    def backup_dir(self) -> str | None:
        if self.description.startswith(_DESC_PREFIX):
            return self.description[len(_DESC_PREFIX) :]
        return None


def list_checkpoints(dom) -> list[Checkpoint]:
    """The guest's checkpoints made by this module (any destination)."""
    try:
        found = dom.listAllCheckpoints(0)
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, f"list the checkpoints of {dom.name()}") from exc
    out = []
    for obj in found:
        name = obj.getName()
        if not name.startswith(CHECKPOINT_PREFIX):
            continue
        root = _xml.parse(obj.getXMLDesc(0), "checkpoint XML")
        out.append(Checkpoint(name, root.findtext("description") or ""))
    return out


def delete_checkpoint(dom, name: str) -> None:
    try:
        dom.checkpointLookupByName(name, 0).delete(0)
    except libvirt.libvirtError as exc:
        if is_error(exc, libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT):
            return
        raise from_libvirt(exc, f"delete checkpoint {name} of {dom.name()}") from exc


def job_active(dom) -> bool:
    """Whether the guest has a job. libvirt answers "backup job data missing" (an internal
    error) while a backup job starts and while it ends (its data already dropped, the job
    not yet): the job is still there then."""
    try:
        return dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
    except libvirt.libvirtError as exc:
        if is_error(exc, libvirt.VIR_ERR_OPERATION_INVALID):
            return False  # not running: no job
        if is_error(exc, libvirt.VIR_ERR_INTERNAL_ERROR) and "job data missing" in str(exc):
            return True
        raise from_libvirt(exc, f"read the job of {dom.name()}") from exc


# ---------------------------------------------------------------------------------------
# plan


@dataclass
class Plan:
    id: str
    mode: str  # full | incremental
    method: str  # libvirt-push | qemu-img
    reason: str
    disks: list[GuestDisk]
    parent: Backup | None = None
    checkpoint: str | None = None  # the new checkpoint
    incremental_from: str | None = None  # the parent's checkpoint
    stale: list[str] = field(default_factory=list)  # partial dirs to remove
    stray: list[str] = field(default_factory=list)  # checkpoints of ours without a backup

    def facts(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mode": self.mode,
            "method": self.method,
            "reason": self.reason,
            "disks": [d.target for d in self.disks],
            "parent": self.parent.id if self.parent else None,
            "checkpoint": self.checkpoint,
            "incremental_from": self.incremental_from,
        }


class BackupManager:
    def __init__(self, module) -> None:
        self.module = module
        self.p = module.params
        self.result: dict[str, Any] = {"changed": False}

    def run(self) -> dict[str, Any]:
        self._validate()
        dest = self.p["dest"]
        if not is_local_uri(self.p["uri"]):
            raise KvmValidationError(
                "backup writes files on the KVM host: run it there with a local libvirt URI"
                " (qemu:///system), e.g. with delegate_to"
            )
        if not os.path.isdir(dest):
            raise KvmValidationError(f"Backup directory {dest} does not exist")
        self.dom = lookup_domain(self.module.conn, self.p["name"])
        self.store = GuestBackups.load(dest, self.p["name"])
        self.guest_dir = self.store.dir
        self.before = [b.id for b in self.store.backups]
        self.added: list[str] = []
        if self.p["label"]:
            same = [b for b in self.store.backups if b.label == self.p["label"]]
            if same:
                self.result["backup"] = same[-1].facts()
                self.result["msg"] = f"Backup {same[-1].id} has label {self.p['label']} already"
                self._retention()
                return self._report()
        plan = self._plan()
        self.added = [plan.id]
        self.result["plan"] = plan.facts()
        self.result["changed"] = True
        self.result["cleaned"] = {"partial": plan.stale, "checkpoints": plan.stray}
        if self.module.check_mode:
            self._retention(pending=plan)
            return self._report()
        self._clean(plan)
        backup = self._take(plan)
        self.store = GuestBackups.load(dest, self.p["name"])
        self.result["backup"] = backup.facts()
        self._drop_old_checkpoints(backup)
        self._retention()
        return self._report()

    def _report(self) -> dict[str, Any]:
        if self.module.diff_mode:
            gone = {
                i for chain in self.result.get("retention", {}).get("deleted", []) for i in chain
            }
            diff = DifferenceTracker()
            after = [i for i in self.before + self.added if i not in gone]
            diff.add("backups", self.before, after)
            self.result["diff"] = diff.diff()
        return self.result

    # -------------------------------------------------------------------- input
    def _validate(self) -> None:
        if self.p["keep"] is not None and self.p["keep"] < 1:
            raise KvmValidationError("keep must be at least 1")
        self.max_age = parse_age(self.p["max_age"]) if self.p["max_age"] else None
        if self.p["timeout"] <= 0:
            raise KvmValidationError("timeout must be positive")
        label = self.p["label"]
        if label is not None and (not label or "\n" in label):
            raise KvmValidationError("label must be one line of text")

    # -------------------------------------------------------------------- plan
    def _select(self, disks: list[GuestDisk]) -> list[GuestDisk]:
        usable = [d for d in disks if d.snapshotable and d.type in ("file", "block")]
        wanted = self.p["disks"]
        if wanted:
            known = {d.target for d in usable}
            missing = [t for t in wanted if t not in known]
            if missing:
                raise KvmValidationError(
                    f"Guest {self.p['name']} has no writable file or block disk"
                    f" {', '.join(missing)} (it has: {', '.join(sorted(known)) or 'none'})"
                )
            usable = [d for d in usable if d.target in wanted]
        if not usable:
            raise KvmValidationError(f"Guest {self.p['name']} has no disk to back up")
        return usable

    def _plan(self) -> Plan:
        name = self.p["name"]
        if job_active(self.dom):
            raise KvmValidationError(
                f"Guest {name} has a job running (a backup or migration): try again when it ends"
            )
        running = domain_state(self.dom) in ("running", "paused")
        disks = self._select(parse_disks(domain_xml(self.dom, inactive=not running)))
        raw = [f"{d.target} ({d.fmt or 'unknown'})" for d in disks if d.fmt != "qcow2"]
        ours = [c for c in list_checkpoints(self.dom) if self._ours(c)]
        complete = {b.id for b in self.store.backups}
        stray = [c.name for c in ours if os.path.basename(c.backup_dir or "") not in complete]
        want = self.p["mode"]
        why_not = None  # why an incremental backup cannot be taken
        parent = self.store.latest
        if raw:
            why_not = f"not every disk is qcow2 ({', '.join(raw)}): raw disks get full backups only"
        elif not running:
            why_not = "the guest is not running (a shut-off guest is copied whole)"
        elif parent is None:
            why_not = "there is no earlier backup in the directory"
        elif parent.checkpoint is None or parent.checkpoint not in {c.name for c in ours}:
            why_not = f"the checkpoint of the last backup {parent.id} is gone"
        elif {d.target for d in parent.disks} != {d.target for d in disks}:
            why_not = f"the last backup {parent.id} has other disks"
        elif parent.uuid and parent.uuid != self.dom.UUIDString():
            why_not = f"the last backup {parent.id} is of another guest of that name"
        else:
            broken = self._quick_chain_problems(parent)
            if broken:
                why_not = f"the chain of the last backup {parent.id} is broken: {broken}"
        if want == "incremental" and why_not:
            raise KvmValidationError(f"No incremental backup of {name}: {why_not}")
        mode = "full" if why_not or want == "full" else "incremental"
        if mode == "full":
            reason = "full backup asked for" if want == "full" else f"full: {why_not}"
            parent = None
        else:
            reason = f"incremental since {parent.id}"
        backup_id = new_id(self.guest_dir, mode, now_utc())
        checkpoint = None
        if running and not raw:
            checkpoint = f"{CHECKPOINT_PREFIX}{backup_id}"
        if raw and running:
            self.module.warn(
                f"Guest {name}: raw disks ({', '.join(raw)}) cannot have checkpoints;"
                " every backup of them is a full one"
            )
        return Plan(
            id=backup_id,
            mode=mode,
            method="libvirt-push" if running else "qemu-img",
            reason=reason,
            disks=disks,
            parent=parent,
            checkpoint=checkpoint,
            incremental_from=parent.checkpoint if parent else None,
            stale=list(self.store.partial),
            stray=stray,
        )

    def _ours(self, checkpoint: Checkpoint) -> bool:
        """A checkpoint of a backup into this guest's directory of ``dest``."""
        folder = checkpoint.backup_dir
        return folder is not None and os.path.dirname(folder) == self.guest_dir

    def _quick_chain_problems(self, backup: Backup) -> str:
        try:
            chain = self.store.chain(backup)
        except KvmValidationError as exc:
            return exc.msg
        for member in chain:
            problems = check_backup(member, checksums=False)
            if problems:
                return f"{member.id}: {'; '.join(problems)}"
        return ""

    # -------------------------------------------------------------------- apply
    def _clean(self, plan: Plan) -> None:
        for name in plan.stray:
            delete_checkpoint(self.dom, name)
        for path in plan.stale:
            remove_tree(path)

    def _take(self, plan: Plan) -> Backup:
        os.makedirs(self.guest_dir, mode=0o755, exist_ok=True)
        work = os.path.join(self.guest_dir, f".{plan.id}{PARTIAL_SUFFIX}")
        final = os.path.join(self.guest_dir, plan.id)
        os.mkdir(work)
        os.chmod(work, 0o755)  # libvirt creates the target files; QEMU writes them
        started = now_utc()
        try:
            definition = domain_xml(self.dom, inactive=True)
            if plan.method == "libvirt-push":
                quiesced, detail = self._push(plan, work)
            else:
                quiesced, detail = False, "the guest is not running: its disks are at rest"
                for disk in plan.disks:
                    qemu_img(
                        "convert", "-q", "-O", "qcow2", *(["-c"] if self.p["compress"] else []),
                        disk.source, os.path.join(work, f"{disk.target}.qcow2"),
                    )  # fmt: skip
            entries = [self._finish_disk(plan, disk, work) for disk in plan.disks]
            xml_path = os.path.join(work, DOMAIN_XML)
            with open(xml_path, "w", encoding="utf-8") as handle:
                handle.write(definition)
            os.chmod(xml_path, 0o600)
            backup = Backup(
                id=plan.id,
                guest=self.p["name"],
                mode=plan.mode,
                path=final,
                parent=plan.parent.id if plan.parent else None,
                checkpoint=plan.checkpoint,
                started=started.isoformat(),
                finished=now_utc().isoformat(),
                disks=entries,
                quiesced=quiesced,
                quiesce_detail=detail,
                method=plan.method,
                compressed=bool(self.p["compress"]),
                label=self.p["label"],
                uuid=self.dom.UUIDString(),
                domain_xml_sha256=sha256_file(xml_path),
            )
            write_json_atomic(os.path.join(work, MANIFEST), backup.manifest())
            os.rename(work, final)
            fsync_dir(self.guest_dir)
        except BaseException:
            if plan.checkpoint:
                try:
                    delete_checkpoint(self.dom, plan.checkpoint)
                except KvmError as exc:
                    self.module.warn(f"{exc.msg}: the next backup deletes it")
            remove_tree(work)
            raise
        return backup

    def _push(self, plan: Plan, work: str) -> tuple[bool, str]:
        backup_xml = _xml.etree.Element("domainbackup", mode="push")
        if plan.incremental_from:
            _xml.sub(backup_xml, "incremental", plan.incremental_from)
        disks_el = _xml.sub(backup_xml, "disks")
        chosen = {d.target for d in plan.disks}
        for disk in parse_disks(domain_xml(self.dom)):
            if disk.target in chosen:
                el = _xml.sub(disks_el, "disk", name=disk.target, backup="yes", type="file")
                _xml.sub(el, "driver", type="qcow2")
                _xml.sub(el, "target", file=os.path.join(work, f"{disk.target}.qcow2"))
            elif disk.snapshotable:
                _xml.sub(disks_el, "disk", name=disk.target, backup="no")
        checkpoint_xml = None
        if plan.checkpoint:
            cp = _xml.etree.Element("domaincheckpoint")
            _xml.sub(cp, "name", plan.checkpoint)
            _xml.sub(cp, "description", f"{_DESC_PREFIX}{os.path.join(self.guest_dir, plan.id)}")
            cp_disks = _xml.sub(cp, "disks")
            for disk in parse_disks(domain_xml(self.dom)):
                if disk.target in chosen:
                    _xml.sub(cp_disks, "disk", name=disk.target, checkpoint="bitmap")
                elif disk.snapshotable:
                    _xml.sub(cp_disks, "disk", name=disk.target, checkpoint="no")
            checkpoint_xml = _xml.to_string(cp)
        quiesced, detail = self._freeze()
        try:
            self.dom.backupBegin(_xml.to_string(backup_xml), checkpoint_xml, 0)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"start the backup job of {self.p['name']}") from exc
        finally:
            if quiesced:
                self._thaw()
        self._wait_job()
        return quiesced, detail

    def _freeze(self) -> tuple[bool, str]:
        """Freeze the guest's file systems through its agent (the job's point in time is
        when it starts, so they are thawed right after)."""
        if self.p["quiesce"] == "never":
            return False, "not quiesced: quiesce=never"
        root = _xml.parse(domain_xml(self.dom), "domain XML")
        reason = None
        if not has_guest_agent(root):
            reason = "the guest has no guest agent channel"
        else:
            try:
                self.dom.fsFreeze(None, 0)
                return True, "file systems frozen through the guest agent"
            except libvirt.libvirtError as exc:
                reason = f"the guest agent did not freeze: {exc.get_error_message()}"
        if self.p["quiesce"] == "required":
            raise KvmValidationError(f"Cannot quiesce {self.p['name']}: {reason}")
        self.module.warn(f"Backup of {self.p['name']} not quiesced: {reason}")
        return False, f"not quiesced: {reason}"

    def _thaw(self) -> None:
        try:
            self.dom.fsThaw(None, 0)
        except libvirt.libvirtError as exc:
            self.module.warn(f"Thawing the file systems of {self.p['name']} failed: {exc}")

    def _wait_job(self) -> None:
        """Wait for the backup job; abort it at the timeout. Fails when it did not succeed."""
        deadline = time.monotonic() + self.p["timeout"]
        delay = 0.05
        while job_active(self.dom):
            if time.monotonic() > deadline:
                try:
                    self.dom.abortJob()
                except libvirt.libvirtError:
                    pass
                while job_active(self.dom):
                    time.sleep(0.1)
                raise KvmTimeoutError(
                    f"The backup job of {self.p['name']} did not end within"
                    f" {self.p['timeout']} s and was aborted",
                    timeout=self.p["timeout"],
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)  # a job's end is noticed within 0.25 s
        try:
            stats = self.dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError as exc:
            raise from_libvirt(
                exc, f"read the result of the backup job of {self.p['name']}"
            ) from exc
        if not stats.get("success", False):
            raise KvmError(
                f"The backup job of {self.p['name']} failed:"
                f" {stats.get('errmsg') or 'no reason given'} (nothing was kept)",
                job=stats,
            )
        self.result["job"] = {
            k: stats[k] for k in ("time_elapsed", "disk_total", "disk_processed") if k in stats
        }

    def _finish_disk(self, plan: Plan, disk: GuestDisk, work: str) -> DiskEntry:
        path = os.path.join(work, f"{disk.target}.qcow2")
        backing = None
        if plan.mode == "incremental":
            parent_entry = next(d for d in plan.parent.disks if d.target == disk.target)
            backing = f"../{plan.parent.id}/{parent_entry.file}"
            # libvirt names the guest's own image as backing file: point it at the parent
            qemu_img("rebase", "-u", "-F", "qcow2", "-b", backing, path)
        if self.p["compress"] and plan.method == "libvirt-push":
            packed = f"{path}.packed"
            args = ["convert", "-q", "-c", "-O", "qcow2"]
            if backing:  # only the clusters of this image, above the same backing
                args += ["-B", backing, "-F", "qcow2"]
            qemu_img(*args, path, packed)
            os.rename(packed, path)
        os.chmod(path, 0o600)
        return DiskEntry(
            target=disk.target,
            file=os.path.basename(path),
            size=os.stat(path).st_size,
            sha256=sha256_file(path),
            virtual_size=virtual_size(path),
            source=disk.source,
            source_format=disk.fmt,
            backing=backing,
        )

    # -------------------------------------------------------------------- after
    def _drop_old_checkpoints(self, backup: Backup) -> None:
        """Only the newest checkpoint of ours is needed (every later incremental builds on
        it); older ones only cost bitmaps in the images."""
        if backup.checkpoint is None:
            return
        for checkpoint in list_checkpoints(self.dom):
            if self._ours(checkpoint) and checkpoint.name != backup.checkpoint:
                delete_checkpoint(self.dom, checkpoint.name)

    def _as_backup(self, plan: Plan) -> Backup:
        now = now_utc().isoformat()
        return Backup(
            id=plan.id,
            guest=self.p["name"],
            mode=plan.mode,
            path=os.path.join(self.guest_dir, plan.id),
            parent=plan.parent.id if plan.parent else None,
            checkpoint=plan.checkpoint,
            started=now,
            finished=now,
            disks=[],
        )

    def _retention(self, pending: Plan | None = None) -> None:
        keep, max_age = self.p["keep"], self.max_age
        if keep is None and max_age is None:
            return
        store = self.store
        if pending is not None:  # check mode: count the backup the real run would take
            store = GuestBackups(store.guest, store.dir, [*store.backups, self._as_backup(pending)])
        kept, deleted = retention_plan(store, keep=keep, max_age=max_age, now=now_utc())
        self.result["retention"] = {
            "keep": keep,
            "max_age": self.p["max_age"],
            "kept": [[b.id for b in c] for c in kept],
            "deleted": [[b.id for b in c] for c in deleted],
        }
        if not deleted:
            return
        self.result["changed"] = True
        if self.module.check_mode:
            return
        for chain in deleted:
            for member in reversed(chain):
                remove_tree(member.path)
