# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The ``xml`` option of domain, pool and network: a fragment merged into a definition.

Elements are matched by tag (repeatable ones by their identifying attributes) and merged
recursively; an element the definition already contains is left alone. ``contains`` says
whether a definition already has all of a fragment (so a run is idempotent without ever
comparing text), and ``xml_parts`` shows the touched parts in the diff. Each definition
kind gives its own ``Rules``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _xml
from ._errors import KvmValidationError

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None


# libvirt's document elements: none of them is a part of another.
_DOCUMENTS = ("domain", "network", "pool", "volume", "secret", "domainsnapshot", "interface")


@dataclass(frozen=True)
class Rules:
    """How fragments merge into one kind of definition."""

    root: str  # the document element: domain, pool, network
    # Repeatable elements matched by attributes: tag -> alternatives, the first whose
    # attributes the fragment's element all has is used.
    identity: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    # Elements a fragment's element never merges into (repeated by their text): appended.
    repeated: frozenset[str] = frozenset()
    # Parents whose children are always added, not merged (a domain's <devices>).
    lists: frozenset[str] = frozenset()
    # Where a missing child goes: (parent, tag) -> a new element placed in order, or None
    # to append the fragment's element at the end.
    place: Callable[[Any, str], Any] | None = None


def parse_fragment(text: str, rules: Rules):
    """The user's ``xml``: a whole document or one element of it, as a document element."""
    elem = _xml.parse(text, "xml option")
    if elem.tag == rules.root:
        return elem
    if elem.tag in _DOCUMENTS:
        raise KvmValidationError(
            f"The xml option is a <{elem.tag}> definition: give a <{rules.root}> or a part of one"
        )
    wrapper = etree.Element(rules.root)
    wrapper.append(elem)
    return wrapper


def check_name(fragment, name: str, what: str) -> None:
    """A fragment naming another object than the one the task manages is an error."""
    found = _xml.text(fragment, "name")
    if found is not None and found != name:
        raise KvmValidationError(f"The xml option names {what} {found!r}, but name is {name!r}")


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


def candidates(parent, wanted, rules: Rules) -> list:
    """The children of ``parent`` that ``wanted`` would merge into (best first)."""
    if wanted.tag in rules.repeated:
        return []
    same = [c for c in parent if c.tag == wanted.tag]
    for keys in rules.identity.get(wanted.tag, ()):
        if all(wanted.get(k) is not None for k in keys):
            return [c for c in same if all(c.get(k) == wanted.get(k) for k in keys)]
    return same


def merge(actual, wanted, rules: Rules, *, as_list: bool = False) -> None:
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
        nested_list = child.tag in rules.lists
        found = [] if as_list else candidates(actual, child, rules)
        if found:
            merge(found[0], child, rules, as_list=nested_list)
            continue
        made = rules.place(actual, child.tag) if rules.place is not None else None
        if made is not None:
            merge(made, child, rules, as_list=nested_list)
        else:
            actual.append(copy.deepcopy(child))


def merged(root, fragment, rules: Rules):
    """A copy of ``root`` with the fragment merged; fails when it cannot hold it all."""
    new = copy.deepcopy(root)
    merge(new, fragment, rules)
    if not contains(new, fragment):
        raise KvmValidationError("The xml option cannot be merged into the definition")
    return new


def xml_parts(root, fragment, rules: Rules) -> str:
    """The parts of ``root`` the fragment touches (for the diff)."""
    parts = []
    for child in fragment:
        if not isinstance(child.tag, str) or child.tag == "name":
            continue
        if child.tag in rules.lists:
            for item in child:
                found = [d for d in root.findall(f"{child.tag}/{item.tag}") if contains(d, item)]
                parts += [_xml.to_string(d) for d in found]
            continue
        found = candidates(root, child, rules) if child.tag not in rules.repeated else []
        if found:
            parts.append(_xml.to_string(found[0]))
    return "".join(parts)


def diff_parts(actual_root, new_root, fragment, rules: Rules) -> tuple[str | None, str]:
    """(before, after) of the parts the fragment touches; equal when nothing changes."""
    after = xml_parts(new_root, fragment, rules)
    if actual_root is not None and contains(actual_root, fragment):
        return after, after
    before = xml_parts(actual_root, fragment, rules) if actual_root is not None else None
    return (None if before == after else before), after
