# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""A domain's XML: read from libvirt, and elements put where libvirt's schema orders them.

Field writers patch an existing definition; these helpers create an element at its place
(top-level, in ``<devices>``) and drop containers they left empty, so a written definition
reads as libvirt would write it.
"""

from __future__ import annotations

from . import _xml
from ._errors import from_libvirt
from ._libvirt import libvirt

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None


def domain_xml(
    dom, *, inactive: bool = False, secure: bool = False, what: str = "the definition"
) -> str:
    """The guest's XML; ``secure`` (with secrets such as console passwords) only for a
    definition that is written back, never for one that is returned."""
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
    if secure:
        flags |= libvirt.VIR_DOMAIN_XML_SECURE
    try:
        return dom.XMLDesc(flags)
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, f"read {what} of guest {dom.name()}") from exc


def insert_first(parent, child, after: tuple[str, ...] = ()) -> None:
    """Insert ``child`` right after the last of the ``after`` tags (or first)."""
    index = 0
    for i, existing in enumerate(parent):
        if existing.tag in after:
            index = i + 1
    parent.insert(index, child)


def move_last(parent, tag: str) -> None:
    found = parent.find(tag)
    if found is not None:
        parent.remove(found)
        parent.append(found)


def devices_of(root):
    return _xml.ensure(root, "devices")


def place(root, elem, before: tuple[str, ...]) -> None:
    """Insert a top-level element before the first of ``before`` (libvirt's order)."""
    for i, existing in enumerate(root):
        if existing.tag in before:
            root.insert(i, elem)
            return
    root.append(elem)


TOP_ORDER = (
    "name",
    "uuid",
    "genid",
    "title",
    "description",
    "metadata",
    "maxMemory",
    "memory",
    "currentMemory",
    "blkiotune",
    "memtune",
    "memoryBacking",
    "vcpu",
    "vcpus",
    "iothreads",
    "iothreadids",
    "cputune",
    "numatune",
    "resource",
    "sysinfo",
    "bootloader",
    "os",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "pm",
    "devices",
)


def top(root, tag: str):
    """The top-level ``tag`` element, created at its place in libvirt's order."""
    elem = root.find(tag)
    if elem is None:
        elem = etree.Element(tag)
        later = TOP_ORDER[TOP_ORDER.index(tag) + 1 :] if tag in TOP_ORDER else ()
        place(root, elem, later)
    return elem


def drop_if_empty(elem) -> None:
    if elem is not None and len(elem) == 0 and not elem.attrib and not (elem.text or "").strip():
        _xml.remove(elem)


def set_text(root, tag: str, value: str | None) -> None:
    if value:
        top(root, tag).text = value
    else:
        _xml.remove(root.find(tag))


DEVICE_ORDER = (
    "emulator",
    "disk",
    "controller",
    "filesystem",
    "interface",
    "serial",
    "console",
    "channel",
    "input",
    "tpm",
    "graphics",
    "sound",
    "audio",
    "video",
    "hostdev",
    "watchdog",
    "memballoon",
    "rng",
)


def insert_device(container, elem) -> None:
    """Append a device after the last device of the same or an earlier kind."""
    order = DEVICE_ORDER.index(elem.tag) if elem.tag in DEVICE_ORDER else len(DEVICE_ORDER)
    anchor = None
    for child in container:
        rank = DEVICE_ORDER.index(child.tag) if child.tag in DEVICE_ORDER else len(DEVICE_ORDER)
        if rank <= order:
            anchor = child
    if anchor is None:
        container.insert(0, elem)
    else:
        anchor.addnext(elem)
