# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""What the libvirt host has: interfaces (is this a bridge?) and routes.

For a local URI (``qemu:///system``) the module runs on the libvirt host, so sysfs and
procfs answer directly. For a remote URI the module runs elsewhere: interfaces are asked
through libvirt's interface API (udev backend) and the host's routes cannot be read, so
only the other libvirt networks are checked for overlapping subnets.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Optional

from . import _xml
from ._errors import is_error
from ._libvirt import is_this_machine, libvirt
from ._network_model import Route


class SysfsHost:
    """The machine the module runs on, read through /sys and /proc."""

    def __init__(self, sys_root: str = "/sys/class/net", proc_root: str = "/proc/net") -> None:
        self.sys_root = sys_root
        self.proc_root = proc_root

    def interface_kind(self, name: str) -> Optional[str]:
        path = os.path.join(self.sys_root, name)
        if not name or "/" in name or not os.path.exists(path):
            return None
        return "bridge" if os.path.isdir(os.path.join(path, "bridge")) else "other"

    def routes(self) -> list[Route]:
        return self._routes4() + self._routes6()

    def _routes4(self) -> list[Route]:
        routes = []
        try:
            with open(os.path.join(self.proc_root, "route")) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            return routes
        for line in lines:
            cols = line.split()
            if len(cols) < 8:
                continue
            dest = ipaddress.IPv4Address(int(cols[1], 16).to_bytes(4, "little"))
            mask = ipaddress.IPv4Address(int(cols[7], 16).to_bytes(4, "little"))
            flags = int(cols[3], 16)
            net = ipaddress.ip_network(f"{dest}/{mask}", strict=False)
            routes.append(Route(net, cols[0], connected=not flags & 0x2))
        return routes

    def _routes6(self) -> list[Route]:
        routes = []
        try:
            with open(os.path.join(self.proc_root, "ipv6_route")) as fh:
                lines = fh.read().splitlines()
        except OSError:
            return routes
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[9] == "lo":
                continue
            prefix = int(cols[1], 16)
            if prefix in (0, 128):
                continue
            net = ipaddress.ip_network(
                f"{ipaddress.IPv6Address(bytes.fromhex(cols[0]))}/{prefix}", strict=False
            )
            if net.is_link_local or net.is_multicast:
                continue
            routes.append(Route(net, cols[9], connected=not int(cols[8], 16) & 0x2))
        return routes


class LibvirtHost:
    """A host known only through the libvirt connection (remote URIs, the test driver)."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def interface_kind(self, name: str) -> Optional[str]:
        try:
            iface = self.conn.interfaceLookupByName(name)
        except libvirt.libvirtError as exc:
            if is_error(exc, libvirt.VIR_ERR_NO_INTERFACE):
                return None
            return "unknown"  # no interface driver on that host, or no permission
        try:
            root = _xml.parse(iface.XMLDesc(0), "interface XML")
        except libvirt.libvirtError:
            return "unknown"
        return "bridge" if root.get("type") == "bridge" else "other"

    def routes(self) -> Optional[list[Route]]:
        return None


def host_for(uri: str, conn):
    return SysfsHost() if is_this_machine(uri) else LibvirtHost(conn)
