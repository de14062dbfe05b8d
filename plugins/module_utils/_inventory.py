# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""What the ``virtops.kvm.libvirt`` inventory plugin reads from one hypervisor.

The listing is ``_domain_info.DomainInfo`` (one ``getAllDomainStats``, filtered
``listAllDomains``, one ``DHCPLeases`` per network, the agent only where its channel is
connected). This module only keeps apart where each address came from, so the plugin can
prefer one source over another, and turns a guest into plain, cacheable data.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ._domain_info import DomainInfo
from ._errors import from_libvirt
from ._libvirt import libvirt

ADDRESS_SOURCES = ("lease", "agent", "arp")


class _Listing(DomainInfo):
    """DomainInfo that remembers the lease table it read, to tell lease from agent addresses."""

    lease_map: dict[str, list[str]]

    def _leases(self) -> dict[str, list[str]]:
        self.lease_map = super()._leases()
        return self.lease_map


def _usable(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


def _arp_addresses(dom) -> dict[str, list[str]]:
    """MAC -> addresses from the host's ARP table (one call per running guest)."""
    source = getattr(libvirt, "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP", None)
    if source is None:
        return {}
    try:
        found = dom.interfaceAddresses(source)
    except libvirt.libvirtError:
        return {}
    result: dict[str, list[str]] = {}
    for data in found.values():
        mac = (data.get("hwaddr") or "").lower()
        for addr in data.get("addrs") or []:
            result.setdefault(mac, []).append(addr["addr"])
    return result


def pick_address(
    addresses: dict[str, list[str]], order: list[str]
) -> tuple[str | None, str | None]:
    """The first IPv4 address in source ``order``: (address, source) or (None, None)."""
    for source in order:
        for addr in addresses.get(source) or []:
            try:
                if ipaddress.ip_address(addr).version == 4:
                    return addr, source
            except ValueError:
                continue
    return None, None


def read_hypervisor(
    conn,
    uri: str,
    *,
    sources: list[str],
    states: list[str] | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """The guests of one hypervisor as plain data (what the inventory caches)."""
    try:
        hypervisor = conn.getHostname()
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, f"read the host name of {uri}") from exc
    info_sources = tuple(s for s in sources if s in ("lease", "agent"))
    listing = _Listing(conn, ip_sources=info_sources)
    listing.lease_map = {}
    guests = listing.collect(states=states or None, tags=tags or None)
    result = []
    for guest in guests:
        result.append(guest_record(guest, listing.lease_map, sources=sources, conn=conn, uri=uri))
    return {"uri": uri, "hypervisor": hypervisor, "guests": result}


def guest_record(
    guest: dict[str, Any],
    lease_map: dict[str, list[str]],
    *,
    sources: list[str],
    conn=None,
    uri: str,
) -> dict[str, Any]:
    """One guest of ``DomainInfo.collect`` with its addresses split by source."""
    by_source: dict[str, list[str]] = {s: [] for s in sources}
    interfaces = []
    arp: dict[str, list[str]] | None = None
    for nic in guest.get("interfaces") or []:
        mac = (nic.get("mac") or "").lower()
        leased = [a for a in lease_map.get(mac, []) if _usable(a)]
        other = [a for a in nic.get("ip_addresses") or [] if _usable(a) and a not in leased]
        nic_sources: dict[str, list[str]] = {}
        if "lease" in by_source:
            nic_sources["lease"] = sorted(set(leased))
        if "agent" in by_source:
            nic_sources["agent"] = sorted(set(other))
        if "arp" in by_source and guest["state"] == "running" and conn is not None:
            if arp is None:
                arp = _arp_addresses(conn.lookupByUUIDString(guest["uuid"]))
            nic_sources["arp"] = sorted({a for a in arp.get(mac, []) if _usable(a)})
        ordered: list[str] = []
        for source in sources:
            for addr in nic_sources.get(source, []):
                by_source[source].append(addr)
                if addr not in ordered:
                    ordered.append(addr)
        interfaces.append(
            {
                "mac": mac or None,
                "type": nic.get("type"),
                "source": nic.get("source"),
                "target": nic.get("target"),
                "addresses": ordered,
            }
        )
    config = guest.get("config") or {}
    stats = guest.get("stats") or {}
    return {
        "name": guest["name"],
        "uuid": guest["uuid"],
        "uri": uri,
        "state": guest["state"],
        "active": guest["active"],
        "persistent": guest["persistent"],
        "autostart": guest["autostart"],
        "tags": list(config.get("tags") or []),
        "title": config.get("title") or None,
        "description": config.get("description") or None,
        "memory_mib": config.get("memory"),
        "vcpus": stats.get("vcpus_current") or config.get("vcpus"),
        "snapshot_count": guest.get("snapshot_count", 0),
        "interfaces": interfaces,
        "addresses": by_source,
        "errors": list(guest.get("errors") or []),
    }
