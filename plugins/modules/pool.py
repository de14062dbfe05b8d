#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: pool
short_description: Manage libvirt storage pools
version_added: 0.1.0
description:
  - Define, build, start, stop, autostart, refresh and remove libvirt storage pools of types
    V(dir), V(fs), V(netfs) (NFS), V(logical) (LVM volume group) and V(rbd) (Ceph RBD), and
    of every other type libvirt knows (iSCSI, SCSI, multipath, disk, ZFS, Gluster...) with
    O(xml) for what the options do not model.
  - The pool is persistent. Its storage is built (the directory created, the file system
    made, the volume group created) only when starting it fails and O(build=true), and
    always with libvirt's no-overwrite build, so existing data is never formatted over.
  - The O(type) and O(target) of an existing pool cannot change, and the module fails with a
    message saying so. A changed O(source) (or O(xml)) is written to the pool's persistent
    configuration; a running pool keeps using the old one until it is stopped and
    started, and the module reports that in RV(restart_required).
  - Returns the capacity, allocation and available bytes of the pool.
author:
  - virtops.kvm contributors (!UNKNOWN)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  check_mode:
    description:
      - Predicts the changes and reports them without making any.
      - With O(state=absent) and O(delete_storage=true), RV(deleted_volumes) of an inactive
        V(dir) pool on the local host are the entries of its directory that libvirt lists as
        volumes once it starts the pool; for other inactive pools they cannot be known
        without starting the pool, so check mode warns and returns V(null).
  idempotent:
    description: A second run with the same options reports no change; O(refresh) is not a change.
options:
  name:
    description: Name of the storage pool.
    type: str
    required: true
  state:
    description:
      - V(present) defines the pool (and starts it when O(active=true)).
      - V(absent) stops and undefines it; see O(delete_storage).
    type: str
    choices: [present, absent]
    default: present
  type:
    description:
      - The pool type. With O(state=present) it is required, unless O(xml) is a whole
        C(<pool type=...>) definition.
      - V(rbd) needs libvirt's RBD storage backend on the host
        (Debian package C(libvirt-daemon-driver-storage-rbd)) and a Ceph cluster.
      - The options model V(dir), V(fs), V(netfs), V(logical) and V(rbd). The other types
        take O(target) but no O(source) - give their source in O(xml). Which of them a host
        supports depends on its libvirt storage backends.
    type: str
    choices:
      [dir, fs, netfs, logical, rbd, disk, iscsi, iscsi-direct, scsi, mpath, gluster, zfs,
       vstorage]
  target:
    description:
      - The directory of V(dir), V(fs) and V(netfs) pools (required for these types) -
        where the pool's files live, or where the file system is mounted.
      - For V(logical) pools it defaults to V(/dev/VGNAME). It does not apply to V(rbd).
      - Cannot change once the pool exists.
    type: path
  source:
    description: Where the storage comes from (not for V(dir) pools).
    type: dict
    suboptions:
      hosts:
        description:
          - V(netfs) - exactly one NFS server. V(rbd) - the Ceph monitors.
          - Each is V(HOST) or V(HOST:PORT).
        type: list
        elements: str
      dir:
        description: V(netfs) - the exported directory on the server, for example V(/srv/nfs/vms).
        type: str
      devices:
        description:
          - V(fs) - exactly one block device holding the file system.
          - V(logical) - the physical volumes of the volume group (needed to build it).
        type: list
        elements: str
      name:
        description:
          - V(logical) - the volume group name (defaults to O(name)).
          - V(rbd) - the Ceph pool name (required).
        type: str
      format:
        description:
          - V(fs) - the file system type (V(auto), V(ext4), V(xfs)...); used to build it.
          - V(netfs) - V(nfs) (default), V(auto), V(glusterfs) or V(cifs).
          - V(logical) - V(lvm2).
        type: str
      protocol_version:
        description: V(netfs) with V(nfs) - the NFS protocol version to mount with, such as V(4).
        type: str
      auth:
        description:
          - V(rbd) - Ceph authentication with a libvirt secret of usage type C(ceph).
        type: dict
        suboptions:
          username:
            description: The Ceph user, without the C(client.) prefix.
            type: str
            required: true
          secret_usage:
            description:
              - The usage name of the libvirt secret holding the key.
              - Defaults to V(client.USERNAME secret) when O(source.auth.secret_uuid) is not set.
            type: str
          secret_uuid:
            description: The UUID of the libvirt secret holding the key.
            type: str
          secret_value:
            description:
              - The Ceph key in base64, as in a keyring file.
              - When set, the module creates the libvirt secret if it is missing (private,
                persistent) and sets its value. A failed pool creation removes the secret
                it made.
              - This is the secret code of M(virtops.kvm.secret) (use that module for other
                secrets, or to manage this one on its own). libvirt does not give back the
                value of a private secret, so an existing private secret's value is only
                set again with O(source.auth.secret_update=always).
            type: str
          secret_update:
            description:
              - V(on_create) sets the value when the module creates the secret, and, for an
                existing secret that is not private (libvirt gives its value back), when it
                has no value or another one.
              - V(always) sets it on every run (and so always reports a change).
            type: str
            choices: [on_create, always]
            default: on_create
  active:
    description: Whether the pool should be running (started).
    type: bool
    default: true
  autostart:
    description: Whether libvirt starts the pool when it starts. Not managed when omitted.
    type: bool
  build:
    description:
      - When starting the pool fails (the directory does not exist, the device has no file
        system, the volume group does not exist), build the storage with libvirt's
        no-overwrite build and start again.
      - Building never formats over an existing file system or volume group.
    type: bool
    default: true
  refresh:
    description:
      - Refresh the pool (rescan its volumes and capacities) on a running pool.
      - This only updates libvirt's view of the storage, so it is not reported as a change.
    type: bool
    default: false
  xml:
    description:
      - A fragment of storage pool XML (one element, such as C(<source>...</source>) or
        C(<target>...</target>)) or a whole C(<pool>) definition, merged over what the
        options produce, for what they do not model - the source of the pool types without
        typed options (an iSCSI target and its CHAP C(<auth>), a SCSI adapter, a disk's
        partition table), the permissions of the target directory, and so on.
      - It adds and sets elements and attributes, and never removes any (a host name added
        to a DNS host is added beside the others).
      - It is compared with the definition element by element, never as text, and counts
        as unchanged when the definition already contains it. Write it as libvirt stores
        it to stay idempotent (M(virtops.kvm.pool_info) does not show the XML; C(virsh
        pool-dumpxml --inactive) does).
      - It may not contradict the options (O(name), O(type), O(target), O(source)); the
        module fails before any change when it does, or when it is not well-formed XML.
    type: str
  delete_storage:
    description:
      - With O(state=absent), delete every volume of the pool and then the pool's storage
        (libvirt's pool delete) before undefining it.
      - V(dir), V(fs) and V(netfs) - the target directory is removed; V(logical) - the
        volume group is removed (C(vgremove), C(pvremove)). The file system on an V(fs)
        device is not wiped.
      - An inactive pool is started first so that its volumes can be deleted.
      - Refused, before anything changes, when a guest uses a volume of the pool (see
        O(force)).
    type: bool
    default: false
  force:
    description:
      - With O(delete_storage=true), delete the volumes even when guests use them. This
        destroys data - the guests' disks are gone.
      - A volume is in use when a guest (running or shut off, persistent or transient) has
        it as a disk (a file, block device, pool volume or network disk) or as any layer of
        a disk's backing chain. For an inactive pool, a disk counts when it names the pool
        or lies under its target directory (or its Ceph pool).
      - Without it the module fails naming each guest and disk, and changes nothing.
    type: bool
    default: false
notes:
  - NFS (V(netfs)) needs the kernel NFS client on the host; V(logical) needs LVM2 and
    device-mapper; V(rbd) needs a reachable Ceph cluster.
  - Another writer's change is not overwritten. Just before writing the pool definition
    the module reads it again; when it changed since the task read it, the task is computed
    once more from the new definition, and when it changed again the task fails with
    nothing written. libvirt has no atomic compare-and-write, so only a change made in the
    instant between that read and the write can still be lost.
seealso:
  - module: virtops.kvm.pool_info
  - module: virtops.kvm.volume
"""

EXAMPLES = r"""
- name: A directory pool for guest images
  virtops.kvm.pool:
    name: images
    type: dir
    target: /var/lib/libvirt/images
    autostart: true

- name: An NFS pool, mounted on /var/lib/libvirt/nfs
  virtops.kvm.pool:
    name: nfs
    type: netfs
    target: /var/lib/libvirt/nfs
    source:
      hosts: [nfs.example.com]
      dir: /srv/nfs/vms
      protocol_version: "4"

- name: An LVM pool on a new volume group made from /dev/sdb
  virtops.kvm.pool:
    name: vg_guests
    type: logical
    source:
      devices: [/dev/sdb]

- name: A Ceph RBD pool, creating the libvirt secret of the Ceph key
  virtops.kvm.pool:
    name: ceph
    type: rbd
    source:
      name: libvirt-pool
      hosts: [mon1.example.com, "mon2.example.com:6789"]
      auth:
        username: libvirt
        secret_value: "{{ ceph_libvirt_key }}"

- name: A directory pool whose directory belongs to a group, set through the xml option
  virtops.kvm.pool:
    name: shared
    type: dir
    target: /srv/shared-images
    xml: |
      <target>
        <permissions>
          <mode>0770</mode>
          <owner>0</owner>
          <group>64055</group>
        </permissions>
      </target>

- name: An iSCSI pool (a type without typed options), with CHAP through a libvirt secret
  virtops.kvm.pool:
    name: iscsi
    type: iscsi
    target: /dev/disk/by-path
    active: false
    xml: |
      <source>
        <host name="iscsi.example.com"/>
        <device path="iqn.2026-01.com.example:storage"/>
        <auth type="chap" username="libvirt">
          <secret usage="iqn.2026-01.com.example:storage"/>
        </auth>
      </source>

- name: Remove a pool and everything in it
  virtops.kvm.pool:
    name: scratch
    state: absent
    delete_storage: true
"""

RETURN = r"""
pool:
  description: >-
    The pool after the run; V(null) when it is absent (or, in check mode, not yet created).
  returned: always
  type: dict
  contains:
    name:
      description: Name.
      type: str
      returned: success
    uuid:
      description: UUID.
      type: str
      returned: success
    type:
      description: Pool type.
      type: str
      returned: success
      sample: dir
    target:
      description: Target directory (none for rbd).
      type: str
      returned: success
    source:
      description: Source settings as given to libvirt.
      type: dict
      returned: success
    state:
      description: V(inactive), V(building), V(running), V(degraded) or V(inaccessible).
      type: str
      returned: success
    active:
      description: Whether the pool is running.
      type: bool
      returned: success
    autostart:
      description: Whether it starts with libvirt.
      type: bool
      returned: success
    persistent:
      description: Whether it is defined (not transient).
      type: bool
      returned: success
    capacity:
      description: Size of the pool in bytes (0 when inactive).
      type: int
      returned: success
    allocation:
      description: Bytes allocated.
      type: int
      returned: success
    available:
      description: Bytes free for new volumes.
      type: int
      returned: success
    volume_count:
      description: Number of volumes (null when inactive).
      type: int
      returned: success
actions:
  description: What the module did (or would do in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [define, build, start]
restart_required:
  description: >-
    Settings that changed in the persistent configuration only, and need the pool stopped and
    started (V(source), V(xml)).
  returned: when the pool existed
  type: list
  elements: str
  sample: [source]
deleted_volumes:
  description:
    - Names of the volumes deleted (or to delete) with O(delete_storage=true).
    - V(null) in check mode when the pool is inactive and its volumes cannot be listed.
  returned: with O(state=absent) and O(delete_storage=true)
  type: list
  elements: str
users:
  description:
    - The guests using volumes of the pool when O(delete_storage=true) deleted them anyway
      (O(force=true)); the same list comes with the failure without O(force).
  returned: when volumes in use were deleted
  type: list
  elements: dict
  contains:
    guest:
      description: Name of the guest.
      type: str
      returned: success
    disk:
      description: Target of its disk (V(vda)).
      type: str
      returned: success
    how:
      description: V(direct) (the disk's source), or V(backing chain) (a layer under it).
      type: str
      returned: success
    running:
      description: Whether the guest was running.
      type: bool
      returned: success
    volume:
      description: Name of the volume of the pool it uses.
      type: str
      returned: success
secret_uuid:
  description: UUID of the Ceph secret created or updated.
  returned: when a secret was created or updated
  type: str
refreshed:
  description: Whether the pool was refreshed.
  returned: when O(refresh=true) and the pool is running
  type: bool
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pool import PoolManager  # noqa: E402

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    "type": {
        "type": "str",
        "choices": [
            "dir",
            "fs",
            "netfs",
            "logical",
            "rbd",
            "disk",
            "iscsi",
            "iscsi-direct",
            "scsi",
            "mpath",
            "gluster",
            "zfs",
            "vstorage",
        ],
    },
    "target": {"type": "path"},
    "source": {
        "type": "dict",
        "options": {
            "hosts": {"type": "list", "elements": "str"},
            "dir": {"type": "str"},
            "devices": {"type": "list", "elements": "str"},
            "name": {"type": "str"},
            "format": {"type": "str"},
            "protocol_version": {"type": "str"},
            "auth": {
                "type": "dict",
                "options": {
                    "username": {"type": "str", "required": True},
                    "secret_usage": {"type": "str", "no_log": False},
                    "secret_uuid": {"type": "str", "no_log": False},
                    "secret_value": {"type": "str", "no_log": True},
                    "secret_update": {
                        "type": "str",
                        "default": "on_create",
                        "choices": ["on_create", "always"],
                    },
                },
                "mutually_exclusive": [["secret_usage", "secret_uuid"]],
            },
        },
    },
    "active": {"type": "bool", "default": True},
    "autostart": {"type": "bool"},
    "build": {"type": "bool", "default": True},
    "refresh": {"type": "bool", "default": False},
    "xml": {"type": "str"},
    "delete_storage": {"type": "bool", "default": False},
    "force": {"type": "bool", "default": False},
}


def main() -> None:
    module = KvmModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[("state", "present", ["type", "xml"], True)],
        supports_check_mode=True,
    )
    module.run(lambda m: PoolManager(m).run())


if __name__ == "__main__":
    main()
