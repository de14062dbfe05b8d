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
  - Every graphics (VNC, SPICE) and serial or console device is listed in
    RV(guests[].consoles) with the port and listen address to connect to. For a running guest
    they come from its live definition, so an automatic port is the one QEMU listens on.
  - Disk and network I/O counters come from the same bulk statistics call.
  - With O(guest_info=true), what the QEMU guest agent reports about the running guest
    (RV(guests[].guest_agent)).
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
  guest_info:
    description:
      - Ask the QEMU guest agent of each running guest what it knows (one
        C(virDomainGetGuestInfo) call per guest) - OS, hostname, time zone, file systems with
        their usage, logged-in users, network interfaces - into RV(guests[].guest_agent).
      - A guest whose agent does not answer (no agent channel, agent not running in the guest,
        guest not running) gets C(answering=false) and the reason; this never fails the
        listing.
      - The guest needs the agent channel (O(virtops.kvm.domain#module:guest_agent=true)) and
        the C(qemu-guest-agent) service running inside it.
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

- name: What the guest agent of web1 reports
  virtops.kvm.domain_info:
    name: web1
    guest_info: true
  register: web1_agent

- name: Its OS, or why the agent does not answer
  ansible.builtin.debug:
    msg: >-
      {{ (agent.os.pretty_name ~ ' on ' ~ agent.hostname) if agent.answering else agent.reason }}
  vars:
    agent: "{{ web1_agent.guests[0].guest_agent }}"
  when: web1_agent.guests | length == 1

- name: Where to connect a VNC viewer to each running guest
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ vnc.listen }}:{{ vnc.port }}"
  loop: "{{ web.guests }}"
  loop_control:
    label: "{{ item.name }}"
  vars:
    vnc: "{{ item.consoles | selectattr('type', 'equalto', 'vnc') | first | default({}) }}"
  when: vnc.port is defined
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
      description:
        - Balloon size, vCPUs and CPU time from the bulk statistics.
        - C(uptime_seconds) - seconds since the guest's QEMU process started, read from
          C(/proc) when the hypervisor is the machine the module runs on (a local URI such as
          V(qemu:///system)); null for a guest that does not run or a remote hypervisor
          (libvirt does not say when a guest started).
        - C(disks) - per disk C(name) (target), C(path), C(read_bytes), C(read_requests),
          C(read_time_ns), C(write_bytes), C(write_requests), C(write_time_ns),
          C(flush_requests), C(flush_time_ns), C(allocation), C(capacity), C(physical)
          (counters since the guest started; null while it does not run, when libvirt still
          lists its local disks with their sizes).
        - C(interfaces) - per NIC C(name) (host device), C(rx_bytes), C(rx_packets),
          C(rx_errors), C(rx_drops), C(tx_bytes), C(tx_packets), C(tx_errors), C(tx_drops)
          (empty while the guest does not run).
      type: dict
    consoles:
      description:
        - Graphics devices first, then serial and console devices.
        - Graphics - C(device=graphics), C(type) (V(vnc), V(spice)), C(listen) (address),
          C(port) (the live port of a running guest, automatic ones included; null while it
          does not run with an automatic port), C(autoport), C(socket) (a UNIX socket listen),
          C(tls_port) (SPICE).
        - Serial and console devices - C(device) (V(serial), V(console)), C(type) (V(pty),
          V(file), V(unix), V(tcp)...), C(target_type), C(target_port), C(path) (the
          C(/dev/pts/N) of a running pty, a file or socket path), C(listen) and C(port) (TCP).
      type: list
      elements: dict
    guest_agent:
      description:
        - What the guest agent reports. C(answering) - whether it answered; when not,
          C(reason) says why (for example V(the guest is not running), no agent channel, or
          libvirt's "agent not answering" message).
        - When it answers - C(os) (C(id), C(name), C(pretty_name), C(version), C(version_id),
          C(kernel_release), C(kernel_version), C(machine)...), C(hostname), C(timezone)
          (C(name), C(offset) in seconds), C(filesystems) (C(mountpoint), C(name), C(fstype),
          C(total_bytes), C(used_bytes), C(used_percent), C(disks)), C(users) (C(name),
          C(domain), C(login_time_ms)), C(interfaces) (C(name), C(mac), C(addresses) with
          C(type), C(address), C(prefix)), C(disks) (the guest's block devices - C(name),
          C(alias) of the guest disk, C(partition)).
      type: dict
      returned: when O(guest_info=true)
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
    "guest_info": {"type": "bool", "default": False},
}


def run(m: KvmModule) -> dict:
    p = m.params
    info = DomainInfo(
        m.conn,
        include_xml=p["include_xml"],
        ip_sources=p["ip_sources"],
        guest_info=p["guest_info"],
        io_stats=True,
    )
    return {"changed": False, "guests": info.collect(p["name"], p["states"], p["tags"])}


def main() -> None:
    # Read-write: libvirt answers guest agent queries (ip_sources=agent, guest_info) only on
    # such a connection.
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=False, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
