#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: image
short_description: Build a cloud-init-ready Debian image with debootstrap, cached by recipe
version_added: 0.1.0
description:
  - Builds a Debian guest image on the host where the task runs (a KVM host; use
    C(delegate_to) to build elsewhere) from a Debian archive with C(debootstrap), with no
    image to download and no loop device or mount - C(mkfs.ext4 -d) writes the file system.
  - The image has C(systemd), C(openssh-server), C(python3), C(cloud-init) (NoCloud data source
    only, for seed ISOs such as the ones the C(virtops.kvm.guest) role makes), C(ifupdown) with
    DHCP, C(qemu-guest-agent), C(sudo) and Debian's kernel. It has no boot loader - the kernel
    and initrd are copied beside the disk for direct kernel boot with RV(cmdline); RV(image)
    is a ready C(guest_list[].image) of the C(virtops.kvm.guest)
    role.
  - An image lives in O(cache_dir)C(/NAME-HASH), where C(HASH) is a SHA-256 of its recipe
    (suite, mirror, packages, files and scripts written into it, size, format, SELinux). The
    same options find the image already built and change nothing; other options build
    another one beside it. Old images are never removed by this module (guests may use one
    as their backing file).
  - A build takes a few minutes (about 3 for the default image on 2 cores, more with
    O(selinux) or O(extra_packages)). It happens in a temporary directory renamed into place
    when complete, under a lock - a failed or interrupted build leaves no image behind, and
    runs at the same time on one host build once.
author:
  - virtops.kvm contributors (!UNKNOWN)
attributes:
  check_mode:
    description: Says whether the image would be built, with its paths; builds nothing.
    support: full
  diff_mode:
    description: Returns no diff.
    support: none
  idempotent:
    description: The same options find the image built by the first run.
    support: full
options:
  name:
    description:
      - First part of the image's directory name, C(NAME-HASH); it is not part of the recipe.
      - V(debian) by default, V(debian_selinux) with O(selinux=true).
    type: str
  suite:
    description: The Debian release to install, a suite or code name.
    type: str
    default: bookworm
  mirror:
    description:
      - The Debian archive to install from, also written into the image's
        C(/etc/apt/sources.list). A local mirror or cache (such as C(apt-cacher-ng)) saves
        most of a build's time.
    type: str
    default: http://deb.debian.org/debian
  extra_packages:
    description:
      - More Debian packages to install (with C(apt-get) in the new system, after
        C(debootstrap)), for example what the guests' roles would otherwise install at
        every provisioning.
    type: list
    elements: str
    default: []
  size:
    description:
      - Size of the image's root file system, and the virtual size of its disk, such as
        V(6GiB) or V(10G) (binary units). At least V(1GiB), in whole MiB.
      - Guests made from the image can have bigger disks (the C(virtops.kvm.guest) role's
        C(disk_size)); their file system then grows on first boot only if cloud-init's
        C(growpart) can do it.
    type: str
    default: 6GiB
  format:
    description: Format of the disk file.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  selinux:
    description:
      - Install Debian's SELinux policy (C(selinux-policy-default)) with its tools, label every
        file at build time, and boot enforcing (RV(cmdline) has
        C(security=selinux selinux=1 enforcing=1)).
      - Cloud-init works enforcing (the image carries a one-rule policy module for mounting
        its seed).
    type: bool
    default: false
  cache_dir:
    description:
      - The directory of the images, created when missing. QEMU (the C(libvirt-qemu) user)
        must be able to reach it to boot guests from its files.
    type: path
    default: /var/cache/virtops-kvm/images
requirements:
  - root on the host (C(debootstrap) and C(chroot)); use C(become)
  - the Debian packages C(debootstrap), C(e2fsprogs) 1.43 or later (C(mkfs.ext4 -d)) and
    C(qemu-utils) (for O(format=qcow2)) on the host
  - access to the Debian archive at O(mirror)
notes:
  - Runs on Debian and its derivatives (C(debootstrap)); builds for the host's CPU
    architecture.
  - Every file of an image is readable by all local users of the host (QEMU reads it as the
    C(libvirt-qemu) user), and the image holds the SSH host keys C(openssh-server) made at
    build time, which every guest made from it shares unless its seed gives it its own (the
    C(virtops.kvm.guest) role gives each new cloud-init guest its own ed25519 key). The
    image has no passwords and no authorized keys - cloud-init adds them from the seed.
  - Not in the action group C(virtops.kvm.kvm) - it does not connect to libvirt and takes
    none of the connection options the group's C(module_defaults) set.
seealso:
  - module: virtops.kvm.volume
  - module: virtops.kvm.domain
"""

EXAMPLES = r"""
- name: Build (or find) a Debian 12 image on the KVM host
  virtops.kvm.image:
  become: true
  register: debian

- name: Two guests from it with the guest role (direct kernel boot, cloud-init)
  ansible.builtin.include_role:
    name: virtops.kvm.guest
  vars:
    guest_list:
      - name: web-1
        image: "{{ debian.image }}"
      - name: web-2
        image: "{{ debian.image }}"

- name: A bigger image with nginx, from a local mirror, as a raw file
  virtops.kvm.image:
    name: web
    mirror: http://apt.example.com/debian
    extra_packages: [nginx]
    size: 10GiB
    format: raw
  become: true

- name: SELinux enforcing
  virtops.kvm.image:
    selinux: true
  become: true
"""

RETURN = r"""
name:
  description: First part of the directory name.
  returned: always
  type: str
  sample: debian
recipe_hash:
  description: The recipe's hash, the directory name's last part.
  returned: always
  type: str
  sample: 1bd9dcf0ef1b
dir:
  description: The image's directory (in check mode, where it would be).
  returned: always
  type: str
  sample: /var/cache/virtops-kvm/images/debian-1bd9dcf0ef1b
disk:
  description: The disk file. Use it as a base (backing file) of guests' disks; a guest that
    boots it directly writes into the cached image.
  returned: always
  type: str
  sample: /var/cache/virtops-kvm/images/debian-1bd9dcf0ef1b/disk.qcow2
format:
  description: Format of RV(disk).
  returned: always
  type: str
  sample: qcow2
kernel:
  description: The image's kernel, for direct kernel boot.
  returned: always
  type: str
  sample: /var/cache/virtops-kvm/images/debian-1bd9dcf0ef1b/vmlinuz
initrd:
  description: The image's initrd.
  returned: always
  type: str
  sample: /var/cache/virtops-kvm/images/debian-1bd9dcf0ef1b/initrd.img
cmdline:
  description: The kernel command line the image boots with (root on the first virtio disk).
  returned: always
  type: str
  sample: root=/dev/vda rw console=ttyS0 net.ifnames=0
image:
  description:
    - RV(disk), RV(format), RV(kernel), RV(initrd) and RV(cmdline) as the C(image) of a
      C(virtops.kvm.guest) role's guest (C(path), C(format), C(kernel), C(initrd),
      C(cmdline)).
  returned: always
  type: dict
  sample:
    path: /var/cache/virtops-kvm/images/debian-1bd9dcf0ef1b/disk.qcow2
    format: qcow2
    kernel: /var/cache/virtops-kvm/images/debian-1bd9dcf0ef1b/vmlinuz
    initrd: /var/cache/virtops-kvm/images/debian-1bd9dcf0ef1b/initrd.img
    cmdline: root=/dev/vda rw console=ttyS0 net.ifnames=0
build_seconds:
  description: How long this run's build took.
  returned: when this run built the image
  type: float
  sample: 187.4
"""

from pathlib import Path  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._image import (  # noqa: E402
    DEFAULT_CACHE,
    DEFAULT_MIRROR,
    DEFAULT_SUITE,
    ensure_image,
    image_spec,
)

ARGUMENT_SPEC = {
    "name": {"type": "str"},
    "suite": {"type": "str", "default": DEFAULT_SUITE},
    "mirror": {"type": "str", "default": DEFAULT_MIRROR},
    "extra_packages": {"type": "list", "elements": "str", "default": []},
    "size": {"type": "str", "default": "6GiB"},
    "format": {"type": "str", "choices": ["qcow2", "raw"], "default": "qcow2"},
    "selinux": {"type": "bool", "default": False},
    "cache_dir": {"type": "path", "default": DEFAULT_CACHE},
}


def run(module: KvmModule) -> dict:
    params = module.params
    spec = image_spec(
        name=params["name"],
        suite=params["suite"],
        mirror=params["mirror"],
        extra_packages=params["extra_packages"],
        size=params["size"],
        format=params["format"],
        selinux=params["selinux"],
    )
    return ensure_image(spec, Path(params["cache_dir"]), check_mode=module.check_mode)


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, connection=False, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
