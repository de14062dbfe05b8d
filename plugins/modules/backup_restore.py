#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_restore
short_description: Restore a libvirt guest from its backups, into itself or a new guest
version_added: 0.1.0
description:
  - Rebuilds a guest's disks from a backup taken by M(virtops.kvm.backup) - the full backup
    and the incrementals up to the chosen one - with C(qemu-img convert) of the chain's top
    image (whose backing files are the images below it).
  - The whole chain is verified first (sizes and SHA-256 of every file against the
    manifests); a chain that does not verify is refused and nothing is written.
  - Into a B(new guest) (O(target) not an existing guest) - the saved definition is defined
    under the new name, without its UUID and with new MAC addresses; each backed-up disk
    gets a new image C(<target>-<disk>.qcow2) (C(.img) for a disk that was raw) in
    O(disk_dir) or beside the original image. Writable disks that were not backed up are
    left out (with a warning). Other devices are kept as they were - a clone running
    beside the original may need its own serial log files or sockets.
  - Into the B(original guest) (O(target) unset or its name, the guest exists) - it must be
    shut off (the module refuses disks in use), and O(force=true) is needed because its
    disk images are replaced. Its definition is kept, and its backup checkpoints are
    dropped (their bitmaps were in the replaced images), so its next backup is a full one.
  - When no guest of the original name exists any more, the saved definition is defined
    again as it was (same UUID and MACs) with its disks at their original paths; existing
    files there are replaced only with O(force=true).
  - Every image is converted into a hidden file beside its final name and renamed into
    place only when all are converted; a failure leaves the guest and its disks as they were.
  - An image used by another guest is never overwritten.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  check_mode:
    details: Verifies the chain and checks every refusal; converts and defines nothing.
  diff_mode:
    support: none
    details: No diff; RV(disks) says what is (or would be) written where.
  idempotent:
    details: The restore is recorded in the guest's metadata (backup id, size and time of
      each restored image); a second run with the same backup is no change while those
      images are unchanged.
options:
  name:
    description: The guest whose backups are restored (its directory in O(dest)).
    type: str
    required: true
    aliases: [domain, guest]
  dest:
    description: The backup directory (as given to M(virtops.kvm.backup)).
    type: path
    required: true
  backup:
    description: The backup id to restore (with its chain); the newest complete one when not set.
    type: str
  target:
    description: The guest to restore into; O(name) when not set.
    type: str
  disk_dir:
    description: Directory for a new guest's images; beside each original image when not set.
    type: path
  force:
    description: Allow replacing the disk images of the (shut-off) original guest.
    type: bool
    default: false
  start:
    description: Start the guest after the restore.
    type: bool
    default: false
  verify:
    description:
      - Verify the chain's SHA-256 checksums before restoring. With V(false) only sizes are
        checked (faster for large backups already verified by M(virtops.kvm.backup_info)).
    type: bool
    default: true
seealso:
  - module: virtops.kvm.backup
  - module: virtops.kvm.backup_info
"""

EXAMPLES = r"""
- name: Restore web1's newest backup into a new guest and start it
  virtops.kvm.backup_restore:
    name: web1
    dest: /srv/backup/kvm
    target: web1-restored
    disk_dir: /var/lib/libvirt/images
    start: true

- name: Put web1 (shut off) back to a given backup
  virtops.kvm.backup_restore:
    name: web1
    dest: /srv/backup/kvm
    backup: 20261201T112233Z-inc
    force: true
"""

RETURN = r"""
backup:
  description: The backup restored.
  returned: when one was found
  type: str
chain:
  description: The backups whose images were read, full first.
  returned: when a backup was found
  type: list
  elements: str
target:
  description: The guest restored into.
  returned: success
  type: str
disks:
  description: Per disk - C(target), C(source) (the chain's top image), C(path) (where it goes),
    C(fmt), C(replaces) (an existing file is replaced).
  returned: success
  type: list
  elements: dict
dropped_disks:
  description: Writable disks of the saved definition left out of a new guest (not backed up).
  returned: when a guest is defined
  type: list
  elements: str
started:
  description: The guest was started.
  returned: when O(start) started it
  type: bool
problems:
  description: Why the chain does not verify (with the failure).
  returned: on failure to verify
  type: list
  elements: dict
"""

from ansible_collections.virtops.kvm.plugins.module_utils._backup_restore import (  # noqa: E402
    RestoreManager,
)
from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True, "aliases": ["domain", "guest"]},
    "dest": {"type": "path", "required": True},
    "backup": {"type": "str"},
    "target": {"type": "str"},
    "disk_dir": {"type": "path"},
    "force": {"type": "bool", "default": False},
    "start": {"type": "bool", "default": False},
    "verify": {"type": "bool", "default": True},
}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.run(lambda m: RestoreManager(m).run())


if __name__ == "__main__":
    main()
