#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: backup
short_description: Back up a libvirt guest, running or shut off, fully or incrementally
version_added: 0.1.0
description:
  - Takes one backup of one guest into O(dest)C(/<guest>/<id>/) - one qcow2 image per disk,
    the guest's definition (C(domain.xml)) and a C(manifest.json) with each file's size and
    SHA-256, the checkpoint, the time and the parent backup.
  - A B(running) guest is backed up by libvirt's backup job (push mode) while it runs; the
    images hold the disks as they were when the job started. With qcow2 disks the job also
    creates a checkpoint (dirty bitmaps in the images, named C(virtops-backup-<id>)) from
    which the next O(mode=incremental) backup copies only the clusters written since. An
    incremental image names its parent's image as its backing file (C(../<parent>/vda.qcow2)),
    so a chain can be read by C(qemu-img) or restored by M(virtops.kvm.backup_restore).
  - B(Raw disks) cannot hold checkpoints - a guest with a raw disk among the backed-up ones
    gets full backups only (with a warning). A B(shut-off) guest is copied with
    C(qemu-img convert), always as a full backup.
  - Consistency - before the job starts the guest's file systems are frozen through the QEMU
    guest agent when it answers, and thawed as soon as the job has started. Whether that
    happened is in C(quiesced) and C(quiesce_detail) of RV(backup) either way.
  - A backup is written in a hidden C(.<id>.partial) directory; its manifest is written last
    (atomically) and only then is the directory renamed to C(<id>), so a partial backup is
    never taken for a complete one. A failed or aborted job leaves no checkpoint and no
    files. What an interrupted run leaves (the module killed, the host rebooted) - a
    C(.partial) directory, a checkpoint of ours without a complete backup - is removed by
    the next run before it plans, and the next O(mode=auto) backup is then a full one.
  - After a backup with a checkpoint, the guest's older checkpoints of this directory are
    deleted (the next incremental builds on the newest).
  - Needs a local libvirt URI (the module writes files on the KVM host) and C(qemu-img).
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  check_mode:
    details: Plans the backup (RV(plan) says full or incremental and why) and what retention
      would delete; takes nothing, deletes nothing.
  diff_mode:
    details: The diff lists the guest's backups before and after.
  idempotent:
    support: partial
    details: Every run takes a new backup unless O(label) is set and a complete backup with
      that label exists.
options:
  name:
    description: Name of the guest.
    type: str
    required: true
    aliases: [domain, guest]
  dest:
    description:
      - The backup directory on the KVM host (local or a mounted remote file system); the
        guest's backups go into a sub-directory named after it.
      - Back up a guest into one directory only - checkpoints are per guest, and the
        newest checkpoint of another directory is not used.
    type: path
    required: true
  mode:
    description:
      - V(full) - every allocated cluster of every disk; starts a new chain.
      - V(incremental) - what changed since the last backup in O(dest); fails when that is
        not possible (no earlier backup, its checkpoint is gone, its chain is broken, a raw
        disk, a shut-off guest).
      - V(auto) - incremental when possible, full otherwise; C(reason) in RV(plan) says why.
    type: str
    choices: [full, incremental, auto]
    default: auto
  disks:
    description:
      - The disks (target names such as V(vda)) to back up; all writable file and block
        disks when not set. CD-ROMs and read-only disks are never backed up.
    type: list
    elements: str
  quiesce:
    description:
      - V(auto) - freeze the file systems through the guest agent when it answers, go on
        without (with a warning) when it does not.
      - V(required) - fail, before anything is taken, when they cannot be frozen.
      - V(never) - do not try.
    type: str
    choices: [auto, required, never]
    default: auto
  compress:
    description:
      - Compress the images (qcow2 zlib compression, by C(qemu-img convert -c) after the job;
        for an incremental image only its own clusters are rewritten).
    type: bool
    default: false
  label:
    description:
      - Free text stored in the manifest. When a complete backup of the guest with this
        label exists, nothing is taken (retention still runs).
    type: str
  keep:
    description:
      - Retention - keep the newest O(keep) chains (a full backup and its incrementals) and
        delete older ones, whole chains only, after a successful backup.
      - With O(max_age) a chain is kept when either rule keeps it. The newest chain, the one
        the next incremental builds on, is never deleted.
    type: int
  max_age:
    description:
      - Retention - delete chains whose newest backup is older than this (V(7d), V(12h),
        V(90m), V(2w)), never the newest chain.
    type: str
  timeout:
    description: Seconds to wait for the backup job; it is aborted (and nothing kept) after that.
    type: int
    default: 3600
notes:
  - The backup job copies at the speed of the storage; the guest keeps running, and writes
    to clusters not yet copied are delayed while QEMU saves the old data first.
  - The saved C(domain.xml) holds no secrets (console passwords are left out).
seealso:
  - module: virtops.kvm.backup_info
  - module: virtops.kvm.backup_restore
"""

EXAMPLES = r"""
- name: Nightly backup of web1, incremental when possible, keeping 7 chains
  virtops.kvm.backup:
    name: web1
    dest: /srv/backup/kvm
    keep: 7
  register: bk

- name: What was taken
  ansible.builtin.debug:
    msg: "{{ bk.backup.id }} ({{ bk.plan.reason }}), quiesced={{ bk.backup.quiesced }}"

- name: A full backup of one disk, compressed, at most once with this label
  virtops.kvm.backup:
    name: db1
    dest: /srv/backup/kvm
    mode: full
    disks: [vdb]
    compress: true
    label: before-upgrade-2.4
"""

RETURN = r"""
plan:
  description: What is (or in check mode would be) taken.
  returned: when a backup is taken
  type: dict
  sample:
    id: 20261201T112233Z-inc
    mode: incremental
    method: libvirt-push
    reason: incremental since 20261201T100000Z-full
    disks: [vda]
    parent: 20261201T100000Z-full
    checkpoint: virtops-backup-20261201T112233Z-inc
    incremental_from: virtops-backup-20261201T100000Z-full
backup:
  description:
    - The backup's manifest (as M(virtops.kvm.backup_info) lists it) with its C(path) and
      C(size).
  returned: when a backup was taken, or one with O(label) exists
  type: dict
  sample:
    id: 20261201T112233Z-inc
    guest: web1
    mode: incremental
    parent: 20261201T100000Z-full
    checkpoint: virtops-backup-20261201T112233Z-inc
    quiesced: false
    quiesce_detail: "not quiesced: the guest has no guest agent channel"
    size: 1179648
    disks:
      - target: vda
        file: vda.qcow2
        size: 1179648
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        virtual_size: 1073741824
        backing: ../20261201T100000Z-full/vda.qcow2
job:
  description: libvirt's statistics of the backup job (milliseconds, bytes).
  returned: when a running guest was backed up
  type: dict
  sample: {time_elapsed: 153, disk_total: 1073741824, disk_processed: 1073741824}
cleaned:
  description: What an interrupted earlier run left and this run removed (or would remove).
  returned: when a backup is taken
  type: dict
  sample: {partial: [/srv/backup/kvm/web1/.20261201T112233Z-inc.partial], checkpoints: []}
retention:
  description: The chains (lists of backup ids) kept and deleted.
  returned: when O(keep) or O(max_age) is set
  type: dict
  sample: {keep: 2, max_age: null, kept: [[a-full, b-inc], [c-full]], deleted: [[old-full]]}
"""

from ansible_collections.virtops.kvm.plugins.module_utils._backup import (  # noqa: E402
    BackupManager,
)
from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True, "aliases": ["domain", "guest"]},
    "dest": {"type": "path", "required": True},
    "mode": {"type": "str", "default": "auto", "choices": ["full", "incremental", "auto"]},
    "disks": {"type": "list", "elements": "str"},
    "quiesce": {"type": "str", "default": "auto", "choices": ["auto", "required", "never"]},
    "compress": {"type": "bool", "default": False},
    "label": {"type": "str"},
    "keep": {"type": "int"},
    "max_age": {"type": "str"},
    "timeout": {"type": "int", "default": 3600},
}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.run(lambda m: BackupManager(m).run())


if __name__ == "__main__":
    main()
