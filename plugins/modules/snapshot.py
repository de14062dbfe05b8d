#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot
short_description: Create, delete and revert to snapshots of a libvirt guest
version_added: 0.1.0
description:
  - Manages one snapshot of one guest. O(state=present) takes it when it does not exist,
    O(state=absent) deletes it without losing data, O(state=reverted) brings the guest back
    to it.
  - B(Internal) snapshots (O(kind=internal)) live inside the qcow2 images. Of a running
    guest they include its memory (QEMU C(savevm)); of a stopped guest they hold the disks.
    Every disk they include must be qcow2.
  - B(External) snapshots (O(kind=external)) are disk-only; each included disk gets a new
    qcow2 overlay file that takes the writes from then on, and the old image is left
    unchanged. They work for raw disks and running guests, optionally quiesced through the
    guest agent.
  - Deleting an external snapshot merges its overlay back into the image below (block
    commit, which libvirt 9.0 does itself, with a pivot for the active image of a running
    guest and offline for a stopped one) and removes the overlay file.
  - Reverting to an external snapshot, which libvirt 9.0 refuses ("not supported yet"), is
    done by the module (needs a local URI and C(qemu-img) on the KVM host) - every external
    disk gets a fresh empty overlay on the image that holds the snapshot's state, which is
    never written; then the guest is stopped, switched to the new overlays, and started
    again when O(running_state) asks for it. The overlay the guest used is replaced when no
    later snapshot is based on it, and kept (with the new overlay under a new name) when one
    is. Only disk contents are restored; the guest's configuration stays as it is.
  - A revert never removes an overlay before its replacement is in place. The new overlays
    are made first (a replacement under a hidden name beside the old one, renamed over it
    later), while the guest still runs untouched; if that fails (C(qemu-img) error, full or
    read-only directory) the module fails with nothing changed. A failure after the guest
    was stopped is undone - old overlays and definition back, the files the run made
    removed - and a guest that was running is started again; the error says so. The
    replaced overlays are removed only once the revert is complete.
  - The module keeps a guest's snapshots of one kind; it refuses to add an internal snapshot
    to a guest with external ones and the reverse, because libvirt can neither delete nor
    revert such a mix.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  check_mode:
    details: Every check is made and the result says what would be done; nothing changes.
      A guest that does not exist yet is assumed to come from an earlier task of the play
      (with a warning and no snapshots); the real run then fails if it is still missing.
  diff_mode:
    details: The diff shows the snapshot, its description, the current snapshot and the
      guest's power state around a revert, and the snapshots retention would delete.
  idempotent:
    details:
      - O(state=present) and O(state=absent) compare by name.
      - O(state=reverted) is a change unless the guest is provably still at the snapshot
        (see O(state)); RV(revert_judgement) says what was checked.
options:
  domain:
    description: Name of the guest.
    type: str
    required: true
    aliases: [guest]
  name:
    description: Name of the snapshot.
    type: str
    required: true
    aliases: [snapshot]
  state:
    description:
      - V(present) takes the snapshot when the guest has none of that name. An existing
        snapshot is not retaken; only its O(description) is updated.
      - V(absent) deletes the snapshot (not its children, which keep their data).
      - V(reverted) brings the guest back to the snapshot. It is B(not) a change only when
        the snapshot is libvirt's current snapshot, the guest is in the power state the
        revert would leave it in, and the guest has not changed since the module took or
        last reverted to that snapshot. "Not changed" is judged from a record the module
        writes in the guest's metadata at that moment - for a running or paused guest, the
        same QEMU process, no new write requests on the snapshot's disks
        (C(virDomainBlockStats)), and for a memory snapshot an unchanged vCPU time (the guest
        stayed paused); for a stopped guest, the same image files with unchanged size and
        modification time. Anything else, such as a guest that ran after a memory snapshot
        or a snapshot reverted to with other tools, reverts again.
    type: str
    choices: [present, absent, reverted]
    default: present
  description:
    description: Free text stored with the snapshot.
    type: str
  kind:
    description:
      - V(internal) - inside the qcow2 images, with memory for a running guest.
      - V(external) - disk-only overlay files; works for raw disks.
      - V(internal) when not set.
      - Used when the snapshot is taken; when set, an existing snapshot of another kind gives
        a warning.
    type: str
    choices: [internal, external]
  memory:
    description:
      - Whether the snapshot holds the guest's memory so that a revert resumes the guest
        where it was.
      - Only internal snapshots of a running or paused guest have memory; libvirt cannot take
        an internal snapshot of a running guest without it. When not set, V(true) for an
        internal snapshot of a running guest and V(false) otherwise.
      - A memory snapshot needs every writable disk of the guest to be qcow2.
    type: bool
  quiesce:
    description:
      - Freeze the guest's file systems through the QEMU guest agent while an external
        snapshot is taken. Needs a running guest with a guest agent channel.
    type: bool
    default: false
  disks:
    description:
      - The disks (target names such as V(vda)) to include; all writable disks when not set.
      - Memory snapshots always include every writable disk.
    type: list
    elements: str
  exclude_disks:
    description: Disks (target names) to leave out.
    type: list
    elements: str
  overlay_dir:
    description:
      - Directory for the overlay files of an external snapshot, named
        C(<domain>-<disk>.<snapshot>.qcow2). By default the directory of each disk's
        current image.
    type: path
  running_state:
    description:
      - The power state a revert leaves the guest in.
      - V(snapshot) - as recorded - running or paused for a memory snapshot, shut off for a
        disk-only snapshot.
      - V(running) or V(paused) - start (or resume) the guest after the revert in that state.
    type: str
    choices: [snapshot, running, paused]
    default: snapshot
  retain:
    description:
      - With O(state=present) - after taking the snapshot, keep only the newest O(retain.keep)
        snapshots whose name starts with O(retain.prefix) and delete the older ones, oldest
        first, one at a time, each with the same data-preserving delete as O(state=absent).
        Every deletion is validated before the first one is made.
      - O(name) must start with O(retain.prefix).
    type: dict
    suboptions:
      prefix:
        description: Name prefix of the snapshots that retention manages, for example V(nightly-).
        type: str
        required: true
      keep:
        description: How many of them to keep (at least 1), the new one included.
        type: int
        required: true
notes:
  - External snapshots deleted by libvirt are merged with a block commit; a running guest
    keeps running. Merging can take a while for large overlays.
  - Guests keep running during internal snapshots of running guests only after QEMU has
    saved their memory (the guest is paused meanwhile).
seealso:
  - module: virtops.kvm.snapshot_info
"""

EXAMPLES = r"""
- name: Snapshot a stopped guest (internal, qcow2)
  virtops.kvm.snapshot:
    domain: web1
    name: before-upgrade
    description: before the 2.4 upgrade

- name: Memory snapshot of a running guest
  virtops.kvm.snapshot:
    domain: web1
    name: live-1
    memory: true

- name: Disk-only external snapshot of a running guest with a raw disk, overlays elsewhere
  virtops.kvm.snapshot:
    domain: db1
    name: pre-migration
    kind: external
    exclude_disks: [vdb]
    overlay_dir: /var/lib/libvirt/overlays

- name: Nightly snapshot, keeping the last 3
  virtops.kvm.snapshot:
    domain: web1
    name: "nightly-{{ now(utc=true, fmt='%Y%m%d') }}"
    kind: external
    retain:
      prefix: nightly-
      keep: 3

- name: Go back to it and start the guest
  virtops.kvm.snapshot:
    domain: web1
    name: before-upgrade
    state: reverted
    running_state: running
  register: revert

- name: Say how the revert was judged
  ansible.builtin.debug:
    var: revert.revert_judgement

- name: Delete it, merging its data into the disks
  virtops.kvm.snapshot:
    domain: web1
    name: before-upgrade
    state: absent
"""

RETURN = r"""
snapshot:
  description:
    - The snapshot after the run (as M(virtops.kvm.snapshot_info) lists it); null when absent.
  returned: always
  type: dict
  sample:
    name: before-upgrade
    kind: internal
    memory: false
    state: shutoff
    current: true
    parent: null
    children: []
    creation_time: 1716200000
    creation_time_iso: "2024-05-20T10:13:20+00:00"
    description: before the 2.4 upgrade
    disks:
      - name: vda
        snapshot: internal
        file: /var/lib/libvirt/images/web1.qcow2
        base: null
        base_fmt: null
created:
  description:
    - What was (or in check mode would be) taken - kind, memory, per-disk mode and overlay
      files.
  returned: when a snapshot is created
  type: dict
  sample:
    kind: external
    memory: false
    disks: {vda: external}
    overlays: {vda: /var/lib/libvirt/images/web1-vda.s1.qcow2}
deleted:
  description:
    - How the snapshot was deleted - V(libvirt) (merged by libvirt) or V(discard) (an overlay
      that held only writes discarded by a revert, removed).
  returned: when a snapshot is deleted
  type: dict
  sample: {kind: external, method: libvirt, detail: active block commit into the base (libvirt)}
revert_judgement:
  description:
    - How O(state=reverted) decided whether the guest was already at the snapshot.
    - RV(revert_judgement.unchanged) true means nothing was done.
  returned: with O(state=reverted)
  type: dict
  contains:
    unchanged:
      description: The guest was judged still at the snapshot and unchanged since.
      type: bool
    reverted:
      description: Whether the guest was (or in check mode would be) reverted.
      type: bool
    method:
      description:
        - V(current-snapshot), V(power-state), V(write-counters),
          V(write-counters+vcpu-time) or V(image-files).
      type: str
    reason:
      description: One sentence saying why.
      type: str
    checks:
      description: Each check made, with C(check), C(ok) and C(detail).
      type: list
      elements: dict
revert_method:
  description:
    - How the revert is done (libvirt for internal snapshots, the module's own path for
      external ones).
  returned: when a revert is done
  type: str
revert_overlays:
  description:
    - For an external snapshot, per disk the base image, the fresh overlay, and whether it
      is a new file.
  returned: when reverting to an external snapshot
  type: list
  elements: dict
retention:
  description: The snapshots with O(retain.prefix) kept and deleted (oldest first).
  returned: when O(retain) is set
  type: dict
  sample: {prefix: nightly-, keep: 2, kept: [nightly-2, nightly-3], deleted: [nightly-1]}
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import (  # noqa: E402
    SnapshotManager,
)

ARGUMENT_SPEC = {
    "domain": {"type": "str", "required": True, "aliases": ["guest"]},
    "name": {"type": "str", "required": True, "aliases": ["snapshot"]},
    "state": {
        "type": "str",
        "default": "present",
        "choices": ["present", "absent", "reverted"],
    },
    "description": {"type": "str"},
    "kind": {"type": "str", "choices": ["internal", "external"]},
    "memory": {"type": "bool"},
    "quiesce": {"type": "bool", "default": False},
    "disks": {"type": "list", "elements": "str"},
    "exclude_disks": {"type": "list", "elements": "str"},
    "overlay_dir": {"type": "path"},
    "running_state": {
        "type": "str",
        "default": "snapshot",
        "choices": ["snapshot", "running", "paused"],
    },
    "retain": {
        "type": "dict",
        "options": {
            "prefix": {"type": "str", "required": True},
            "keep": {"type": "int", "required": True},
        },
    },
}


def main() -> None:
    module = KvmModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[["disks", "exclude_disks"]],
        supports_check_mode=True,
    )
    module.run(lambda m: SnapshotManager(m).run())


if __name__ == "__main__":
    main()
