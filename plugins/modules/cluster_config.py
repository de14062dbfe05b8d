#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_config
short_description: Set a Pacemaker cluster's properties and stonith (fencing) devices
version_added: 1.0.0
description:
  - Sets cluster properties (the C(cib-bootstrap-options) set of the CIB) and the stonith
    devices that fence a node that stops answering, on the Pacemaker cluster the host belongs
    to. Run it once per cluster (C(run_once)), on any node.
  - Reads and writes the CIB through Pacemaker's own tools (C(cibadmin), C(stonith_admin)),
    in one write per run that replaces the CIB with the copy read and changed; Pacemaker
    refuses it when the CIB changed meanwhile, and the module reads again and recomputes, so a
    concurrent change by someone else is never lost.
  - Refuses to leave the cluster without fencing (C(stonith-enabled=false) or no stonith
    device) unless O(allow_without_fencing) is set.
  - With the environment variable C(CIB_file) set, the module works on that CIB file instead
    of a live cluster. Needs no libvirt connection.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.attributes.not_in_group
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
requirements:
  - Pacemaker's command line tools (C(cibadmin), C(stonith_admin); Debian C(pacemaker-cli-utils)
    and C(pacemaker)) on the host, which is a node of the cluster.
  - The fence agents of O(stonith_devices) on every node (Debian C(fence-agents)).
notes:
  - The diff and the result show the properties and devices before and after, with the values
    of secret parameters replaced by C(********) (C(******** (changed)) when the run changes
    one).
options:
  properties:
    description:
      - Cluster properties, name to value (for example C(stonith-enabled), C(no-quorum-policy),
        C(placement-strategy), C(cluster-recheck-interval)), set in C(cib-bootstrap-options).
        Booleans become C(true)/C(false). A null value removes the property (Pacemaker's
        default applies). Properties not named are left alone.
    type: dict
    default: {}
  stonith_devices:
    description:
      - The stonith devices. Each one named is created or changed to exactly what it says.
        Devices not named are left alone unless O(exclusive_stonith_devices). Not changed when
        not set.
    type: list
    elements: dict
    suboptions:
      name:
        description: The device's resource id.
        type: str
        required: true
      agent:
        description: The fence agent (C(fence_ipmilan), C(fence_redfish), C(fence_virsh), ...).
        type: str
        required: true
      params:
        description:
          - The agent's instance attributes, name to value (for example C(ip), C(username),
            C(lanplus)), with O(stonith_devices[].secret_params) the device's whole set
            (others are removed; C(pcmk_host_list) comes from O(stonith_devices[].hosts)).
          - Secrets (names containing C(passw), C(secret) or C(token)) are refused here, they
            belong in O(stonith_devices[].secret_params).
        type: dict
        default: {}
      secret_params:
        description:
          - Secret instance attributes such as C(password) or C(password_script). Never shown
            in output, diff, warnings or logs.
        type: dict
        default: {}
      hosts:
        description:
          - The nodes the device can fence (C(pcmk_host_list)). Not changed when not set.
        type: list
        elements: str
      monitor_interval:
        description: Seconds between monitor operations of the device.
        type: int
        default: 60
  exclusive_stonith_devices:
    description:
      - Remove the top-level stonith devices that O(stonith_devices) does not name (with
        the constraints naming them).
    type: bool
    default: false
  allow_without_fencing:
    description:
      - B(Dangerous.) Accept a cluster with C(stonith-enabled=false) or without stonith device.
        Without fencing a node that stops answering may still run a guest while a survivor
        starts it, and both write its disks, which loses data. Only for tests and clusters
        whose disks are protected otherwise (lock manager). The module warns on every run.
    type: bool
    default: false
seealso:
  - module: virtops.kvm.cluster_info
  - module: virtops.kvm.cluster_guest
"""

EXAMPLES = r"""
- name: Fence every node through its BMC and stop resources in a partition without quorum
  virtops.kvm.cluster_config:
    properties:
      stonith-enabled: true
      no-quorum-policy: stop
      placement-strategy: balanced
    stonith_devices:
      - name: fence-kvm1
        agent: fence_ipmilan
        params:
          ip: 192.0.2.11
          username: admin
          lanplus: 1
        secret_params:
          password: "{{ vault_ipmi_password }}"
        hosts: [kvm1]
      - name: fence-kvm2
        agent: fence_ipmilan
        params:
          ip: 192.0.2.12
          username: admin
          lanplus: 1
        secret_params:
          password: "{{ vault_ipmi_password }}"
        hosts: [kvm2]
    exclusive_stonith_devices: true
  run_once: true
"""

RETURN = r"""
properties:
  description: The properties of C(cib-bootstrap-options) after the run (in check mode, as it
    would be), name to value.
  returned: always
  type: dict
stonith_devices:
  description: The stonith devices after the run, each with C(name), C(agent), C(params)
    (secret values masked), C(hosts) and C(monitor_interval) (seconds).
  returned: always
  type: list
  elements: dict
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pacemaker import Tools  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pacemaker_config import (  # noqa: E402
    configure,
    wish_from_params,
)

ARGUMENT_SPEC = {
    "properties": {"type": "dict", "default": {}},
    "stonith_devices": {
        "type": "list",
        "elements": "dict",
        "options": {
            "name": {"type": "str", "required": True},
            "agent": {"type": "str", "required": True},
            "params": {"type": "dict", "default": {}},
            "secret_params": {"type": "dict", "default": {}, "no_log": True},
            "hosts": {"type": "list", "elements": "str"},
            "monitor_interval": {"type": "int", "default": 60},
        },
    },
    "exclusive_stonith_devices": {"type": "bool", "default": False},
    "allow_without_fencing": {"type": "bool", "default": False},
}


def run(m: KvmModule) -> dict:
    tools = Tools.for_module(m.module)
    result = configure(
        tools,
        wish_from_params(m.params),
        check_mode=m.check_mode,
        allow_without_fencing=m.params["allow_without_fencing"],
    )
    for warning in result.warnings:
        m.warn(warning)
    out = {"changed": result.changed, **result.state}
    if m.diff_mode:
        out["diff"] = {"before": result.before, "after": result.after}
    return out


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, connection=False, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
