#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: network_info
short_description: Read libvirt virtual networks, their addresses and DHCP leases
version_added: 1.0.0
description:
  - Returns one network or all networks of a libvirt host with their state, managed
    settings (the same as M(virtops.kvm.network) takes), current DHCP leases and the
    running guests attached to them.
  - Opens a read-only connection and changes nothing.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
options:
  name:
    description: Only this network. When not set, all networks.
    type: str
seealso:
  - module: virtops.kvm.network
"""

EXAMPLES = r"""
- name: All networks
  virtops.kvm.network_info:
  register: nets

- name: Leases of one network
  virtops.kvm.network_info:
    name: lab
  register: lab

- name: Show which address a guest got
  ansible.builtin.debug:
    msg: >-
      {{ lab.networks[0].leases | selectattr('mac', 'equalto', '52:54:00:12:34:56')
         | map(attribute='ip') | first }}
  when: lab.networks | length > 0 and lab.networks[0].leases | length > 0
"""

RETURN = r"""
networks:
  description: The networks, sorted by name. Empty when O(name) does not exist.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name.
      type: str
    uuid:
      description: UUID.
      type: str
    state:
      description: V(active) or V(inactive).
      type: str
    active:
      description: Whether it runs.
      type: bool
    persistent:
      description: Whether it has a persistent config (false for transient networks).
      type: bool
    autostart:
      description: Whether libvirt starts it with the daemon.
      type: bool
    mode:
      description: V(nat), V(route), V(isolated), V(bridge), V(open) (or another libvirt mode).
      type: str
    bridge:
      description: The bridge name.
      type: str
    forward_dev:
      description: The forward device, if set.
      type: str
    mtu:
      description: The MTU, if set.
      type: int
    domain:
      description: The DNS domain, if set.
      type: str
    addresses:
      description: The addresses, each with C(address), C(family), C(dhcp_ranges) and C(dhcp_hosts).
      type: list
      elements: dict
    dns_hosts:
      description: DNS host entries, each with C(ip) and C(hostnames).
      type: list
      elements: dict
    restart_pending:
      description: The running network differs from its config in settings that need a restart.
      type: bool
    pending_changes:
      description: Which settings differ between the running network and its config.
      type: list
      elements: str
    leases:
      description: Current DHCP leases (active networks), each with C(mac), C(ip), C(prefix),
        C(family), C(hostname), C(client_id), C(expiry_time) (seconds since the epoch) and
        C(interface).
      type: list
      elements: dict
    attached_guests:
      description: Running guests with an interface on the network, each with C(name),
        C(mac) and C(tap).
      type: list
      elements: dict
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._network import info  # noqa: E402

ARGUMENT_SPEC = {"name": {"type": "str"}}


def run(m: KvmModule) -> dict:
    return {"changed": False, "networks": info(m.conn, m.params["name"])}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=True, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
