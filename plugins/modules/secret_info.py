#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: secret_info
short_description: List libvirt secrets (never their values)
version_added: 1.0.0
description:
  - Returns the secrets of a libvirt host with their UUID, usage, description and flags,
    all of them or those matching the options given. Values are never read.
  - Opens a read-only connection and changes nothing.
  - A connection whose driver has no secrets (libvirt's C(test) driver) gives an empty
    list and a warning.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.info_module
options:
  uuid:
    description: Only the secret with this UUID.
    type: str
  usage_type:
    description: Only secrets of this usage type.
    type: str
    choices: [volume, ceph, iscsi, tls, vtpm]
  usage_id:
    description: Only secrets with this usage id (volume path, iSCSI target or name).
    type: str
seealso:
  - module: virtops.kvm.secret
"""

EXAMPLES = r"""
- name: All secrets
  virtops.kvm.secret_info:
  register: all_secrets

- name: The Ceph secrets
  virtops.kvm.secret_info:
    usage_type: ceph
  register: ceph_secrets

- name: Show their UUIDs
  ansible.builtin.debug:
    msg: "{{ ceph_secrets.secrets | map(attribute='uuid') | list }}"
"""

RETURN = r"""
secrets:
  description: The secrets, sorted by usage type and usage id. Empty when none match.
  returned: always
  type: list
  elements: dict
  contains:
    uuid:
      description: UUID.
      type: str
    usage_type:
      description: V(volume), V(ceph), V(iscsi), V(tls) or V(vtpm) (V(null) for none).
      type: str
    usage_id:
      description: The volume path, target or name of the usage.
      type: str
    description:
      description: Description.
      type: str
    ephemeral:
      description: Whether libvirt keeps it in memory only.
      type: bool
    private:
      description: Whether libvirt refuses to give its value back.
      type: bool
  sample:
    - uuid: 0c38cef6-fe21-466d-9eda-4d8c8d71a312
      usage_type: ceph
      usage_id: client.libvirt secret
      description: null
      ephemeral: false
      private: true
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (  # noqa: E402
    KvmLibvirtError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import libvirt  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_secret import (  # noqa: E402
    SecretSpec,
    secrets_info,
)

ARGUMENT_SPEC = {
    "uuid": {"type": "str"},
    "usage_type": {"type": "str", "choices": ["volume", "ceph", "iscsi", "tls", "vtpm"]},
    "usage_id": {"type": "str"},
}


def run(m: KvmModule) -> dict:
    p = m.params
    uuid = p["uuid"].lower() if p["uuid"] else None
    filters = SecretSpec(usage_type=p["usage_type"], usage_id=p["usage_id"], uuid=uuid)
    try:
        found = secrets_info(m.conn, filters)
    except KvmLibvirtError as exc:
        if exc.code != libvirt.VIR_ERR_NO_SUPPORT:
            raise
        m.warn(f"The libvirt driver of {p['uri']} has no secrets")
        found = []
    return {"changed": False, "secrets": found}


def main() -> None:
    module = KvmModule(argument_spec=ARGUMENT_SPEC, readonly=True, supports_check_mode=True)
    module.run(run)


if __name__ == "__main__":
    main()
