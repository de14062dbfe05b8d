#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot_info
short_description: List the snapshots of a libvirt guest as a tree
version_added: 0.1.0
description:
  - Returns every snapshot of a guest (or one, with O(name)) with its parent, children,
    whether it is current, creation time, the guest's state when it was taken, its disks,
    and its kind (internal or external, with or without memory).
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
options:
  domain:
    description: Name of the guest. A missing guest is an error.
    type: str
    required: true
    aliases: [guest]
  name:
    description: Only this snapshot; an empty list when the guest has no snapshot of that name.
    type: str
    aliases: [snapshot]
seealso:
  - module: virtops.kvm.snapshot
"""

EXAMPLES = r"""
- name: Snapshots of web1
  virtops.kvm.snapshot_info:
    domain: web1
  register: snaps

- name: Names, oldest first
  ansible.builtin.debug:
    msg: "{{ snaps.snapshots | map(attribute='name') | list }} (current {{ snaps.current }})"
"""

RETURN = r"""
domain:
  description: The guest.
  returned: always
  type: str
current:
  description:
    - Name of the current snapshot (the one the guest was last taken at or reverted to);
      null when none.
  returned: always
  type: str
snapshots:
  description: The snapshots, oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Snapshot name.
      type: str
    description:
      description: Its description, or null.
      type: str
    parent:
      description: Name of the parent snapshot; null for a root.
      type: str
    children:
      description: Names of the child snapshots.
      type: list
      elements: str
    current:
      description: Whether it is the current snapshot.
      type: bool
    creation_time:
      description: When it was taken, seconds since the epoch.
      type: int
    creation_time_iso:
      description: The same in ISO 8601 (UTC).
      type: str
    state:
      description:
        - The guest's state when it was taken (V(running), V(paused), V(shutoff),
          V(disk-snapshot)).
      type: str
    kind:
      description: V(internal), V(external) or V(mixed).
      type: str
    memory:
      description: Whether it holds the guest's memory.
      type: bool
    disks:
      description:
        - Per disk - C(name), C(snapshot) (V(internal), V(external) or V(no)), C(file) (the
          overlay of an external snapshot, the image of an internal one), C(base) and
          C(base_fmt) (external - the image holding the disk's state at the snapshot).
      type: list
      elements: dict
  sample:
    - name: nightly-1
      description: null
      parent: null
      children: [nightly-2]
      current: false
      creation_time: 1716200000
      creation_time_iso: "2024-05-20T10:13:20+00:00"
      state: disk-snapshot
      kind: external
      memory: false
      disks:
        - name: vda
          snapshot: external
          file: /images/web1-vda.nightly-1.qcow2
          base: /images/web1.qcow2
          base_fmt: qcow2
tree:
  description:
    - The snapshots nested under their parents (each node C(name), C(current), C(children));
      empty with O(name).
  returned: always
  type: list
  elements: dict
  sample:
    - name: nightly-1
      current: false
      children: [{name: nightly-2, current: true, children: []}]
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import (  # noqa: E402
    snapshot_info,
)

ARGUMENT_SPEC = {
    "domain": {"type": "str", "required": True, "aliases": ["guest"]},
    "name": {"type": "str", "aliases": ["snapshot"]},
}


def run(m: KvmModule) -> dict:
    p = m.params
    snapshots = snapshot_info(m.conn, p["domain"], p["name"])
    return {"changed": False, "domain": p["domain"], **snapshots}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=True, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
