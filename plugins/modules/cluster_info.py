#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_info
short_description: Read a Pacemaker cluster's nodes, quorum, fencing and highly available guests
version_added: 1.0.0
description:
  - Returns the state of the Pacemaker cluster the host belongs to, from C(crm_mon --output-as=xml)
    and the CIB (C(cibadmin --query)), with its nodes, quorum, designated controller (DC), fencing,
    cluster properties, and every C(ocf:heartbeat:VirtualDomain) resource (a highly available
    guest, as M(virtops.kvm.cluster_guest) makes them) with where it runs and its failed actions.
  - Use it in a loop with C(until) to wait for a settled cluster (RV(cluster.settled)).
  - Runs Pacemaker's tools on the host (they must be installed) and changes nothing. Needs no
    libvirt connection.
  - With the environment variable C(CIB_file) set, Pacemaker's tools and so this module read
    that CIB file instead of a live cluster.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.attributes.not_in_group
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
requirements:
  - Pacemaker's command line tools (C(cibadmin), C(crm_mon); Debian C(pacemaker-cli-utils)).
  - C(corosync-quorumtool) for the vote counts (optional).
options: {}
seealso:
  - module: virtops.kvm.cluster_guest
"""

EXAMPLES = r"""
- name: Read the cluster
  virtops.kvm.cluster_info:
  register: cluster

- name: Wait until every node is online, the cluster quorate and every HA guest where it should be
  virtops.kvm.cluster_info:
  register: cluster
  until: >-
    cluster.cluster.settled
    and cluster.cluster.nodes | rejectattr('online') | list | length == 0
  retries: 60
  delay: 5

- name: Where does guest web1 run?
  ansible.builtin.debug:
    msg: "{{ (cluster.cluster.guests | selectattr('guest', 'equalto', 'web1') | first).node }}"
"""

RETURN = r"""
cluster:
  description: The cluster as Pacemaker sees it from this host.
  returned: always
  type: dict
  contains:
    dc:
      description: Name of the designated controller, null when there is none (no quorum yet,
        or no cluster).
      type: str
    quorate:
      description: Whether the partition this host is in has quorum.
      type: bool
    expected_votes:
      description: Corosync's expected votes, null when C(corosync-quorumtool) cannot tell.
      type: int
    total_votes:
      description: Corosync's total votes present, null when C(corosync-quorumtool) cannot tell.
      type: int
    settled:
      description: Quorate, no online node pending or unclean, and every guest resource settled
        (managed ones in their target role on the right number of nodes, none failed).
      type: bool
    nodes:
      description: The nodes, each with C(name), C(id), C(online), C(standby), C(standby_onfail),
        C(maintenance), C(pending), C(unclean) (needs fencing), C(shutdown), C(dc), C(type)
        and C(resources_running).
      type: list
      elements: dict
    stonith:
      description: C(enabled) (the effective C(stonith-enabled)) and C(devices), the stonith
        resources, each with C(id) and C(agent).
      type: dict
    properties:
      description: The cluster properties set in the CIB (C(crm_config)), name to value; options
        left at Pacemaker's default are not listed.
      type: dict
    guests:
      description: Every C(ocf:heartbeat:VirtualDomain) resource, sorted by resource id.
      type: list
      elements: dict
      contains:
        resource:
          description: The resource id.
          type: str
        guest:
          description: The guest name from the definition file, null when it cannot be read here.
          type: str
        config:
          description: The definition file (the resource's C(config) parameter).
          type: str
        hypervisor:
          description: The resource's C(hypervisor) parameter, if set.
          type: str
        role:
          description: Pacemaker's role of the resource (V(Started), V(Stopped), ...).
          type: str
        target_role:
          description: The C(target-role) meta attribute, if set.
          type: str
        nodes:
          description: The nodes it runs on (more than one only when something went wrong).
          type: list
          elements: str
        node:
          description: The one node it runs on, null when it runs on none or on several.
          type: str
        managed:
          description: Whether Pacemaker manages it.
          type: bool
        failed:
          description: Whether Pacemaker sees it failed.
          type: bool
        allow_migrate:
          description: Whether live migration is allowed (C(allow-migrate)).
          type: bool
        settled:
          description: In its target role on one node (started) or none (stopped), not failed.
          type: bool
        failures:
          description: Failed actions, each with C(operation), C(interval_ms), C(node),
            C(status), C(exit_status), C(exit_reason), C(last_rc_change) and C(fail_count) (the
            node's fail count of the resource).
          type: list
          elements: dict
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pacemaker import (  # noqa: E402
    Tools,
    cluster_info,
)

ARGUMENT_SPEC: dict = {}


def run(m: KvmModule) -> dict:
    tools = Tools.for_module(m.module)
    return {"changed": False, "cluster": cluster_info(tools)}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, connection=False, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
