# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Options every module of the collection takes (plugins/module_utils/_client.py).
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The libvirt connection URI of the hypervisor to manage, for example V(qemu:///system),
        V(qemu+ssh://root@host.example.com/system) or V(qemu+tls://host.example.com/system).
      - If not set, the value of the E(LIBVIRT_DEFAULT_URI) environment variable is used,
        and V(qemu:///system) when that is not set either.
    type: str
    default: qemu:///system
  connect_timeout:
    description:
      - How many seconds to keep retrying while the libvirt daemon is not answering yet,
        for example because a handler has just restarted it.
      - Errors that retrying cannot fix, such as a malformed URI or failed authentication,
        fail at once.
    type: int
    default: 30
requirements:
  - libvirt-python
  - lxml
notes:
  - Every module of this collection is in the action group C(virtops.kvm.kvm), so common
    options can be set once with C(module_defaults) and C(group/virtops.kvm.kvm).
"""
