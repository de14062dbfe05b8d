#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: pool_info
short_description: Read libvirt storage pools, their capacities and usage
version_added: 0.1.0
description:
  - Returns one storage pool or all of them, with state, settings and capacity,
    allocation and available bytes.
author:
  - virtops.kvm contributors (!UNKNOWN)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
options:
  name:
    description: The pool to read; all pools when omitted. A missing pool gives an empty list.
    type: str
  refresh:
    description:
      - Refresh running pools first, so that volumes added outside libvirt are counted.
      - This needs a read-write connection; without it the module connects read-only.
    type: bool
    default: false
seealso:
  - module: virtops.kvm.pool
  - module: virtops.kvm.volume_info
"""

EXAMPLES = r"""
- name: All pools
  virtops.kvm.pool_info:
  register: pools

- name: Free bytes of the images pool
  virtops.kvm.pool_info:
    name: images
    refresh: true
  register: images

- name: Show it
  ansible.builtin.debug:
    msg: "{{ images.pools[0].available | human_readable }} free"
"""

RETURN = r"""
pools:
  description: The pools, sorted by name.
  returned: always
  type: list
  elements: dict
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
      description: Source settings.
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
      description: Whether it is defined.
      type: bool
      returned: success
    capacity:
      description: Size in bytes (0 when inactive).
      type: int
      returned: success
      sample: 107374182400
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
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._storage import pools_info  # noqa: E402

ARGUMENT_SPEC = {
    "name": {"type": "str"},
    "refresh": {"type": "bool", "default": False},
}


def run(m: KvmModule) -> dict:
    p = m.params
    m.readonly = not p["refresh"]  # refreshing a pool needs a read-write connection
    return {"changed": False, "pools": pools_info(m.conn, p["name"], refresh=p["refresh"])}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=True, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
