# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Where to connect to a guest's consoles: every graphics device (VNC, SPICE) and every
serial and console device, read from a definition. Read from the live definition of a
running guest, the ports are the ones QEMU listens on, automatic ones included (the
inactive definition has none for them). Console passwords are never read here.
"""

from __future__ import annotations

from typing import Any

from . import _xml
from ._libvirt import libvirt


def _port(value: str | None) -> int | None:
    """A port attribute; -1 (or none) is an automatic port not (yet) allocated."""
    try:
        port = int(value) if value is not None else None
    except ValueError:
        return None
    return port if port is not None and port > 0 else None


def _graphics(elem) -> dict[str, Any]:
    listen_elem = elem.find("listen")
    listen_type = listen_elem.get("type") if listen_elem is not None else None
    listen = elem.get("listen")
    if listen is None and listen_elem is not None:
        listen = listen_elem.get("address")
    socket = elem.get("socket")
    if socket is None and listen_type == "socket":
        socket = listen_elem.get("socket")
    entry: dict[str, Any] = {
        "device": "graphics",
        "type": elem.get("type"),
        "listen": listen,
        "port": _port(elem.get("port")),
        "autoport": elem.get("autoport") == "yes" or elem.get("port") in (None, "-1"),
        "socket": socket,
    }
    if elem.get("type") == "spice":
        entry["tls_port"] = _port(elem.get("tlsPort"))
    if listen_type == "network":
        entry["network"] = listen_elem.get("network")
    return entry


def _character(elem) -> dict[str, Any]:
    ctype = elem.get("type", "pty")
    source = elem.find("source")
    target = elem.find("target")
    src = dict(source.attrib) if source is not None else {}
    target_port = target.get("port") if target is not None else None
    entry: dict[str, Any] = {
        "device": elem.tag,
        "type": ctype,
        "target_type": target.get("type") if target is not None else None,
        "target_port": int(target_port) if target_port and target_port.isdigit() else None,
        "path": None,
        "listen": None,
        "port": None,
    }
    if ctype == "pty":
        entry["path"] = elem.get("tty") or src.get("path")  # /dev/pts/N while it runs
    elif ctype in ("file", "unix", "dev", "pipe"):
        entry["path"] = src.get("path")
    elif ctype in ("tcp", "udp", "telnet"):
        entry["listen"] = src.get("host")
        entry["port"] = _port(src.get("service"))
        entry["mode"] = src.get("mode")
    return entry


def consoles(root) -> list[dict[str, Any]]:
    """Graphics first, then serial and console devices, in the definition's order."""
    if root is None:
        return []
    found = [_graphics(e) for e in root.findall("devices/graphics")]
    found += [_character(e) for e in root.findall("devices/serial")]
    found += [_character(e) for e in root.findall("devices/console")]
    return found


def consoles_of(dom, inactive_root, *, active: bool) -> list[dict[str, Any]]:
    """The consoles of ``dom`` as they are now: from the live definition while it is
    active, else from ``inactive_root``."""
    if dom is not None and active:
        try:
            return consoles(_xml.parse(dom.XMLDesc(0), "live domain XML"))
        except libvirt.libvirtError:
            pass  # stopped meanwhile
    return consoles(inactive_root)
