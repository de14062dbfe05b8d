#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: secret
short_description: Manage libvirt secrets (volume encryption, Ceph, iSCSI, TLS and vTPM keys)
version_added: 1.0.0
description:
  - Define, update and remove libvirt secrets of every usage type - V(volume) (the
    passphrase of an encrypted volume), V(ceph) (a Ceph key for RBD disks and pools),
    V(iscsi) (a CHAP password), V(tls) (the passphrase of a TLS key) and V(vtpm) (the key
    encrypting a virtual TPM's state).
  - A secret is found by O(uuid), by its usage (O(usage_type) and O(usage_id)), or by both,
    which must then name the same secret. libvirt allows one secret per usage; the module
    fails before any change when the usage belongs to another UUID, or when the UUID exists
    with another usage (the usage of a secret cannot change).
  - The value is write-only. It is never returned, and the diff only says whether it is
    written, never what it is. libvirt does not give back the value of a O(private) secret,
    so how a new value is detected depends on O(value_update).
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  idempotent:
    description:
      - A second run with the same options reports no change, except with
        O(value_update=always), which writes the value every time.
options:
  state:
    description:
      - V(present) defines the secret (and sets its value when O(value) is given).
      - V(absent) removes it. A secret that guests or storage pools name in their definition
        is only removed with O(force=true).
    type: str
    choices: [present, absent]
    default: present
  uuid:
    description:
      - The UUID of the secret. When creating a secret without it, libvirt picks one
        (returned in RV(secret.uuid)).
    type: str
  usage_type:
    description: What the secret is for. Needed to create a secret; goes with O(usage_id).
    type: str
    choices: [volume, ceph, iscsi, tls, vtpm]
  usage_id:
    description:
      - The usage id - for V(volume) the absolute path of the encrypted volume, for V(iscsi)
        the target name, for V(ceph), V(tls) and V(vtpm) a free name (such as
        V(client.libvirt secret)).
    type: str
  description:
    description: A human-readable description. Not changed when not set.
    type: str
  ephemeral:
    description:
      - Keep the secret in libvirt's memory only (lost when libvirtd restarts).
      - V(false) for a new secret when not set; an existing secret keeps its setting.
    type: bool
  private:
    description:
      - libvirt never gives back the value of a private secret (not even to this module).
      - V(true) for a new secret when not set; an existing secret keeps its setting.
      - A private secret cannot be made readable (V(false)); the module fails and says to
        remove and create it again.
    type: bool
  value:
    description:
      - The secret value (never returned or logged). Not changed when not set.
      - See O(value_encoding) for how it is given and O(value_update) for when it is written.
    type: str
  value_encoding:
    description:
      - V(plain) stores O(value) as its UTF-8 bytes (passphrases, CHAP passwords).
      - V(base64) stores the bytes the base64 text O(value) decodes to. Ceph keys are given
        this way, as in a keyring file.
    type: str
    choices: [plain, base64]
    default: plain
  value_update:
    description:
      - V(compare) writes O(value) when the module creates the secret, and for a secret that
        is not private (whose value libvirt gives back) when it has no value or another one.
        A private secret's value cannot be read, so a changed O(value) of an existing private
        secret is not detected.
      - V(always) writes O(value) on every run and so always reports a change. Use it (or
        remove and create the secret) to change the value of a private secret.
    type: str
    choices: [compare, always]
    default: compare
  force:
    description:
      - With O(state=absent), remove the secret even when guests or storage pools name it.
        They cannot open their storage (or start their vTPM) without it.
    type: bool
    default: false
notes:
  - Redefining a secret (a new O(description), O(ephemeral), or a readable secret made
    O(private)) keeps its value.
seealso:
  - module: virtops.kvm.secret_info
  - module: virtops.kvm.pool
"""

EXAMPLES = r"""
- name: The Ceph key of client.libvirt, as in its keyring
  virtops.kvm.secret:
    usage_type: ceph
    usage_id: client.libvirt secret
    value: "{{ ceph_libvirt_key }}"
    value_encoding: base64
  register: ceph_secret

- name: The CHAP password of an iSCSI target, under a fixed UUID
  virtops.kvm.secret:
    uuid: 4a7b3c1e-3f2d-4c8a-9b1e-5d6f7a8b9c0d
    usage_type: iscsi
    usage_id: iqn.2026-01.com.example:storage
    description: CHAP password of the storage target
    value: "{{ chap_password }}"

- name: The passphrase of a LUKS-encrypted volume
  virtops.kvm.secret:
    usage_type: volume
    usage_id: /var/lib/libvirt/images/secure.qcow2
    value: "{{ volume_passphrase }}"

- name: Write a new value into a private secret
  virtops.kvm.secret:
    usage_type: vtpm
    usage_id: vtpm of web1
    value: "{{ vtpm_key }}"
    value_update: always

- name: Remove a secret by UUID
  virtops.kvm.secret:
    uuid: 4a7b3c1e-3f2d-4c8a-9b1e-5d6f7a8b9c0d
    state: absent
"""

RETURN = r"""
secret:
  description: The secret after the run (never its value); V(null) when absent (or, in
    check mode, not created yet).
  returned: always
  type: dict
  contains:
    uuid:
      description: UUID.
      type: str
      returned: success
    usage_type:
      description: V(volume), V(ceph), V(iscsi), V(tls) or V(vtpm) (V(null) for none).
      type: str
      returned: success
    usage_id:
      description: The volume path, target or name of the usage.
      type: str
      returned: success
    description:
      description: Description.
      type: str
      returned: success
    ephemeral:
      description: Whether libvirt keeps it in memory only.
      type: bool
      returned: success
    private:
      description: Whether libvirt refuses to give its value back.
      type: bool
      returned: success
  sample:
    uuid: 0c38cef6-fe21-466d-9eda-4d8c8d71a312
    usage_type: ceph
    usage_id: client.libvirt secret
    description: null
    ephemeral: false
    private: true
actions:
  description: What the module did (or would do in check mode) - V(define), V(redefine),
    V(set value), V(undefine).
  returned: always
  type: list
  elements: str
  sample: [define, set value]
users:
  description: The guests and storage pools naming the secret, with O(state=absent).
  returned: when the secret to remove is in use
  type: list
  elements: str
  sample: ["storage pool 'ceph'"]
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_secret import (  # noqa: E402
    SecretManager,
)

ARGUMENT_SPEC = {
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    "uuid": {"type": "str"},
    "usage_type": {"type": "str", "choices": ["volume", "ceph", "iscsi", "tls", "vtpm"]},
    "usage_id": {"type": "str"},
    "description": {"type": "str"},
    "ephemeral": {"type": "bool"},
    "private": {"type": "bool"},
    "value": {"type": "str", "no_log": True},
    "value_encoding": {"type": "str", "default": "plain", "choices": ["plain", "base64"]},
    "value_update": {"type": "str", "default": "compare", "choices": ["compare", "always"]},
    "force": {"type": "bool", "default": False},
}


def main() -> None:
    module = KvmModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[("uuid", "usage_id")],
        required_together=[("usage_type", "usage_id")],
        supports_check_mode=True,
    )
    module.run(lambda m: SecretManager(m).run())


if __name__ == "__main__":
    main()
