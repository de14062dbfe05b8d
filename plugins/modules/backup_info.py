#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_info
short_description: List the backups of guests in a backup directory, their chains, and verify them
version_added: 0.1.0
description:
  - Reads a backup directory written by M(virtops.kvm.backup) - the backups of one guest
    (O(name)) or of every guest there, grouped into chains (a full backup and the
    incrementals built on it), and whether each chain verifies.
  - A chain verifies when every backup in it has its manifest, every parent is there, and
    every file has the size and (with O(verify)) the SHA-256 its manifest records. One
    changed byte in any file of a chain makes it fail; M(virtops.kvm.backup_restore) refuses
    such a chain.
  - Lists C(.partial) directories (backups being written, or interrupted) apart; they are
    never counted as backups.
  - Through the libvirt connection (read-only) it also lists the guest's checkpoints made by
    M(virtops.kvm.backup), and says whether the next O(virtops.kvm.backup#module:mode=auto)
    backup can be incremental.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
options:
  dest:
    description: The backup directory (as given to M(virtops.kvm.backup)).
    type: path
    required: true
  name:
    description: Only this guest's backups; every guest with a directory in O(dest) when not set.
    type: str
    aliases: [domain, guest]
  verify:
    description:
      - Check every file's SHA-256 (reads every byte). Without it only the presence and size
        of the files are checked.
    type: bool
    default: true
seealso:
  - module: virtops.kvm.backup
  - module: virtops.kvm.backup_restore
"""

EXAMPLES = r"""
- name: Backups of web1, verified
  virtops.kvm.backup_info:
    dest: /srv/backup/kvm
    name: web1
  register: info

- name: Fail when a chain does not verify
  ansible.builtin.assert:
    that: info.guests[0].chains | rejectattr('intact') | list | length == 0
"""

RETURN = r"""
guests:
  description: One entry per guest directory in O(dest).
  returned: always
  type: list
  elements: dict
  contains:
    guest:
      description: The guest's name (its directory).
      type: str
    dir:
      description: The guest's backup directory.
      type: str
    backups:
      description:
        - Its complete backups, oldest first, as their manifests say (with C(path) and C(size)).
      type: list
      elements: dict
    chains:
      description:
        - Its chains, oldest first - C(full) (the full backup's id), C(backups) (ids, full
          first), C(size) (bytes), C(intact), C(verified) (checksums read and right) and
          C(problems).
      type: list
      elements: dict
    latest:
      description: The newest complete backup's id.
      type: str
    partial:
      description: Directories of backups that are not complete.
      type: list
      elements: str
    unreadable:
      description: Backup directories whose manifest cannot be read.
      type: list
      elements: str
    checkpoints:
      description: The guest's checkpoints made by M(virtops.kvm.backup); null when no such guest.
      type: list
      elements: str
    next_incremental_possible:
      description: The newest backup's checkpoint exists and its chain is intact.
      type: bool
  sample:
    - guest: web1
      dir: /srv/backup/kvm/web1
      latest: 20261201T112233Z-inc
      chains:
        - full: 20261201T100000Z-full
          backups: [20261201T100000Z-full, 20261201T112233Z-inc]
          size: 52559872
          intact: true
          verified: true
          problems: []
      partial: []
      unreadable: []
      checkpoints: [virtops-backup-20261201T112233Z-inc]
      next_incremental_possible: true
"""

from ansible_collections.virtops.kvm.plugins.module_utils._backup_restore import (  # noqa: E402
    backup_info,
)
from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402

ARGUMENT_SPEC = {
    "dest": {"type": "path", "required": True},
    "name": {"type": "str", "aliases": ["domain", "guest"]},
    "verify": {"type": "bool", "default": True},
}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=True, supports_check_mode=True)
    module.run(
        lambda m: {
            "changed": False,
            **backup_info(m.conn, m.params["dest"], m.params["name"], verify=m.params["verify"]),
        }
    )


if __name__ == "__main__":
    main()
