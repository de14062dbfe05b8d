# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Small lxml helpers shared by the XML models (parse safely, build, compare)."""

from __future__ import annotations

import re
from typing import Any

from ._errors import KvmValidationError

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None


# What XML 1.0 (and so every libvirt definition) cannot hold: C0 controls other than tab,
# newline and carriage return, lone surrogates, U+FFFE and U+FFFF. Written as the characters
# refused, not as the complement of those allowed: that class takes re 5-15 ms to compile,
# paid by every module at start.
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def invalid_char(value: str) -> tuple[int, str] | None:
    """Position and ``U+XXXX`` name of the first character XML cannot hold, else None."""
    found = _NOT_XML_CHAR.search(value)
    return None if found is None else (found.start(), f"U+{ord(found.group()):04X}")


def parser():
    # No DTDs, entities or network: libvirt XML never needs them and user XML must not use them.
    return etree.XMLParser(
        resolve_entities=False, no_network=True, remove_blank_text=True, remove_comments=True
    )


def parse(text: str | bytes, what: str = "XML"):
    """Parse a document, turning syntax errors into a validation error naming ``what``."""
    if isinstance(text, str):
        text = text.encode()
    try:
        return etree.fromstring(text, parser())
    except etree.XMLSyntaxError as exc:
        raise KvmValidationError(f"Malformed {what}: {exc}") from exc


def to_string(elem, *, pretty: bool = True) -> str:
    return etree.tostring(elem, pretty_print=pretty, encoding="unicode")


def sub(parent, tag: str, text: Any = None, **attrs: Any):
    """Append a child; attributes whose value is None are left out."""
    child = etree.SubElement(parent, tag, {k: _str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        child.text = _str(text)
    return child


def ensure(parent, tag: str):
    """The first child ``tag`` of ``parent``, created when missing."""
    child = parent.find(tag)
    if child is None:
        child = etree.SubElement(parent, tag)
    return child


def remove(elem) -> None:
    if elem is not None and elem.getparent() is not None:
        elem.getparent().remove(elem)


def text(elem, path: str, default: str | None = None) -> str | None:
    found = elem.find(path) if elem is not None else None
    if found is None or found.text is None:
        return default
    return found.text.strip()


def attr(elem, path: str, name: str, default: str | None = None) -> str | None:
    found = elem.find(path) if elem is not None else None
    if found is None:
        return default
    return found.get(name, default)


def canonical(elem) -> tuple:
    """A comparable form of an element: tag, sorted attributes, text, children in order."""
    txt = (elem.text or "").strip()
    return (
        elem.tag,
        tuple(sorted(elem.attrib.items())),
        txt,
        tuple(canonical(c) for c in elem if isinstance(c.tag, str)),
    )


def _str(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
