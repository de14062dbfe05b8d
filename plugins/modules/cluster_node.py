#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_node
short_description: Put a Pacemaker cluster node in standby or bring it back
version_added: 1.0.0
description:
  - Puts a node of the Pacemaker cluster the host belongs to in standby, so that Pacemaker
    moves every resource off it (it live-migrates highly available guests that allow it, see
    M(virtops.kvm.cluster_guest)), or takes it out of standby. Run it on any node of the
    cluster; O(name) says which node.
  - With O(wait), waits until the node runs no resource and the cluster has no action left,
    and reports where each resource that ran on the node went.
  - A resource that no other node may run (location constraints, utilization) is stopped by
    Pacemaker rather than moved; the module warns naming it.
  - Standby is Pacemaker's node attribute C(standby), set with C(crm_attribute) (lifetime
    C(forever), so it stays across restarts of the node). Taking a node out of standby also
    removes a standby set until the next reboot. Resources do not move back by themselves
    when their stickiness keeps them where they are.
  - Needs no libvirt connection.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.attributes.not_in_group
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  check_mode:
    description: Predicts the change and which resources would leave the node; nothing is set
      and nothing moves.
requirements:
  - Pacemaker's command line tools (C(crm_attribute), C(crm_mon), C(crm_resource), C(crm_node);
    Debian C(pacemaker-cli-utils)) on the host, which is a node of the cluster.
options:
  name:
    description: The node's name in the cluster. Default is the node the module runs on.
    type: str
  state:
    description:
      - C(standby) moves every resource off the node and keeps it empty.
      - C(online) lets Pacemaker place resources on the node again.
    type: str
    choices: [standby, online]
    default: standby
  wait:
    description: Wait until the node runs no resource (C(standby)) and the cluster has settled
      (C(crm_resource --wait)).
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait; the task fails when the cluster has not settled by then (the
      node stays in the state asked for).
    type: int
    default: 600
  force:
    description:
      - Put in standby the last online node out of standby, which stops its resources (there
        is no node to move them to). Without it the module refuses.
    type: bool
    default: false
notes:
  - A change needs a quorate partition (Pacemaker moves nothing without quorum); the module
    refuses one otherwise, before changing anything.
seealso:
  - module: virtops.kvm.cluster_info
  - module: virtops.kvm.cluster_guest
"""

EXAMPLES = r"""
- name: Empty kvm2 for maintenance (Pacemaker live-migrates its HA guests)
  virtops.kvm.cluster_node:
    name: kvm2
    state: standby
  register: emptied

- name: Say where its resources went
  ansible.builtin.debug:
    msg: "{{ emptied.resources | items2dict(key_name='id', value_name='nodes') }}"

- name: Bring kvm2 back
  virtops.kvm.cluster_node:
    name: kvm2
    state: online
"""

RETURN = r"""
node:
  description: The node after the run (in check mode, as it would be).
  returned: always
  type: dict
  contains:
    name:
      description: The node's name.
      type: str
    online:
      description: Whether the node is online in the cluster.
      type: bool
    standby:
      description: Whether the node is in standby.
      type: bool
    resources:
      description: Ids of the resources that run on the node.
      type: list
      elements: str
  sample: {name: kvm2, online: true, standby: true, resources: []}
resources:
  description: Every resource that ran on the node when the module started, with C(id),
    C(agent), C(before) (its nodes then) and C(nodes) (its nodes after the run; empty when it
    was stopped). In check mode C(nodes) is unchanged.
  returned: always
  type: list
  elements: dict
  sample:
    - {id: web1, agent: "ocf:heartbeat:VirtualDomain", before: [kvm2], nodes: [kvm3]}
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pacemaker import Tools  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pacemaker_node import (  # noqa: E402
    converge,
)

ARGUMENT_SPEC = {
    "name": {"type": "str"},
    "state": {"type": "str", "default": "standby", "choices": ["standby", "online"]},
    "wait": {"type": "bool", "default": True},
    "wait_timeout": {"type": "int", "default": 600},
    "force": {"type": "bool", "default": False},
}


def run(m: KvmModule) -> dict:
    params = {key: m.params[key] for key in ARGUMENT_SPEC}
    result = converge(Tools.for_module(m.module), check_mode=m.check_mode, **params)
    for warning in result.warnings:
        m.warn(warning)
    out = {"changed": result.changed, "node": result.node, "resources": result.resources}
    if m.diff_mode:
        out["diff"] = {"before": result.before, "after": result.after}
    return out


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, connection=False, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
