#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: volume
short_description: Manage volumes in libvirt storage pools
version_added: 0.1.0
description:
  - Create, import, clone, grow and delete volumes of a running libvirt storage pool.
  - A new volume is one of - an empty V(raw) or V(qcow2) volume of O(capacity); a V(qcow2)
    overlay on a backing image (O(backing)); an import of a local file (O(source_path)) or
    a URL (O(source_url)); a clone of another volume (O(clone_from)).
  - "Disk-space guard: a new or grown volume that does not fit the pool's available space
    is refused. Sparse volumes (V(raw) or V(qcow2) without preallocation in file pools, RBD)
    may overcommit the pool with O(allow_overcommit=true); preallocated ones never."
  - "Compressed images (gzip, bzip2, xz; known by the file's first bytes, whatever its name)
    are decompressed while they are read: the volume holds the decompressed image, and its
    size is the decompressed size. O(checksum) is of the file as published (compressed), as
    C(SHA512SUMS) files list them."
  - O(capacity) of an existing volume is grown to the new value. When a running guest uses
    the volume, it is grown with the guest's block resize, so the guest sees the new size
    at once. Shrinking fails unless O(allow_shrink=true).
author:
  - virtops.kvm contributors (!UNKNOWN)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  check_mode:
    description:
      - Predicts the changes without making any. Nothing is downloaded but a checksum file
        (O(checksum=url:URL)), and an existing volume is not read to verify O(checksum) - its
        digest as recorded by an earlier run on this host is compared instead (see
        O(checksum)). Without such a record, check mode warns and predicts the replacement
        when O(force=true), no change otherwise.
  idempotent:
    description: >-
      Imports happen once; when the volume exists and O(checksum) matches its content,
      nothing is downloaded.
options:
  pool:
    description: Name of the storage pool (it must be running).
    type: str
    required: true
  name:
    description: Name of the volume in the pool (the file name in directory pools).
    type: str
    required: true
  state:
    description: Whether the volume should exist.
    type: str
    choices: [present, absent]
    default: present
  capacity:
    description:
      - The size the guest sees, as bytes or with a unit (V(10GiB), V(512M), V(1048576)).
        Rounded up to a multiple of 512 bytes (of 4 MiB in V(logical) pools).
      - Required to create an empty volume. For an overlay it defaults to the backing
        image's size, for a clone to the source's size.
      - For an existing volume, a bigger value grows it; a smaller one fails unless
        O(allow_shrink=true).
      - Not allowed with O(source_path) or O(source_url) (see O(checksum)).
    type: raw
  format:
    description:
      - Volume format. Defaults to V(qcow2) with O(backing), else V(raw).
      - For imports, the format the image must have (libvirt probes it after the upload);
        the import fails and is removed when it differs.
      - Ignored in V(logical) and V(rbd) pools (always raw).
    type: str
    choices: [raw, qcow2]
  preallocation:
    description:
      - V(off) - a sparse volume.
      - V(metadata) - V(qcow2) only, preallocate the qcow2 metadata.
      - V(falloc) - allocate all of O(capacity) up front (V(raw) - fallocate; V(qcow2) -
        C(preallocation=falloc)). Such a volume must fit the pool; growing allocates too.
    type: str
    choices: ['off', metadata, falloc]
    default: 'off'
  allow_overcommit:
    description:
      - Allow a sparse volume whose capacity exceeds the pool's available space.
      - Data written by the import or clone itself must still fit.
    type: bool
    default: false
  backing:
    description: Create a V(qcow2) overlay on this backing image (only when creating the volume).
    type: dict
    suboptions:
      volume:
        description: Name of the backing volume.
        type: str
      pool:
        description: Pool of O(backing.volume); defaults to O(pool).
        type: str
      path:
        description: Path of the backing image (a volume of any running pool).
        type: str
      format:
        description: Format of the backing image; defaults to what libvirt reports for it.
        type: str
        choices: [raw, qcow2]
  clone_from:
    description: Create the volume as a copy of another volume (only when creating it).
    type: dict
    suboptions:
      volume:
        description: Name of the volume to copy.
        type: str
        required: true
      pool:
        description: Its pool; defaults to O(pool).
        type: str
  source_path:
    description:
      - Import this file of the managed host into a new volume (streamed through libvirt,
        so the pool may be on another host).
      - A gzip, bzip2 or xz file is decompressed on the way (see O(source_url)).
    type: path
  source_url:
    description:
      - Download this URL on the managed host (to a temporary file) and import it into a
        new volume. V(http), V(https) and V(ftp) URLs.
      - A gzip, bzip2 or xz file (known by its magic bytes, not by its name) is decompressed
        while it is downloaded. Into a new volume of a V(dir), V(fs) or V(netfs) pool it is
        streamed straight into the volume, with no temporary copy, and blocks of zeros
        (64 KiB) are left as holes (a sparse volume, unless O(preallocation=falloc)); the
        decompressed size is known only at the end, so the upload stops and the volume is
        deleted as soon as it would write more than the pool had available. Into V(logical)
        and V(rbd) pools (whose volumes need their size up front), and when replacing a
        volume (O(force=true)), it is decompressed into a temporary file first.
    type: str
  checksum:
    description:
      - V(ALGORITHM:HEXDIGEST) of the file to import, for example V(sha256:9f86d0...); or
        V(url:URL) of a checksum file (C(SHA512SUMS), C(SHA256SUMS)...), from which the
        entry for the image's file name (the last part of O(source_url)'s path, or of
        O(source_path)) is taken. Lines as C(sha512sum) writes them (V(HASH  name),
        V(HASH *name)) and BSD style (V(SHA512 (name\) = HASH)) are understood; the algorithm
        is the one a BSD line names, else the one in the checksum file's name, else the one
        the digest's length implies. V(ALGORITHM:URL) (V(sha512:https://.../SHA512SUMS)) names
        it. A checksum file without an entry for the image fails before anything is
        downloaded. The checksum file is read on every run, in check mode too.
      - For a compressed image, the checksum of the compressed file as published. It is
        verified when the whole file has been read; the volume, streamed meanwhile, is
        deleted when it does not match.
      - A download or local file that does not match fails, and nothing is imported.
      - When the volume already exists, its content is read back through libvirt and hashed
        (this reads the whole volume); when it matches, nothing is downloaded. When it does
        not match, the module fails unless O(force=true), which replaces the volume.
      - A replacement is downloaded and uploaded (as V(NAME.virtops-new)) before the old
        volume is deleted, so a failed download or upload leaves the old volume as it was.
      - The digests of the volumes it imported or read are recorded on the host the module
        runs on (C(~/.cache/virtops-kvm/volume-digests.json)), each with the volume's size and
        modification and change times; check mode compares a record only while these are
        unchanged.
      - A volume imported from a compressed image holds other bytes than the checksum is
        of, so at the import the digest of the decompressed content is recorded too (beside
        the other digests), and an existing volume is compared with it. On a host without
        that record, a compressed O(source_path), or a O(source_url) whose name ends in
        V(.gz), V(.bz2) or V(.xz), is read again and decompressed (not stored) to learn it;
        check mode does not download it and warns instead.
      - The recorded checksum is the content itself, so a volume that guests write to (or
        that is grown) no longer matches. Import base images with a checksum and give guests
        overlays (O(backing)) on them.
      - Without O(checksum) an existing volume is left as it is.
    type: str
  force:
    description:
      - Go on even though data is destroyed. This destroys data.
      - Replace an existing volume whose content does not match O(checksum) (the old content
        is lost).
      - Delete (O(state=absent)) or replace a volume that is in use. A volume is in use when
        a guest on the connection (running or shut off, persistent or transient) has it as a
        disk - a file, block device, pool volume (V(type=volume)) or network disk - or as
        any layer of a disk's backing chain, or when another volume of its pool backs onto
        it. Those guests and volumes lose their data.
      - Without it, removing or replacing a volume in use fails before anything changes,
        naming each guest and disk (RV(users)).
    type: bool
    default: false
  url_timeout:
    description: Timeout in seconds of the HTTP request of O(source_url).
    type: int
    default: 60
  validate_certs:
    description: Validate the TLS certificate of an V(https) O(source_url).
    type: bool
    default: true
  allow_shrink:
    description: Allow O(capacity) smaller than the volume's (data past the new end is lost).
    type: bool
    default: false
  wipe:
    description: >-
      With O(state=absent), overwrite the volume's data (libvirt wipe, zeros) before deleting it.
    type: bool
    default: false
notes:
  - A volume in use (see O(force)) is neither deleted nor replaced without O(force=true).
  - The backing chain of a shut-off guest's disk is known from libvirt's volume XML, so a
    qcow2 file outside every storage pool is not followed down its chain.
seealso:
  - module: virtops.kvm.pool
  - module: virtops.kvm.volume_info
"""

EXAMPLES = r"""
- name: Import a cloud image once (never downloaded again while the checksum matches)
  virtops.kvm.volume:
    pool: images
    name: debian-12-base.qcow2
    format: qcow2
    source_url: https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    checksum: "sha512:{{ debian_image_sha512 }}"

- name: Import FreeBSD's xz-compressed image, its checksum picked from the published list
  virtops.kvm.volume:
    pool: images
    name: freebsd-14.1-base.qcow2
    format: qcow2
    source_url: "{{ freebsd_images }}/FreeBSD-14.1-RELEASE-amd64.qcow2.xz"
    checksum: "url:{{ freebsd_images }}/CHECKSUM.SHA512"
  vars:
    freebsd_images: https://download.freebsd.org/releases/VM-IMAGES/14.1-RELEASE/amd64/Latest

- name: A 20 GiB overlay for a guest on the base image
  virtops.kvm.volume:
    pool: images
    name: web1.qcow2
    backing:
      volume: debian-12-base.qcow2
    capacity: 20GiB

- name: An empty preallocated raw data disk
  virtops.kvm.volume:
    pool: images
    name: web1-data.raw
    format: raw
    capacity: 4GiB
    preallocation: falloc

- name: Grow it (live when a running guest uses it)
  virtops.kvm.volume:
    pool: images
    name: web1-data.raw
    capacity: 8GiB

- name: Delete a volume, overwriting its data first
  virtops.kvm.volume:
    pool: images
    name: old.qcow2
    state: absent
    wipe: true
"""

RETURN = r"""
volume:
  description: The volume after the run; V(null) when absent (or not yet created in check mode).
  returned: always
  type: dict
  contains:
    name:
      description: Name.
      type: str
      returned: success
    key:
      description: libvirt's unique key.
      type: str
      returned: success
    path:
      description: Path of the volume on the host.
      type: str
      returned: success
    type:
      description: V(file), V(block), V(network)...
      type: str
      returned: success
    format:
      description: Format (V(raw), V(qcow2)...).
      type: str
      returned: success
    capacity:
      description: Size the guest sees, in bytes.
      type: int
      returned: success
    allocation:
      description: Bytes allocated on the host.
      type: int
      returned: success
    physical:
      description: Size of the file (or device) on the host in bytes, when libvirt reports it.
      type: int
      returned: success
    backing_store:
      description: V(path) and V(format) of the backing image, or null.
      type: dict
      returned: success
    checksum:
      description: Checksum of the imported file (of the compressed file for a compressed
        image, as O(checksum) gives it).
      type: str
      returned: after an import
actions:
  description: What the module did (or would do), in order.
  returned: always
  type: list
  elements: str
  sample: [create]
checksum_verified:
  description:
    - Whether an existing volume's content matched O(checksum).
    - V(null) in check mode when no digest of its current content is recorded.
  returned: when O(checksum) is set and the volume existed
  type: bool
downloaded_bytes:
  description: Bytes downloaded from O(source_url) (compressed, as served).
  returned: when a download happened
  type: int
compression:
  description: The compression of the imported file (V(gzip), V(bzip2), V(xz)), or null.
  returned: when an import happened (in check mode, for a O(source_path))
  type: str
checksum_entry:
  description: The entry taken from the checksum file of O(checksum=url:URL).
  returned: when O(checksum) is a checksum file and O(state=present)
  type: dict
  contains:
    url:
      description: The checksum file.
      type: str
      returned: success
    name:
      description: The image's file name looked up in it.
      type: str
      returned: success
    checksum:
      description: V(ALGORITHM:HEXDIGEST) found.
      type: str
      returned: success
users:
  description:
    - Who used the volume when it was deleted or replaced with O(force=true); the same list
      comes with the failure without O(force).
  returned: when a volume in use was deleted or replaced
  type: list
  elements: dict
  contains:
    guest:
      description: Name of the guest, or null for another volume backing onto it.
      type: str
      returned: success
    disk:
      description: Target of the guest's disk (V(vda)).
      type: str
      returned: success
    how:
      description: >-
        V(direct) (the disk's source), V(backing chain) (a layer under the disk), or
        V(backing of volume NAME).
      type: str
      returned: success
    running:
      description: Whether the guest was running.
      type: bool
      returned: success
    volume:
      description: The volume used.
      type: str
      returned: success
resized_via:
  description: How a running guest's disk was resized.
  returned: when the volume was resized through a running guest
  type: str
  sample: blockResize of vdb in running guest web1
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._volume import VolumeManager  # noqa: E402

ARGUMENT_SPEC = {
    "pool": {"type": "str", "required": True},
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    "capacity": {"type": "raw"},
    "format": {"type": "str", "choices": ["raw", "qcow2"]},
    "preallocation": {
        "type": "str",
        "default": "off",
        "choices": ["off", "metadata", "falloc"],
    },
    "allow_overcommit": {"type": "bool", "default": False},
    "backing": {
        "type": "dict",
        "options": {
            "volume": {"type": "str"},
            "pool": {"type": "str"},
            "path": {"type": "str"},
            "format": {"type": "str", "choices": ["raw", "qcow2"]},
        },
        "mutually_exclusive": [["volume", "path"], ["pool", "path"]],
        "required_one_of": [["volume", "path"]],
    },
    "clone_from": {
        "type": "dict",
        "options": {
            "volume": {"type": "str", "required": True},
            "pool": {"type": "str"},
        },
    },
    "source_path": {"type": "path"},
    "source_url": {"type": "str"},
    "checksum": {"type": "str"},
    "force": {"type": "bool", "default": False},
    "url_timeout": {"type": "int", "default": 60},
    "validate_certs": {"type": "bool", "default": True},
    "allow_shrink": {"type": "bool", "default": False},
    "wipe": {"type": "bool", "default": False},
}


def main() -> None:
    module = KvmModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[["backing", "clone_from", "source_path", "source_url"]],
        supports_check_mode=True,
    )
    module.run(lambda m: VolumeManager(m).run())


if __name__ == "__main__":
    main()
