#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_guest
short_description: Make a guest highly available as a Pacemaker VirtualDomain resource
version_added: 1.0.0
description:
  - Makes one libvirt guest a Pacemaker C(ocf:heartbeat:VirtualDomain) resource, so that the
    cluster runs it on exactly one node and restarts it on a survivor when its node fails;
    changes its settings; or removes it from the cluster, leaving the guest running and
    defined.
  - Reads and writes the CIB through Pacemaker's own tools (C(cibadmin), C(crm_mon),
    C(crm_resource)), on any node of the cluster. Each write replaces the CIB with the copy
    read and changed, and Pacemaker refuses it when the CIB changed meanwhile; the module then
    reads again and recomputes, so a concurrent change by someone else is never lost.
  - The guest's definition lives in a file on storage every node reads (O(config)).
    VirtualDomain starts the guest from that file (transient); the module can write the file
    from this host's libvirt definition (O(write_config)).
  - Refuses to make a guest highly available in a cluster without fencing (see
    O(allow_without_fencing)).
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
requirements:
  - Pacemaker's command line tools (C(cibadmin), C(crm_mon), C(crm_resource)) on the host, which
    is a node of the cluster.
  - C(resource-agents) (C(ocf:heartbeat:VirtualDomain)) on every node.
notes:
  - O(uri) is both the libvirt this module reads (for O(write_config) and to leave a removed
    guest defined) and the resource's C(hypervisor) parameter, the libvirt every node's agent
    uses. Keep it a local URI such as V(qemu:///system).
  - The diff shows the resource's settings as read from the CIB before and after.
options:
  name:
    description:
      - The guest's name (as in its definition).
    type: str
    required: true
  resource_id:
    description:
      - The Pacemaker resource id. Defaults to O(name).
    type: str
  state:
    description:
      - V(started) the resource with C(target-role=Started), V(stopped) with C(target-role=Stopped)
        (Pacemaker shuts the guest down).
      - V(absent) removes the resource and every constraint naming it. The guest is not stopped;
        it keeps running where it runs and is defined there (a guest Pacemaker started is
        transient; the module defines it from O(config)). Run the task on the node where the
        guest runs (C(delegate_to)). Pacemaker would stop a deleted resource that runs, even
        one set C(is-managed=false) first; the module keeps it running by setting
        C(stop-orphan-resources=false) for the time it takes the cluster to forget the
        resource (one pair per resource, first in C(cib-bootstrap-options), removed at the end).
    type: str
    choices: [started, stopped, absent]
    default: started
  config:
    description:
      - Absolute path of the guest's definition (libvirt domain XML) on storage that every node
        reads at the same path. Required unless O(state=absent).
    type: path
  write_config:
    description:
      - Write O(config) from the guest's inactive definition in the libvirt at O(uri) when it
        is missing or differs (compared as XML). Secrets such as graphics passwords are not
        written. When false, O(config) must exist and define the guest O(name).
    type: bool
    default: false
  allow_migrate:
    description:
      - Whether Pacemaker live-migrates the guest when it moves it (C(allow-migrate)), instead
        of stopping it on one node and starting it on another. Not changed when not set.
    type: bool
  migration_transport:
    description:
      - VirtualDomain's C(migration_transport) (V(ssh), V(tcp), V(tls), ...). Not changed when
        not set.
    type: str
  migrate_options:
    description:
      - VirtualDomain's C(migrate_options), extra options of its live migration (as C(virsh
        migrate) takes them). V(--unsafe) where the guest's disks are on storage that every
        node shares but libvirt does not know as shared (anything but NFS, GlusterFS, Ceph and
        the like), without which libvirt refuses the migration and Pacemaker stops and starts
        the guest instead. Not changed when not set.
    type: str
  preferred_nodes:
    description:
      - Nodes the guest prefers (a location constraint of score 100 each, ids
        C(<resource>-prefer-<node>)). The list replaces the module's own preferences; other
        location constraints are left alone. Not changed when not set.
    type: list
    elements: str
  forbidden_nodes:
    description:
      - Nodes the guest must never run on (score C(-INFINITY), ids C(<resource>-avoid-<node>)).
        Not changed when not set.
    type: list
    elements: str
  order_after:
    description:
      - Resources (for example the shared storage's mount) that must be started before the
        guest (mandatory order constraints, ids C(<resource>-after-<first>)). Each must exist.
        Not changed when not set.
    type: list
    elements: str
  priority:
    description:
      - The resource's C(priority); when not all resources can run, lower priorities stop
        first. Not changed when not set.
    type: int
  utilization:
    description:
      - What the guest uses, for C(placement-strategy=balanced) (utilization C(hv_memory) and
        C(cpu), the names VirtualDomain uses). Setting one also turns the agent's own
        C(autoset_utilization_*) for it off, which would overwrite it. Not changed when not set.
    type: dict
    suboptions:
      memory:
        description: Memory in MiB (C(hv_memory)).
        type: int
      vcpus:
        description: Virtual CPUs (C(cpu)).
        type: int
  monitor_interval:
    description: Seconds between monitor operations.
    type: int
    default: 10
  monitor_timeout:
    description: Timeout of the monitor operation, in seconds.
    type: int
    default: 30
  start_timeout:
    description: Timeout of the start operation, in seconds.
    type: int
    default: 90
  stop_timeout:
    description: Timeout of the stop operation (a clean shutdown, then a forced one), in seconds.
    type: int
    default: 90
  migrate_timeout:
    description: Timeout of the C(migrate_to) and C(migrate_from) operations, in seconds (when
      O(allow_migrate) is true).
    type: int
    default: 120
  stickiness:
    description:
      - The resource's C(resource-stickiness). Pacemaker's default of 0 lets it move a running
        guest to spread resources, even the moment it becomes highly available (found running
        on one node, started on another by live migration or a restart). The default keeps a
        running guest where it runs, above a preference of O(preferred_nodes) (100), so it
        does not move back after a failover either; O(preferred_nodes) then chooses where a
        stopped guest starts.
    type: int
    default: 200
  meta:
    description:
      - Further meta attributes (for example C(resource-stickiness), C(migration-threshold)),
        name to value. Only those named are changed. C(target-role), C(allow-migrate) and
        C(priority) come from their own options.
    type: dict
  allow_without_fencing:
    description:
      - B(Dangerous.) Make the guest highly available even though the cluster has
        C(stonith-enabled=false) or no stonith device. Without fencing a node that stops
        answering may still run the guest while a survivor starts it, and both write its disks,
        which loses data. Only for tests and clusters whose disks are protected otherwise (lock
        manager). The module warns on every run.
    type: bool
    default: false
  wait:
    description:
      - Wait until the resource is started on one node or stopped (O(state)). Removal always
        waits until the cluster has forgotten the resource.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait.
    type: int
    default: 120
seealso:
  - module: virtops.kvm.cluster_info
  - module: virtops.kvm.domain
"""

EXAMPLES = r"""
- name: Make web1 highly available, its definition written to the shared storage
  virtops.kvm.cluster_guest:
    name: web1
    config: /srv/cluster/guests/web1.xml
    write_config: true
    allow_migrate: true
    migration_transport: ssh
    preferred_nodes: [kvm1]
    order_after: [shared-storage]
    utilization:
      memory: 2048
      vcpus: 2
    meta:
      migration-threshold: 3

- name: Stop it through the cluster
  virtops.kvm.cluster_guest:
    name: web1
    config: /srv/cluster/guests/web1.xml
    state: stopped

- name: Take it out of the cluster; it keeps running on its node
  virtops.kvm.cluster_guest:
    name: web1
    state: absent
  delegate_to: "{{ web1_node }}"
"""

RETURN = r"""
resource:
  description: The resource's settings as read from the CIB after the run (before it, in check
    mode's prediction the same as after), null when absent. Keys C(resource), C(agent),
    C(params), C(meta), C(utilization), C(operations) (name to C(timeout) and, for monitor,
    C(interval), in seconds), C(preferred_nodes), C(forbidden_nodes), C(order_after) and
    C(constraints) (the ids of every constraint naming it).
  returned: always
  type: dict
nodes:
  description: The nodes the guest runs on after the run (for V(absent), where it was left).
  returned: always
  type: list
  elements: str
role:
  description: Pacemaker's role of the resource after the run (V(Started), V(Stopped)).
  returned: when O(state) is not V(absent) and not in check mode
  type: str
config_written:
  description: Whether O(config) was (or in check mode would be) written from libvirt.
  returned: always
  type: bool
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pacemaker import Tools  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pacemaker_guest import (  # noqa: E402
    GuestManager,
)
from ansible_collections.virtops.kvm.plugins.module_utils._pacemaker_resource import (  # noqa: E402
    wish_from_params,
)

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "resource_id": {"type": "str"},
    "state": {"type": "str", "choices": ["started", "stopped", "absent"], "default": "started"},
    "config": {"type": "path"},
    "write_config": {"type": "bool", "default": False},
    "allow_migrate": {"type": "bool"},
    "migration_transport": {"type": "str"},
    "migrate_options": {"type": "str"},
    "preferred_nodes": {"type": "list", "elements": "str"},
    "forbidden_nodes": {"type": "list", "elements": "str"},
    "order_after": {"type": "list", "elements": "str"},
    "priority": {"type": "int"},
    "utilization": {
        "type": "dict",
        "options": {"memory": {"type": "int"}, "vcpus": {"type": "int"}},
    },
    "monitor_interval": {"type": "int", "default": 10},
    "monitor_timeout": {"type": "int", "default": 30},
    "start_timeout": {"type": "int", "default": 90},
    "stop_timeout": {"type": "int", "default": 90},
    "migrate_timeout": {"type": "int", "default": 120},
    "stickiness": {"type": "int", "default": 200},
    "meta": {"type": "dict"},
    "allow_without_fencing": {"type": "bool", "default": False},
    "wait": {"type": "bool", "default": True},
    "wait_timeout": {"type": "int", "default": 120},
}


def run(m: KvmModule) -> dict:
    params = m.params
    tools = Tools.for_module(m.module)
    manager = GuestManager(
        tools,
        wish_from_params(params),
        check_mode=m.check_mode,
        allow_without_fencing=params["allow_without_fencing"],
        write_config=params["write_config"],
        connection=lambda: m.conn,
        wait=params["wait"],
        wait_timeout=params["wait_timeout"],
    )
    result = manager.run()
    for warning in result.warnings:
        m.warn(warning)
    out = {
        "changed": result.changed,
        "resource": result.after,
        "nodes": result.nodes,
        "config_written": result.config_written,
    }
    if result.role is not None:
        out["role"] = result.role
    if m.diff_mode:
        out["diff"] = {"before": result.before or {}, "after": result.after or {}}
    return out


def main() -> None:
    module = KvmModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[("state", "started", ["config"]), ("state", "stopped", ["config"])],
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == "__main__":
    main()
