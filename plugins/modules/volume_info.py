#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: volume_info
short_description: Read the volumes of a libvirt storage pool, their capacities and usage
version_added: 0.1.0
description:
  - Returns one volume or all volumes of a running storage pool with format, capacity,
    allocation and backing image.
author:
  - virtops.kvm contributors (!UNKNOWN)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
options:
  pool:
    description: The storage pool (it must be running).
    type: str
    required: true
  name:
    description: >-
      The volume to read; all volumes of the pool when omitted. A missing volume gives an empty
      list.
    type: str
  refresh:
    description:
      - Refresh the pool first, so that files added outside libvirt are listed.
      - This needs a read-write connection; without it the module connects read-only.
    type: bool
    default: false
seealso:
  - module: virtops.kvm.volume
  - module: virtops.kvm.pool_info
"""

EXAMPLES = r"""
- name: All volumes of the images pool
  virtops.kvm.volume_info:
    pool: images
  register: vols

- name: Size of one volume
  virtops.kvm.volume_info:
    pool: images
    name: web1.qcow2
  register: web1

- name: Show it
  ansible.builtin.debug:
    msg: >-
      {{ web1.volumes[0].capacity | human_readable }},
      {{ web1.volumes[0].allocation | human_readable }} used
"""

RETURN = r"""
volumes:
  description: The volumes, sorted by name.
  returned: always
  type: list
  elements: dict
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
      description: Path on the host.
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
      description: Size of the file on the host in bytes, when libvirt reports it.
      type: int
      returned: success
    backing_store:
      description: V(path) and V(format) of the backing image, or null.
      type: dict
      returned: success
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._storage import volumes_info  # noqa: E402

ARGUMENT_SPEC = {
    "pool": {"type": "str", "required": True},
    "name": {"type": "str"},
    "refresh": {"type": "bool", "default": False},
}


def run(m: KvmModule) -> dict:
    p = m.params
    m.readonly = not p["refresh"]  # refreshing a pool needs a read-write connection
    volumes = volumes_info(m.conn, p["pool"], p["name"], refresh=p["refresh"])
    return {"changed": False, "volumes": volumes}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=True, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
