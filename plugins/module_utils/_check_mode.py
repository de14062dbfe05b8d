# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Check mode from nothing: what a module says when an object it needs is not there yet.

A playbook that provisions a network, a pool, a volume and a guest runs in check mode on a
host that has none of them: no earlier task made anything. A module that needs a missing
object then predicts its change with this warning instead of failing; the real run with the
same input still fails before any change when the object is really missing.
"""

from __future__ import annotations


def assumed_in_check_mode(
    subject: str, problem: str = "does not exist yet", action: str = "creates"
) -> str:
    """The one wording of that warning, e.g. ``Storage pool 'p' does not exist yet; check
    mode assumes an earlier task creates it (the real run fails if it does not).``"""
    return (
        f"{subject} {problem}; check mode assumes an earlier task {action} it "
        "(the real run fails if it does not)."
    )
