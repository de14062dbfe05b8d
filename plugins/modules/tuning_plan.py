#!/usr/bin/python
# Copyright (c) virtops.kvm contributors (!UNKNOWN)
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: tuning_plan
short_description: Plan CPU pinning, NUMA, huge pages, cache and I/O limits for guests
version_added: 1.0.0
description:
  - Works out, from the host's topology (the same data as M(virtops.kvm.host_info) - NUMA
    cells and their CPUs, huge page pools, resctrl) and the guests' definitions, which host
    CPUs each guest in O(guests) gets, and returns it as options of M(virtops.kvm.domain)
    (RV(plan[].tuning), RV(plan[].tags), RV(plan[].disks)). It changes nothing; the role
    virtops.kvm.tuning applies the plan.
  - Host CPUs in O(host_reserved_cpus) are left to the host (and, by default, run the guests'
    emulator and I/O threads).
  - A V(dedicated) guest gets one host CPU per vCPU (up to its maximum vCPUs) that no other
    guest uses, and the tag O(dedicated_tag). A plan that needs CPUs that a guest outside
    the plan holds with that tag, or where two guests of the plan ask for the same CPUs, is
    refused before anything changes.
  - A V(shared) guest's vCPUs float over the shared pool - host CPUs neither reserved nor
    dedicated.
  - A dedicated guest keeps the CPUs it has while they stay valid, so the same input gives
    the same plan; new ones get the lowest free CPUs of the NUMA cell with the most free
    CPUs, and span cells only when no cell has enough.
  - Memory is bound to the NUMA cells of the guest's CPUs. Huge pages are checked against
    the free pages of those cells. Cache allocation needs resctrl on the host; without it
    the plan says so in RV(messages) and leaves it out, or fails with
    O(cachetune_required=true).
author:
  - virtops.kvm contributors (!UNKNOWN)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
attributes:
  idempotent:
    description: Changes nothing; the same host and input give the same plan.
options:
  guests:
    description: The guests to tune and what each gets.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Name of the guest.
        type: str
        required: true
      cpu_policy:
        description:
          - V(dedicated) - one host CPU per vCPU, for this guest alone.
          - V(shared) - vCPUs float over the shared pool.
        type: str
        choices: [dedicated, shared]
        default: dedicated
      cpus:
        description:
          - Host CPUs to use (cpuset like V(2-5)) instead of choosing them. A dedicated
            guest needs at least one per vCPU.
        type: str
      cell:
        description: Take the CPUs from this NUMA cell only.
        type: int
      numa:
        description: Bind the guest's memory to the NUMA cells of its CPUs.
        type: bool
        default: true
      numa_mode:
        description: The NUMA memory policy.
        type: str
        choices: [strict, interleave, preferred, restrictive]
        default: strict
      hugepages:
        description:
          - Back the guest's memory with huge pages (V(false) removes the backing; unset
            leaves it as it is). Checked against the free pages of the guest's cells.
        type: bool
      hugepage_size:
        description: Huge page size (V(2M), V(1G)); 2 MiB when the host has it.
        type: str
      iothreads:
        description: Number of I/O threads, pinned with the emulator threads.
        type: int
      cachetune:
        description: Cache allocation for the guest's vCPUs (needs resctrl on the host).
        type: dict
        suboptions:
          size:
            description: Size per cache (KiB, or with a unit).
            type: raw
            required: true
          level:
            description: Cache level.
            type: int
            default: 3
          type:
            description: Cache type.
            type: str
            choices: [both, code, data]
            default: both
      iotune:
        description:
          - I/O limits for the guest's disks (all of them, or O(guests[].iotune_disks)); the
            complete set - limits not given (or 0) are removed. Applied live on a running guest.
        type: dict
        suboptions:
          total_bytes_sec:
            description: Total bytes per second.
            type: int
          read_bytes_sec:
            description: Read bytes per second.
            type: int
          write_bytes_sec:
            description: Write bytes per second.
            type: int
          total_iops_sec:
            description: Total I/O operations per second.
            type: int
          read_iops_sec:
            description: Read I/O operations per second.
            type: int
          write_iops_sec:
            description: Write I/O operations per second.
            type: int
      iotune_disks:
        description: Targets (V(vda)...) of the disks that get O(guests[].iotune).
        type: list
        elements: str
  host_reserved_cpus:
    description: Host CPUs kept for the host (cpuset like V(0) or V(0-1,8-9)); V("") for none.
    type: str
    default: ""
  emulator_placement:
    description:
      - Where the guests' emulator and I/O threads run. V(reserved) - on
        O(host_reserved_cpus) (the default when it is set); V(shared) - on the shared pool
        (the default otherwise); V(vcpus) - on the guest's own vCPU CPUs.
    type: str
    choices: [reserved, shared, vcpus]
  dedicated_tag:
    description: The tag that marks guests holding dedicated CPUs.
    type: str
    default: cpu-dedicated
  cachetune_required:
    description: Fail when cache allocation is asked for and the host has no resctrl.
    type: bool
    default: false
notes:
  - Pinning, I/O thread pinning and I/O limits reach a running guest at once through
    M(virtops.kvm.domain); NUMA memory policy, huge pages, the number of I/O threads and
    cache allocation only at its next start.
seealso:
  - module: virtops.kvm.host_info
  - module: virtops.kvm.domain
"""

EXAMPLES = r"""
- name: Plan two dedicated guests and one shared, keeping CPU 0 for the host
  virtops.kvm.tuning_plan:
    host_reserved_cpus: "0"
    guests:
      - name: db1
        hugepages: true
        hugepage_size: 2M
        iotune:
          total_iops_sec: 2000
      - name: web1
      - name: batch1
        cpu_policy: shared
  register: tuning

- name: Apply it
  virtops.kvm.domain:
    name: "{{ item.name }}"
    tuning: "{{ item.tuning }}"
    tags: "{{ item.tags }}"
    disks: "{{ item.disks if item.disks is not none else omit }}"
  loop: "{{ tuning.plan }}"
  loop_control:
    label: "{{ item.name }} -> {{ item.cpus }}"
"""

RETURN = r"""
plan:
  description: What each guest gets, in the order of O(guests).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Name of the guest.
      type: str
    cpu_policy:
      description: V(dedicated) or V(shared).
      type: str
    vcpus:
      description: The guest's maximum vCPUs (all are pinned).
      type: int
    cpus:
      description: Host CPUs of its vCPUs.
      type: str
      sample: "1"
    cells:
      description: NUMA cells of those CPUs.
      type: list
      elements: int
    emulator_cpus:
      description: Host CPUs of its emulator and I/O threads.
      type: str
    tuning:
      description: The O(virtops.kvm.domain#module:tuning) option to apply.
      type: dict
      sample:
        vcpu_pins: [{vcpu: 0, cpuset: "1"}]
        emulator_pin: "0"
        numa_memory: {mode: strict, nodeset: "0"}
    tags:
      description: The guest's tags with O(dedicated_tag) added (dedicated) or removed (shared).
      type: list
      elements: str
    disks:
      description:
        - The guest's complete O(virtops.kvm.domain#module:disks) list with the I/O limits
          set; null when O(guests[].iotune) is not given.
      type: list
      elements: dict
    notes:
      description: What was left out for this guest, and why.
      type: list
      elements: str
messages:
  description: Warnings about the plan (cache allocation not possible, guests outside the
    plan pinned to CPUs it dedicates, cells spanned, checks not possible).
  returned: always
  type: list
  elements: str
host:
  description: The host as the plan saw it.
  returned: always
  type: dict
  contains:
    cpus:
      description: All host CPUs.
      type: str
    cells:
      description: NUMA cells with their CPUs.
      type: list
      elements: dict
    reserved:
      description: CPUs reserved for the host.
      type: str
    dedicated:
      description: Guest name to the CPUs dedicated to it after the plan.
      type: dict
    shared_pool:
      description: CPUs left for shared guests.
      type: str
    resctrl:
      description: Whether cache allocation is available, and why not.
      type: dict
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._cpuset import parse_cpuset  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._domain_devices import IOTUNE_KEYS  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._tuning import (  # noqa: E402
    EMULATOR_PLACEMENTS,
    POLICIES,
    Request,
    Settings,
    plan,
    read_guests,
    read_host,
)

IOTUNE_SPEC = {key: {"type": "int"} for key in IOTUNE_KEYS}

GUEST_SPEC = {
    "name": {"type": "str", "required": True},
    "cpu_policy": {"type": "str", "choices": list(POLICIES), "default": "dedicated"},
    "cpus": {"type": "str"},
    "cell": {"type": "int"},
    "numa": {"type": "bool", "default": True},
    "numa_mode": {
        "type": "str",
        "choices": ["strict", "interleave", "preferred", "restrictive"],
        "default": "strict",
    },
    "hugepages": {"type": "bool"},
    "hugepage_size": {"type": "str"},
    "iothreads": {"type": "int"},
    "cachetune": {
        "type": "dict",
        "options": {
            "size": {"type": "raw", "required": True},
            "level": {"type": "int", "default": 3},
            "type": {"type": "str", "choices": ["both", "code", "data"], "default": "both"},
        },
    },
    "iotune": {"type": "dict", "options": IOTUNE_SPEC},
    "iotune_disks": {"type": "list", "elements": "str"},
}

ARGUMENT_SPEC = {
    "guests": {"type": "list", "elements": "dict", "required": True, "options": GUEST_SPEC},
    "host_reserved_cpus": {"type": "str", "default": ""},
    "emulator_placement": {"type": "str", "choices": list(EMULATOR_PLACEMENTS)},
    "dedicated_tag": {"type": "str", "default": "cpu-dedicated"},
    "cachetune_required": {"type": "bool", "default": False},
}


def run(m: KvmModule) -> dict:
    params = m.params
    requests = [Request.from_params(g, i) for i, g in enumerate(params["guests"])]
    reserved = frozenset()
    if params["host_reserved_cpus"]:
        reserved = parse_cpuset(params["host_reserved_cpus"], "host_reserved_cpus")
    settings = Settings(
        reserved=reserved,
        emulator_placement=params["emulator_placement"],
        dedicated_tag=params["dedicated_tag"],
        cachetune_required=params["cachetune_required"],
    )
    host = read_host(m.conn, params["uri"])
    guests = read_guests(m.conn)
    result, messages, summary = plan(host, guests, requests, settings)
    for message in messages:
        m.warn(message)
    return {"changed": False, "plan": result, "messages": messages, "host": summary}


def main() -> None:
    # Read-write, as host_info: the host is read through host_info's section functions.
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=False, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
