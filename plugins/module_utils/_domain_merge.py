# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The domain module's ``xml`` option: a fragment merged into the definition.

The merge itself is :mod:`._xml_merge` (shared with pool and network); these are the
domain's rules: repeatable elements outside ``<devices>`` are matched by their identifying
attributes, devices are added unless one already contains the fragment's, and a missing
top-level element is made at its place in libvirt's order.
"""

from __future__ import annotations

from . import _xml_merge
from ._domain_xml import TOP_ORDER, top
from ._xml_merge import contains

# Repeatable elements outside <devices>, matched by these attributes.
_IDENTITY = {
    "vcpupin": ("vcpu",),
    "iothreadpin": ("iothread",),
    "cachetune": ("vcpus",),
    "memorytune": ("vcpus",),
    "feature": ("name",),
    "boot": ("dev",),
    "timer": ("name",),
    "cell": ("id",),
    "memnode": ("cellid",),
    "entry": ("name",),
    "page": ("size",),
}


def _place(parent, tag: str):
    return top(parent, tag) if parent.tag == "domain" and tag in TOP_ORDER else None


RULES = _xml_merge.Rules(
    root="domain",
    identity={tag: (keys,) for tag, keys in _IDENTITY.items()},
    lists=frozenset({"devices"}),
    place=_place,
)

__all__ = ["RULES", "contains", "merge", "parse_fragment", "xml_parts"]


def parse_fragment(text: str):
    """The user's ``xml``: a whole ``<domain>`` or one element of it, as a ``<domain>``."""
    return _xml_merge.parse_fragment(text, RULES)


def merge(actual, wanted) -> None:
    """Merge ``wanted`` into ``actual`` (both the same element) in place."""
    _xml_merge.merge(actual, wanted, RULES)


def xml_parts(root, fragment) -> str:
    """The parts of ``root`` the fragment touches (for the diff)."""
    return _xml_merge.xml_parts(root, fragment, RULES)
