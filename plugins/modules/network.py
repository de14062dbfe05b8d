#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: network
short_description: Manage libvirt virtual networks
version_added: 1.0.0
description:
  - Create, update, start, stop and remove libvirt virtual networks in every forward mode
    (NAT, routed, isolated, bridged to an existing host bridge, open), with IPv4 and IPv6
    addresses, DHCP ranges, static DHCP hosts, DNS host entries, a domain name and an MTU.
  - An existing network converges to its spec. Static DHCP hosts, DHCP ranges and DNS host
    entries are changed on the running network and persisted, without a restart (for
    DHCP ranges libvirt restarts dnsmasq only; guest links stay up).
  - Every other change (mode, bridge, forward device, MTU, domain, addresses) is written to
    the persistent config and reported with RV(restart_required) and RV(restart_fields) as
    long as the running network differs from it. O(restart=true) restarts the network.
  - O(xml) merges a fragment (or a whole definition) over what the options produce, for
    what they do not model.
  - Only the managed settings are compared. What libvirt generates (uuid, the bridge name
    and MAC address when O(bridge) is not set, NAT port ranges) is kept and never reported
    as a change.
  - All input is validated before anything changes (addresses and prefixes, DHCP ranges
    inside their subnet and clear of the host address and of each other, static hosts
    inside their subnet and unique, the host bridge for O(mode=bridge) and O(forward_dev)
    exist, and no other network (or, for a local URI, no host route) uses the subnet or
    bridge). For a remote URI interfaces are checked through libvirt's interface API and
    the host's routes cannot be read; the module warns about what it could not check.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  check_mode:
    description: Can run in check mode and reports what would change, including the update
      calls it would make (RV(live_updates)) and the guests a restart would disconnect.
    details: With O(mode=bridge), a host bridge that does not exist yet is assumed to come
      from an earlier task of the play (with a warning); the real run fails if it is still
      missing.
options:
  name:
    description: Name of the network.
    type: str
    required: true
  state:
    description:
      - V(present) defines the network and leaves it running or stopped as it is (a new
        network stays stopped).
      - V(active) defines it and starts it.
      - V(inactive) defines it and stops it (running guests lose their link).
      - V(absent) stops and removes it.
    type: str
    choices: [present, active, inactive, absent]
    default: present
  mode:
    description:
      - V(nat) routes guests to the outside through the host with masquerading.
      - V(route) routes the guest subnet without NAT (the outside needs a route back).
      - V(isolated) connects guests with each other and the host only.
      - V(bridge) attaches guests to the existing host bridge O(bridge); libvirt serves no
        addresses, DHCP or DNS there.
      - V(open) is like V(route) but libvirt adds no firewall rules.
      - Defaults to V(nat) for a new network; an existing network keeps its mode.
    type: str
    choices: [nat, route, isolated, bridge, open]
  bridge:
    description:
      - For O(mode=bridge), the existing host bridge to attach guests to (required).
      - For the other modes, the name of the bridge libvirt creates. When not set libvirt
        picks one (C(virbrN)) and it is kept.
    type: str
  forward_dev:
    description:
      - For O(mode=nat) and O(mode=route), the host interface traffic leaves through.
        Must exist on the host. Set to an empty string to remove it.
    type: str
  mtu:
    description: MTU of the bridge libvirt creates. V(0) removes the setting.
    type: int
  domain:
    description: DNS domain of the network (served by dnsmasq). An empty string removes it.
    type: str
  addresses:
    description:
      - The host's addresses on the network, with their DHCP service. When set, this is the
        whole list (order does not matter); when not set, the addresses are left as they are.
      - At most one IPv4 and one IPv6 address may serve DHCP (a libvirt rule).
    type: list
    elements: dict
    suboptions:
      address:
        description: Address and prefix length, for example V(198.18.5.1/24) or V(fd00:5::1/64).
        type: str
        required: true
      dhcp_ranges:
        description: Address ranges DHCP hands out. Omitted means none.
        type: list
        elements: dict
        default: []
        suboptions:
          start:
            description: First address of the range.
            type: str
            required: true
          end:
            description: Last address of the range.
            type: str
            required: true
      dhcp_hosts:
        description:
          - Static DHCP entries. Omitted means none.
          - An IPv4 entry is matched by its O(addresses[].dhcp_hosts[].mac); an IPv6 entry
            by its O(addresses[].dhcp_hosts[].name) (libvirt matches IPv6 hosts by name).
        type: list
        elements: dict
        default: []
        suboptions:
          mac:
            description: MAC address of the guest interface (IPv4 entries).
            type: str
          ip:
            description: The address the guest gets.
            type: str
            required: true
          name:
            description: Host name given to the guest (required for IPv6 entries).
            type: str
  dns_hosts:
    description:
      - DNS host entries served by the network's dnsmasq. When set, this is the whole list.
    type: list
    elements: dict
    suboptions:
      ip:
        description: The address the names resolve to.
        type: str
        required: true
      hostnames:
        description: Names for O(dns_hosts[].ip).
        type: list
        elements: str
        required: true
  autostart:
    description:
      - Whether libvirt starts the network when the daemon starts. Not changed when not set.
    type: bool
  xml:
    description:
      - A fragment of network XML (one element, such as C(<dns>...</dns>) or
        C(<bandwidth>...</bandwidth>)) or a whole C(<network>) definition, merged over what
        the options produce, for what they do not model (DNS forwarders, TXT and SRV
        records, port groups, QoS, NAT address ranges, other forward modes...).
      - It adds and sets elements and attributes, and never removes any (a host name added
        to a DNS host is added beside the others).
      - It is compared with the definition element by element, never as text, and counts
        as unchanged when the definition already contains it. Write it as libvirt stores
        it (C(virsh net-dumpxml --inactive)) to stay idempotent.
      - What it sets that the options model (a DNS host, the MTU) is compared and
        reported under that setting, and DHCP and DNS host entries are still changed on
        the running network. Anything else it changes on a running network needs a
        restart, reported as V(xml) in RV(restart_fields).
      - It may not contradict an option that is set (O(mode), O(mtu), O(addresses)...) nor
        name another network; the module fails before any change when it does, or when it
        is not well-formed XML.
    type: str
  restart:
    description:
      - Restart a running network when changes need it (see RV(restart_fields)).
      - libvirt does not reconnect running guests to a restarted network; they are listed
        in RV(guests_disconnected) and get their link back when they are restarted (or their
        interface is updated). The module does not reconnect them.
    type: bool
    default: false
notes:
  - Another writer's change is not overwritten. Just before writing the network definition
    the module reads it again; when it changed since the task read it, the task is computed
    once more from the new definition, and when it changed again the task fails with
    nothing written. libvirt has no atomic compare-and-write, so only a change made in the
    instant between that read and the write can still be lost.
seealso:
  - module: virtops.kvm.network_info
"""

EXAMPLES = r"""
- name: NAT network with DHCP, a static host, a DNS entry and IPv6
  virtops.kvm.network:
    name: lab
    state: active
    mode: nat
    domain: lab.example
    addresses:
      - address: 198.18.5.1/24
        dhcp_ranges:
          - start: 198.18.5.100
            end: 198.18.5.199
        dhcp_hosts:
          - mac: "52:54:00:12:34:56"
            ip: 198.18.5.10
            name: web
      - address: fd00:5::1/64
    dns_hosts:
      - ip: 198.18.5.20
        hostnames: [db, db.lab.example]
    autostart: true

- name: Isolated network for guests that only talk to each other
  virtops.kvm.network:
    name: backend
    state: active
    mode: isolated
    addresses:
      - address: 198.19.7.1/24
        dhcp_ranges:
          - start: 198.19.7.50
            end: 198.19.7.99

- name: Guests on the existing host bridge br0
  virtops.kvm.network:
    name: lan
    state: active
    mode: bridge
    bridge: br0

- name: Change the MTU and restart the network now
  virtops.kvm.network:
    name: lab
    state: active
    mtu: 9000
    restart: true
  register: result

- name: DNS forwarders and a TXT record, which the options do not model
  virtops.kvm.network:
    name: lab
    state: active
    xml: |
      <dns>
        <forwarder domain="example.com" addr="198.18.5.53"/>
        <txt name="lab" value="managed by ansible"/>
      </dns>
    restart: true

- name: Remove a network
  virtops.kvm.network:
    name: backend
    state: absent
"""

RETURN = r"""
network:
  description:
    - The network after the run (as M(virtops.kvm.network_info) returns it), or V(null)
      when removed. In check mode, the settings it would have.
  returned: always
  type: dict
  sample:
    name: lab
    state: active
    autostart: true
    mode: nat
    bridge: virbr3
    addresses:
      - address: 198.18.5.1/24
        family: ipv4
        dhcp_ranges: [{start: 198.18.5.100, end: 198.18.5.199}]
        dhcp_hosts: [{mac: "52:54:00:12:34:56", ip: 198.18.5.10, name: web}]
restart_required:
  description: True when the running network still differs from its config in settings
    that need a restart (the run did not restart it).
  returned: success
  type: bool
restart_fields:
  description: The settings that need a restart to take effect on the running network.
  returned: success
  type: list
  elements: str
  sample: [mtu, addresses, xml]
restarted:
  description: Whether the network was (or in check mode would be) restarted.
  returned: success
  type: bool
live_updates:
  description: The update calls made on the running network (libvirt's C(virNetworkUpdate)).
  returned: success
  type: list
  elements: dict
  sample:
    - command: add
      section: ip-dhcp-host
      parent_index: 0
      xml: <host mac="52:54:00:12:34:57" name="app" ip="198.18.5.11"/>
attached_guests:
  description: Running guests attached to the network, when a restart is needed or done.
  returned: success
  type: list
  elements: dict
  sample: [{name: web, mac: "52:54:00:12:34:56", tap: vnet3}]
guests_disconnected:
  description: Running guests that lost (or would lose) their link because this run
    stopped, restarted or removed the network.
  returned: success
  type: list
  elements: dict
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._network import NetworkManager  # noqa: E402

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {
        "type": "str",
        "default": "present",
        "choices": ["present", "active", "inactive", "absent"],
    },
    "mode": {"type": "str", "choices": ["nat", "route", "isolated", "bridge", "open"]},
    "bridge": {"type": "str"},
    "forward_dev": {"type": "str"},
    "mtu": {"type": "int"},
    "domain": {"type": "str"},
    "addresses": {
        "type": "list",
        "elements": "dict",
        "options": {
            "address": {"type": "str", "required": True},
            "dhcp_ranges": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "start": {"type": "str", "required": True},
                    "end": {"type": "str", "required": True},
                },
            },
            "dhcp_hosts": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "mac": {"type": "str"},
                    "ip": {"type": "str", "required": True},
                    "name": {"type": "str"},
                },
            },
        },
    },
    "dns_hosts": {
        "type": "list",
        "elements": "dict",
        "options": {
            "ip": {"type": "str", "required": True},
            "hostnames": {"type": "list", "elements": "str", "required": True},
        },
    },
    "autostart": {"type": "bool"},
    "xml": {"type": "str"},
    "restart": {"type": "bool", "default": False},
}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.run(
        lambda m: NetworkManager(m.conn, m.params, check_mode=m.check_mode, warn=m.warn).run()
    )


if __name__ == "__main__":
    main()
