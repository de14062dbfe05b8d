#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_info
short_description: Information about libvirt guests
version_added: 1.0.0
description:
  - Lists one guest or all guests, optionally filtered by run state and tags, with their
    state, a summary of their definition (the settings M(virtops.kvm.domain) manages),
    disks, network interfaces with MAC and IP addresses, snapshot count and statistics.
  - States and statistics of all guests come from one bulk call (C(getAllDomainStats));
    IP addresses come from the DHCP leases of libvirt networks (one call per network) and,
    for running guests with a connected guest agent channel, from the guest agent. An agent
    error is reported on that guest in RV(guests[].errors) and does not fail the listing.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
options:
  name:
    description: Only this guest. An unknown name gives an empty list.
    type: str
  states:
    description: Only guests in these run states.
    type: list
    elements: str
    choices: [running, paused, shutoff, crashed, pmsuspended, shutdown]
  tags:
    description: Only guests that have all these tags (see O(virtops.kvm.domain#module:tags)).
    type: list
    elements: str
  ip_sources:
    description: Where IP addresses come from.
    type: list
    elements: str
    choices: [lease, agent]
    default: [lease, agent]
  include_xml:
    description: Add each guest's definition (live for running guests) as RV(guests[].xml).
    type: bool
    default: false
seealso:
  - module: virtops.kvm.domain
"""

EXAMPLES = r"""
- name: All running guests tagged web
  virtops.kvm.domain_info:
    states: [running]
    tags: [web]
  register: web

- name: Their addresses
  ansible.builtin.debug:
    msg: "{{ web.guests | map(attribute='interfaces') | flatten
             | map(attribute='ip_addresses') | flatten }}"

- name: One guest with its XML
  virtops.kvm.domain_info:
    name: web1
    include_xml: true
  register: web1
"""

RETURN = r"""
guests:
  description: The guests, sorted by name.
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
      description: Run state.
      type: str
      sample: running
    active:
      description: Whether it runs (running, paused, suspended or shutting down).
      type: bool
    persistent:
      description: Whether it has a persistent definition.
      type: bool
    autostart:
      description: Whether libvirtd starts it.
      type: bool
    snapshot_count:
      description: Number of snapshots.
      type: int
    config:
      description: The managed settings of the definition (as M(virtops.kvm.domain) names
        them), for example C(memory), C(max_memory) (MiB), C(vcpus), C(machine),
        C(firmware), C(tags), C(tuning). C(graphics) has no C(password), console passwords
        are never read here.
      type: dict
    disks:
      description: Disks and CD-ROMs (target, device, bus, path or pool and volume, format...).
      type: list
      elements: dict
    interfaces:
      description: NICs with C(mac), C(type), C(source), C(model), C(target) (host device)
        and C(ip_addresses).
      type: list
      elements: dict
    stats:
      description: Balloon size, vCPUs and CPU time from the bulk statistics.
      type: dict
    errors:
      description: What could not be read for this guest (for example the guest agent).
      type: list
      elements: str
      returned: when something failed
    xml:
      description:
        - The definition. It never contains console passwords (libvirt's view without
          C(VIR_DOMAIN_XML_SECURE)).
      type: str
      returned: when O(include_xml=true)
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import (  # noqa: E402
    DomainInfo,
)

ARGUMENT_SPEC = {
    "name": {"type": "str"},
    "states": {
        "type": "list",
        "elements": "str",
        "choices": ["running", "paused", "shutoff", "crashed", "pmsuspended", "shutdown"],
    },
    "tags": {"type": "list", "elements": "str"},
    "ip_sources": {
        "type": "list",
        "elements": "str",
        "choices": ["lease", "agent"],
        "default": ["lease", "agent"],
    },
    "include_xml": {"type": "bool", "default": False},
}


def run(m: KvmModule) -> dict:
    p = m.params
    info = DomainInfo(m.conn, include_xml=p["include_xml"], ip_sources=p["ip_sources"])
    return {"changed": False, "guests": info.collect(p["name"], p["states"], p["tags"])}


def main() -> None:
    # Read-write: libvirt answers guest agent queries (ip_sources=agent) only on such a connection.
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=False, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
