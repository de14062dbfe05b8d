#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: host_info
short_description: Read what a libvirt host offers, and whether KVM really works on it
version_added: 1.0.0
description:
  - Returns versions, CPU and NUMA topology, memory, hugepage pools, machine types,
    firmware (UEFI, secure boot), cache allocation (resctrl), storage pools, networks, the
    number of guests by state and how busy the CPUs are (RV(host.load)) of a libvirt host.
  - Judges whether KVM guests can really run (RV(host.kvm_usable)) and recommends the domain
    type to use (RV(host.recommended_virt_type)). libvirt offers domain type C(kvm) whenever
    C(/dev/kvm) exists, but without hardware virtualization (vmx/svm CPU flag) KVM guests
    hang, so the CPU flags are checked as well. For a local connection (a URI without a
    host part, such as V(qemu:///system)) C(/proc/cpuinfo) and C(/dev/kvm) are checked too.
  - Changes nothing.
author:
  - virtops.kvm contributors (!UNKNOWN)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
options:
  gather:
    description:
      - The sections of RV(host) to return. V(all) returns every section.
      - RV(host.hostname), RV(host.uuid), RV(host.uri), RV(host.local) and
        RV(host.unavailable) are always returned.
      - V(kvm) returns RV(host.kvm_usable), RV(host.kvm_reasons), RV(host.kvm_checks) and
        RV(host.recommended_virt_type); the other names return the key of the same name.
    type: list
    elements: str
    choices:
      - all
      - versions
      - cpu
      - memory
      - hugepages
      - kvm
      - machines
      - firmware
      - resctrl
      - storage_pools
      - networks
      - guests
      - load
    default: [all]
notes:
  - Guests are counted from one bulk call (libvirt's domain statistics, state group), not
    one call per guest.
  - Sections that the connection's driver does not provide (for example domain capabilities
    on the C(test) driver) are left out and listed in RV(host.unavailable).
  - Opens a read-write connection, because libvirt refuses domain capabilities (machine
    types, firmware) on read-only connections.
seealso:
  - name: libvirt capabilities
    description: The host and guest capabilities XML this module reads.
    link: https://libvirt.org/formatcaps.html
  - name: libvirt domain capabilities
    description: Machine types and firmware per domain type.
    link: https://libvirt.org/formatdomaincaps.html
"""

EXAMPLES = r"""
- name: Everything about the local hypervisor
  virtops.kvm.host_info:
  register: kvm_host

- name: Use the domain type that works on this host
  ansible.builtin.debug:
    msg: "Guests here should use domain type {{ kvm_host.host.recommended_virt_type }}"

- name: Only the KVM verdict and the guest counts of a remote host
  virtops.kvm.host_info:
    uri: qemu+ssh://root@kvm1.example.com/system
    gather:
      - kvm
      - guests
  register: remote

- name: Stop when KVM is required but not usable
  ansible.builtin.assert:
    that: remote.host.kvm_usable
    fail_msg: "KVM is not usable: {{ remote.host.kvm_reasons | join('; ') }}"
"""

RETURN = r"""
host:
  description: What the host offers. Keys of sections not asked for in O(gather) are absent.
  returned: always
  type: dict
  contains:
    hostname:
      description: The host name libvirt reports.
      type: str
      sample: kvm1
    uuid:
      description: The host UUID (capabilities C(host/uuid)); null if libvirt gives none.
      type: str
      sample: 66f25390-d33d-4cd0-a7ae-5f1a85ff4545
    uri:
      description: The canonical URI of the connection.
      type: str
      sample: qemu:///system
    local:
      description: Whether the hypervisor runs on the machine the module runs on, so that
        C(/proc), C(/dev) and C(/sys) facts were read as well.
      type: bool
    unavailable:
      description: Sections left out because the driver cannot provide them, with the reason.
      type: dict
      sample: {machines: "cannot read the domain capabilities of qemu i686 guests: ..."}
    versions:
      description: Versions, as dotted strings.
      returned: when O(gather) includes V(versions)
      type: dict
      contains:
        libvirt_library:
          description: The libvirt library version on the machine running the module.
          type: str
          sample: 9.0.0
        libvirt_daemon:
          description: The libvirt version of the daemon (C(getLibVersion)).
          type: str
          sample: 9.0.0
        hypervisor_type:
          description: The driver's hypervisor name, V(QEMU) for QEMU/KVM hosts.
          type: str
          sample: QEMU
        hypervisor:
          description: The hypervisor version (C(getVersion)); the QEMU version on QEMU hosts.
          type: str
          sample: 7.2.22
    cpu:
      description: The host CPU.
      returned: when O(gather) includes V(cpu)
      type: dict
      contains:
        arch:
          description: CPU architecture.
          type: str
          sample: x86_64
        model:
          description: The CPU model libvirt names (null if none).
          type: str
          sample: EPYC-Rome
        vendor:
          description: The CPU vendor (null if none).
          type: str
          sample: AMD
        count:
          description: Number of active logical CPUs.
          type: int
        mhz:
          description: CPU frequency in MHz.
          type: int
        topology:
          description: C(sockets), C(dies), C(cores) (per socket) and C(threads) (per core).
          type: dict
          sample: {sockets: 1, dies: 1, cores: 2, threads: 1}
        numa_cells:
          description: NUMA cells, each with C(id), C(cpus) (CPU ids), C(memory_bytes) and
            C(free_memory_bytes).
          type: list
          elements: dict
    memory:
      description: Memory of the whole host, in bytes.
      returned: when O(gather) includes V(memory)
      type: dict
      contains:
        total_bytes:
          description: Total memory.
          type: int
        free_bytes:
          description: Free memory.
          type: int
        buffers_bytes:
          description: Buffers (null if the driver does not say).
          type: int
        cached_bytes:
          description: Page cache (null if the driver does not say).
          type: int
    hugepages:
      description: Hugepage pools, one per page size larger than the base page.
      returned: when O(gather) includes V(hugepages)
      type: list
      elements: dict
      contains:
        size_kib:
          description: Page size in KiB.
          type: int
          sample: 2048
        size_bytes:
          description: Page size in bytes.
          type: int
        total:
          description: Pages in the pool (null if unknown).
          type: int
        free:
          description: Free pages in the pool (null if unknown).
          type: int
        cells:
          description: The same per NUMA cell, each with C(id), C(total) and C(free).
          type: list
          elements: dict
        source:
          description: V(sysfs) (read on a local host) or V(libvirt) (capabilities and
            free pages).
          type: str
    kvm_usable:
      description: Whether KVM guests can run on this host.
      returned: when O(gather) includes V(kvm)
      type: bool
    kvm_reasons:
      description: Why KVM is usable, or why not (the failed checks only).
      returned: when O(gather) includes V(kvm)
      type: list
      elements: str
      sample:
        - "the host CPU in libvirt's capabilities has no vmx/svm flag (no hardware
          virtualization): KVM guests would hang although /dev/kvm exists"
    kvm_checks:
      description:
        - Each check's outcome, true (passed), false (failed) or null (not applicable).
        - C(capabilities_kvm_domain) libvirt offers domain type C(kvm) for the host arch;
          C(cpu_virt_flag_capabilities) the host CPU in the capabilities has vmx or svm
          (x86 only); C(cpu_virt_flag_cpuinfo) C(/proc/cpuinfo) has vmx or svm (local x86
          hosts); C(dev_kvm) C(/dev/kvm) is a character device (local hosts).
      returned: when O(gather) includes V(kvm)
      type: dict
    recommended_virt_type:
      description: The domain type to use for guests, V(kvm) when KVM is usable, else V(qemu).
      returned: when O(gather) includes V(kvm)
      type: str
      sample: qemu
    machines:
      description: Machine types for the host arch and the recommended domain type.
      returned: when O(gather) includes V(machines) and the driver has domain capabilities
      type: dict
      contains:
        arch:
          description: The architecture.
          type: str
        domain_type:
          description: The domain type (RV(host.recommended_virt_type)).
          type: str
        emulator:
          description: The emulator binary.
          type: str
          sample: /usr/bin/qemu-system-x86_64
        default:
          description: The machine type libvirt uses when a guest names none.
          type: str
          sample: pc-i440fx-7.2
        max_vcpus:
          description: Most vCPUs a guest of the default machine type can have.
          type: int
        types:
          description: Machine types, each with C(name), C(canonical) (the versioned type
            an alias such as V(q35) stands for), C(max_cpus) and C(deprecated).
          type: list
          elements: dict
    firmware:
      description: Firmware for the recommended domain type.
      returned: when O(gather) includes V(firmware) and the driver has domain capabilities
      type: dict
      contains:
        uefi:
          description: Whether UEFI firmware (OVMF on x86) is available.
          type: bool
        secure_boot:
          description: Whether a secure boot capable UEFI firmware is available.
          type: bool
        secure_boot_machines:
          description: The machine types that support secure boot (it needs SMM, V(q35) on x86).
          type: list
          elements: str
        firmware_types:
          description: Firmware auto-selection values libvirt offers, such as V(efi).
          type: list
          elements: str
        loaders:
          description: Firmware loader images found.
          type: list
          elements: str
        machines_checked:
          description: The machine types asked about.
          type: list
          elements: str
    resctrl:
      description: Cache allocation (resctrl) for C(cachetune).
      returned: when O(gather) includes V(resctrl)
      type: dict
      contains:
        available:
          description: Whether libvirt can allocate cache (a cache bank has controls).
          type: bool
        reason:
          description: Why it is, or is not, available.
          type: str
        mounted:
          description: Whether C(/sys/fs/resctrl) is mounted (null for remote hosts).
          type: bool
        memory_bandwidth:
          description: Whether libvirt reports memory bandwidth allocation.
          type: bool
        cache_banks:
          description: Cache banks, each with C(id), C(level), C(type), C(size_bytes),
            C(cpus) and C(allocation).
          type: list
          elements: dict
    storage_pools:
      description: Storage pools, sorted by name, each with C(name), C(uuid), C(type),
        C(state), C(active), C(autostart), C(persistent), C(capacity_bytes),
        C(allocation_bytes), C(available_bytes) and C(path).
      returned: when O(gather) includes V(storage_pools)
      type: list
      elements: dict
    networks:
      description: Networks, sorted by name, each with C(name), C(uuid), C(state), C(active),
        C(autostart), C(persistent), C(bridge) and C(forward_mode).
      returned: when O(gather) includes V(networks)
      type: list
      elements: dict
    guests:
      description: Guests counted by state.
      returned: when O(gather) includes V(guests)
      type: dict
      contains:
        total:
          description: All guests, defined and transient.
          type: int
        active:
          description: Guests that run (any state but shut off).
          type: int
        inactive:
          description: Guests that are shut off.
          type: int
        by_state:
          description: Count per state, V(nostate), V(running), V(blocked), V(paused),
            V(shutdown), V(shutoff), V(crashed), V(pmsuspended).
          type: dict
          sample: {running: 2, shutoff: 1, paused: 0}
    load:
      description:
        - How busy the host's CPUs are - libvirt's CPU times of all host CPUs
          (C(virNodeGetCPUStats)) read twice, half a second apart, as percentages of that
          half second. Percentages are null when the driver's times did not move (the
          C(test) driver).
      returned: when O(gather) includes V(load)
      type: dict
      contains:
        sample_seconds:
          description: Seconds between the two readings.
          type: float
          sample: 0.5
        busy_percent:
          description: Percent of the CPU time not idle (100 minus RV(host.load.idle_percent)).
          type: float
          sample: 12.5
        user_percent:
          description: Percent spent in user space (guests' vCPUs count here).
          type: float
        kernel_percent:
          description: Percent spent in the kernel.
          type: float
        iowait_percent:
          description: Percent idle waiting for I/O.
          type: float
        idle_percent:
          description: Percent idle.
          type: float
        loadavg:
          description: The 1, 5 and 15 minute load averages from C(/proc/loadavg) when the
            hypervisor is the machine the module runs on (RV(host.local)); null otherwise.
          type: list
          elements: float
          sample: [0.52, 0.41, 0.3]
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._host import (  # noqa: E402
    SECTIONS,
    host_summary,
)

ARGUMENT_SPEC = {
    "gather": {
        "type": "list",
        "elements": "str",
        "choices": ["all", *SECTIONS],
        "default": ["all"],
    }
}


def run(m: KvmModule) -> dict:
    return {"changed": False, "host": host_summary(m.conn, gather=m.params["gather"])}


def main() -> None:
    # Read-write: libvirt refuses domain capabilities on a read-only connection.
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=False, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
