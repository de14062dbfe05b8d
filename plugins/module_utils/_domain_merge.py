# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The domain module's ``xml`` option: a fragment merged into the definition.

Elements are matched by tag (repeatable ones outside ``<devices>`` by their identifying
attributes) and merged recursively; devices are added unless one already contains the
fragment's. ``contains`` says whether a definition already has all of a fragment, and
``xml_parts`` shows the touched parts in the diff.
"""

from __future__ import annotations

import copy

from . import _xml
from ._domain_xml import TOP_ORDER, top

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None

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


def parse_fragment(text: str):
    """The user's ``xml``: a whole ``<domain>`` or one element of it, as a ``<domain>``."""
    elem = _xml.parse(text, "xml option")
    if elem.tag == "domain":
        return elem
    wrapper = etree.Element("domain")
    wrapper.append(elem)
    return wrapper


def contains(actual, wanted) -> bool:
    """Whether ``actual`` already has every attribute, text and child of ``wanted``."""
    if actual.tag != wanted.tag:
        return False
    for key, value in wanted.attrib.items():
        if actual.get(key) != value:
            return False
    if (wanted.text or "").strip() and (wanted.text or "").strip() != (actual.text or "").strip():
        return False
    children = [c for c in actual if isinstance(c.tag, str)]
    return all(any(contains(c, w) for c in children) for w in wanted if isinstance(w.tag, str))


def _candidates(parent, wanted):
    same = [c for c in parent if c.tag == wanted.tag]
    keys = _IDENTITY.get(wanted.tag)
    if keys and all(wanted.get(k) is not None for k in keys):
        return [c for c in same if all(c.get(k) == wanted.get(k) for k in keys)]
    return same


def merge(actual, wanted, *, in_devices: bool = False) -> None:
    """Merge ``wanted`` into ``actual`` (both the same element) in place."""
    for key, value in wanted.attrib.items():
        actual.set(key, value)
    if (wanted.text or "").strip():
        actual.text = wanted.text
    for child in wanted:
        if not isinstance(child.tag, str):
            continue
        if any(contains(c, child) for c in actual if c.tag == child.tag):
            continue
        candidates = [] if in_devices else _candidates(actual, child)
        if candidates:
            merge(candidates[0], child, in_devices=child.tag == "devices")
        elif actual.tag == "domain" and child.tag in TOP_ORDER:
            merge(top(actual, child.tag), child, in_devices=child.tag == "devices")
        else:
            actual.append(copy.deepcopy(child))


def xml_parts(root, fragment) -> str:
    """The parts of ``root`` the fragment touches (for the diff)."""
    parts = []
    for child in fragment:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "devices":
            for dev in child:
                found = [d for d in root.findall("devices/" + dev.tag) if contains(d, dev)]
                parts += [_xml.to_string(d) for d in found]
            continue
        found = root.find(child.tag) if child.tag != "name" else None
        if found is not None:
            parts.append(_xml.to_string(found))
    return "".join(parts)
