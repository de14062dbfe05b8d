# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""A difference tracker: what the user asked for against what libvirt has.

Each managed setting is recorded once with its actual and desired value; the tracker
says whether anything differs, which settings need a restart, and renders Ansible's
``diff`` (before/after dictionaries of the managed settings only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Change:
    name: str
    before: Any
    after: Any
    restart_required: bool = False

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class DifferenceTracker:
    entries: list[Change] = field(default_factory=list)

    def add(self, name: str, before: Any, after: Any, *, restart_required: bool = False) -> bool:
        """Record a managed setting; returns True when it differs."""
        entry = Change(name, before, after, restart_required)
        self.entries.append(entry)
        return entry.changed

    @property
    def changes(self) -> list[Change]:
        return [e for e in self.entries if e.changed]

    def __bool__(self) -> bool:
        return bool(self.changes)

    def changed_names(self) -> list[str]:
        return [e.name for e in self.changes]

    def restart_required(self) -> list[str]:
        return [e.name for e in self.changes if e.restart_required]

    def diff(self, *, only_changed: bool = False) -> dict[str, dict[str, Any]]:
        """Ansible's ``diff``: nested before/after dictionaries keyed by dotted names."""
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        for entry in self.changes if only_changed else self.entries:
            _put(before, entry.name, entry.before)
            _put(after, entry.name, entry.after)
        return {"before": before, "after": after}


def _put(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[leaf] = value
