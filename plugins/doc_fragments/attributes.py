# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    # Every module: a member of the action group (meta/runtime.yml).
    # A module's own attributes entry wins key by key over a fragment's (description,
    # details), so a module writes only what it says differently.
    DOCUMENTATION = r"""
attributes:
  action_group:
    description: Use C(group/virtops.kvm.kvm) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - virtops.kvm.kvm
"""

    # Modules outside the action group, which take no libvirt connection options. List it
    # before virtops.kvm.attributes: of two fragments' entries for a key, the first one's wins.
    NOT_IN_GROUP = r"""
attributes:
  action_group:
    description: Not in C(group/virtops.kvm.kvm), whose defaults are libvirt connection options
      that this module does not take.
    support: none
    membership: []
"""

    # Modules that change something (use with DOCUMENTATION).
    ACTIONS = r"""
attributes:
  check_mode:
    description: Predicts the changes and reports them without making any.
    support: full
  diff_mode:
    description: Returns the managed settings before and after.
    support: full
  idempotent:
    description: A second run with the same options reports no change.
    support: full
"""

    # Modules that only read (use with DOCUMENTATION).
    INFO_MODULE = r"""
attributes:
  check_mode:
    description: Changes nothing, so it runs the same in check mode.
    support: full
  diff_mode:
    description: Returns no diff.
    support: none
  idempotent:
    description: Read-only; changes nothing.
    support: full
"""
