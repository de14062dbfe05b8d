# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Typed model of a libvirt virtual network: parse from XML, build XML, validate.

Only the settings the collection manages are modelled. Everything libvirt generates
(uuid, the bridge name and MAC address when the user gave none, NAT port ranges, STP)
is left in the XML untouched and never compared.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable  # noqa: UP035  (Python 3.8 targets)

from . import _xml
from ._check_mode import assumed_in_check_mode
from ._errors import KvmValidationError

MODES = ("nat", "route", "isolated", "bridge", "open")
# Modes in which libvirt creates and owns the bridge (and runs dnsmasq).
LIBVIRT_BRIDGE_MODES = ("nat", "route", "isolated", "open")

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_HOSTNAME_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


@dataclass(frozen=True)
class DhcpRange:
    start: str
    end: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end}

    def xml(self) -> str:
        return f"<range start='{self.start}' end='{self.end}'/>"


@dataclass(frozen=True)
class DhcpHost:
    ip: str
    mac: str | None = None
    name: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the entry across changes: its MAC, else its name (IPv6)."""
        return ("mac", self.mac) if self.mac else ("name", self.name or "")

    def to_dict(self) -> dict[str, Any]:
        return {"mac": self.mac, "ip": self.ip, "name": self.name}

    def xml(self) -> str:
        elem = _xml.etree.Element("host")
        for attr in ("mac", "name", "ip"):
            value = getattr(self, attr)
            if value is not None:
                elem.set(attr, value)
        return _xml.to_string(elem, pretty=False)


@dataclass(frozen=True)
class DnsHost:
    ip: str
    hostnames: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ip": self.ip, "hostnames": list(self.hostnames)}

    def xml(self) -> str:
        elem = _xml.etree.Element("host", ip=self.ip)
        for name in self.hostnames:
            _xml.sub(elem, "hostname", name)
        return _xml.to_string(elem, pretty=False)


@dataclass(frozen=True)
class IpConfig:
    """One ``<ip>`` element: the host's address on the network and its DHCP service."""

    address: str  # interface notation, e.g. 198.18.5.1/24 or fd00:5::1/64
    dhcp_ranges: tuple[DhcpRange, ...] = ()
    dhcp_hosts: tuple[DhcpHost, ...] = ()

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.address)

    @property
    def family(self) -> str:
        return "ipv4" if self.interface.version == 4 else "ipv6"

    @property
    def has_dhcp(self) -> bool:
        return bool(self.dhcp_ranges or self.dhcp_hosts)

    def sorted(self) -> IpConfig:
        return replace(
            self,
            dhcp_ranges=tuple(sorted(self.dhcp_ranges, key=_range_sort_key)),
            dhcp_hosts=tuple(sorted(self.dhcp_hosts, key=_host_sort_key)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "family": self.family,
            "dhcp_ranges": [r.to_dict() for r in self.dhcp_ranges],
            "dhcp_hosts": [h.to_dict() for h in self.dhcp_hosts],
        }


@dataclass(frozen=True)
class NetworkSpec:
    """The managed settings of one network. ``None`` means "not set"."""

    name: str
    mode: str = "nat"
    bridge: str | None = None
    forward_dev: str | None = None
    mtu: int | None = None
    domain: str | None = None
    addresses: tuple[IpConfig, ...] = ()
    dns_hosts: tuple[DnsHost, ...] = field(default_factory=tuple)

    def normalized(self) -> NetworkSpec:
        """Order-insensitive form used for comparisons (libvirt keeps user order)."""
        return replace(
            self,
            addresses=tuple(sorted((ip.sorted() for ip in self.addresses), key=_ip_sort_key)),
            dns_hosts=tuple(sorted(self.dns_hosts, key=lambda h: _addr_key(h.ip))),
        )

    def ip_by_address(self, address: str) -> tuple[int, IpConfig] | None:
        for index, ip in enumerate(self.addresses):
            if ip.address == address:
                return index, ip
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "bridge": self.bridge,
            "forward_dev": self.forward_dev,
            "mtu": self.mtu,
            "domain": self.domain,
            "addresses": [ip.to_dict() for ip in self.addresses],
            "dns_hosts": [h.to_dict() for h in self.dns_hosts],
        }


def _addr_key(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return (addr.version, int(addr))


def _ip_sort_key(ip: IpConfig) -> tuple[int, int, int]:
    iface = ip.interface
    return (iface.version, int(iface.ip), iface.network.prefixlen)


def _range_sort_key(r: DhcpRange) -> tuple[int, int]:
    return _addr_key(r.start)


def _host_sort_key(h: DhcpHost) -> tuple[tuple[int, int], str, str]:
    return (_addr_key(h.ip), h.mac or "", h.name or "")


# --------------------------------------------------------------------------------------
# Normalizing user input


def norm_ip(value: Any, what: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError as exc:
        raise KvmValidationError(f"{what}: {value!r} is not a valid IP address") from exc


def norm_mac(value: Any, what: str) -> str:
    mac = str(value).strip().lower().replace("-", ":")
    if not _MAC_RE.match(mac):
        raise KvmValidationError(f"{what}: {value!r} is not a valid MAC address")
    if int(mac[:2], 16) & 1:
        raise KvmValidationError(f"{what}: {value!r} is a multicast MAC address")
    return mac


def norm_interface(value: Any, what: str) -> str:
    text = str(value).strip()
    if "/" not in text:
        raise KvmValidationError(
            f"{what}: {value!r} needs a prefix length, e.g. 198.18.5.1/24 or fd00:5::1/64"
        )
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise KvmValidationError(f"{what}: {value!r} is not a valid address/prefix") from exc
    return f"{iface.ip}/{iface.network.prefixlen}"


def spec_from_params(params: dict[str, Any], base: NetworkSpec | None) -> NetworkSpec:
    """The desired spec: the module options over ``base`` (the current network, if any).

    Options left unset keep what the network has; lists, when given, are the whole truth.
    """
    base = base or NetworkSpec(name=params["name"])
    changes: dict[str, Any] = {}
    if params.get("mode") is not None:
        changes["mode"] = params["mode"]
    for opt in ("bridge", "forward_dev", "domain"):
        if params.get(opt) is not None:
            changes[opt] = params[opt].strip() or None
    if params.get("mtu") is not None:
        changes["mtu"] = params["mtu"] or None
    if params.get("addresses") is not None:
        changes["addresses"] = tuple(_ip_from_param(p) for p in params["addresses"])
    if params.get("dns_hosts") is not None:
        changes["dns_hosts"] = tuple(_dns_host_from_param(p) for p in params["dns_hosts"])
    spec = replace(base, **changes)
    if (spec.mode == "bridge") != (base.mode == "bridge") and params.get("bridge") is None:
        # A libvirt-made bridge is not a host bridge to attach to, and the other way round.
        spec = replace(spec, bridge=None)
    return spec


def _ip_from_param(p: dict[str, Any]) -> IpConfig:
    address = norm_interface(p["address"], "addresses.address")
    ranges = tuple(
        DhcpRange(
            norm_ip(r["start"], f"dhcp_ranges of {address}"),
            norm_ip(r["end"], f"dhcp_ranges of {address}"),
        )
        for r in p.get("dhcp_ranges") or ()
    )
    hosts = []
    for h in p.get("dhcp_hosts") or ():
        what = f"dhcp_hosts of {address}"
        hosts.append(
            DhcpHost(
                ip=norm_ip(h["ip"], what),
                mac=norm_mac(h["mac"], what) if h.get("mac") else None,
                name=(h.get("name") or "").strip() or None,
            )
        )
    return IpConfig(address=address, dhcp_ranges=ranges, dhcp_hosts=tuple(hosts))


def _dns_host_from_param(p: dict[str, Any]) -> DnsHost:
    names = tuple(n.strip() for n in p.get("hostnames") or () if n and n.strip())
    return DnsHost(ip=norm_ip(p["ip"], "dns_hosts.ip"), hostnames=names)


# --------------------------------------------------------------------------------------
# XML <-> model


def parse_network(xml_text: str) -> NetworkSpec:
    root = _xml.parse(xml_text, "network XML")
    fwd = root.find("forward")
    mode = "isolated" if fwd is None else fwd.get("mode", "nat")
    forward_dev = fwd.get("dev") if fwd is not None else None
    mtu = _xml.attr(root, "mtu", "size")
    addresses = tuple(_parse_ip(ip) for ip in root.findall("ip"))
    dns_hosts = tuple(
        DnsHost(
            ip=str(ipaddress.ip_address(h.get("ip"))),
            hostnames=tuple((n.text or "").strip() for n in h.findall("hostname")),
        )
        for h in root.findall("dns/host")
    )
    return NetworkSpec(
        name=_xml.text(root, "name") or "",
        mode=mode,
        bridge=_xml.attr(root, "bridge", "name"),
        forward_dev=forward_dev,
        mtu=int(mtu) if mtu else None,
        domain=_xml.attr(root, "domain", "name"),
        addresses=addresses,
        dns_hosts=dns_hosts,
    )


def _parse_ip(elem) -> IpConfig:
    addr = ipaddress.ip_address(elem.get("address"))
    prefix = elem.get("prefix")
    if prefix is None and elem.get("netmask"):
        prefix = ipaddress.ip_network(f"0.0.0.0/{elem.get('netmask')}").prefixlen
    if prefix is None:
        prefix = 24 if addr.version == 4 else 64  # libvirt's defaults for a classless <ip>
    ranges = tuple(
        DhcpRange(
            str(ipaddress.ip_address(r.get("start"))), str(ipaddress.ip_address(r.get("end")))
        )
        for r in elem.findall("dhcp/range")
    )
    hosts = tuple(
        DhcpHost(
            ip=str(ipaddress.ip_address(h.get("ip"))),
            mac=h.get("mac").lower() if h.get("mac") else None,
            name=h.get("name"),
        )
        for h in elem.findall("dhcp/host")
        if h.get("ip")
    )
    return IpConfig(address=f"{addr}/{prefix}", dhcp_ranges=ranges, dhcp_hosts=hosts)


def build_xml(spec: NetworkSpec, base_xml: str | None = None) -> str:
    """XML for ``spec``: from scratch, or ``base_xml`` (the current config) edited in place.

    Editing in place keeps what the collection does not manage (uuid, generated bridge
    name and MAC, NAT port ranges, port groups, DNS forwarders, TFTP/BOOTP settings).
    """
    if base_xml is None:
        root = _xml.etree.Element("network")
        _xml.sub(root, "name", spec.name)
        old = None
    else:
        root = _xml.parse(base_xml, "network XML")
        old = parse_network(base_xml)

    # <forward>: rebuilt only when the mode or the device changes, else kept (NAT ports...).
    fwd = root.find("forward")
    if old is None or old.mode != spec.mode or old.forward_dev != spec.forward_dev:
        _xml.remove(fwd)
        if spec.mode != "isolated":
            fwd = _xml.etree.Element("forward", mode=spec.mode)
            if spec.forward_dev:
                fwd.set("dev", spec.forward_dev)
            _insert_after_name(root, fwd)

    # <bridge>: libvirt only accepts a plain name in bridge mode.
    br = root.find("bridge")
    mode_switch = old is not None and (old.mode == "bridge") != (spec.mode == "bridge")
    if spec.bridge is None or mode_switch:
        _xml.remove(br)
        br = None
    if spec.bridge is not None:
        if br is None:
            br = _xml.sub(root, "bridge")
        br.set("name", spec.bridge)
    if spec.mode == "bridge":
        _xml.remove(root.find("mac"))  # refused by libvirt in bridge mode

    _set_or_remove(root, "mtu", "size", spec.mtu)
    dom = root.find("domain")
    if spec.domain is None:
        _xml.remove(dom)
    elif dom is None:
        _xml.sub(root, "domain", name=spec.domain)
    elif dom.get("name") != spec.domain:
        dom.set("name", spec.domain)

    _build_dns_hosts(root, spec.dns_hosts)
    _build_ips(root, spec.addresses)
    return _xml.to_string(root)


def _insert_after_name(root, elem) -> None:
    name = root.find("name")
    idx = list(root).index(name) + 1 if name is not None else 0
    uuid = root.find("uuid")
    if uuid is not None:
        idx = max(idx, list(root).index(uuid) + 1)
    root.insert(idx, elem)


def _set_or_remove(root, tag: str, attr: str, value: Any) -> None:
    elem = root.find(tag)
    if value is None:
        _xml.remove(elem)
        return
    if elem is None:
        elem = _xml.sub(root, tag)
    elem.set(attr, str(value))


def _build_dns_hosts(root, hosts: Iterable[DnsHost]) -> None:
    dns = root.find("dns")
    if dns is not None:
        for old in dns.findall("host"):
            dns.remove(old)
    hosts = list(hosts)
    if hosts:
        if dns is None:
            dns = _xml.sub(root, "dns")
        for h in hosts:
            dns.append(_xml.parse(h.xml(), "DNS host"))
    elif dns is not None and len(dns) == 0 and not dns.attrib:
        _xml.remove(dns)


def _build_ips(root, addresses: Iterable[IpConfig]) -> None:
    existing = {}
    for elem in root.findall("ip"):
        existing.setdefault(_parse_ip(elem).address, elem)
        root.remove(elem)
    for ip in addresses:
        elem = existing.get(ip.address)
        if elem is None:
            iface = ip.interface
            elem = _xml.etree.Element("ip")
            if iface.version == 6:
                elem.set("family", "ipv6")
            elem.set("address", str(iface.ip))
            elem.set("prefix", str(iface.network.prefixlen))
        dhcp = elem.find("dhcp")
        if dhcp is not None:
            for child in dhcp.findall("range") + dhcp.findall("host"):
                dhcp.remove(child)
        if ip.has_dhcp:
            if dhcp is None:
                dhcp = _xml.sub(elem, "dhcp")
            for r in ip.dhcp_ranges:
                dhcp.append(_xml.parse(r.xml(), "DHCP range"))
            for h in ip.dhcp_hosts:
                dhcp.append(_xml.parse(h.xml(), "DHCP host"))
        elif dhcp is not None and len(dhcp) == 0:
            _xml.remove(dhcp)
        root.append(elem)


# --------------------------------------------------------------------------------------
# Validation (before anything changes)


@dataclass(frozen=True)
class Route:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    dev: str
    connected: bool  # on-link (no gateway): a subnet of a host interface


@dataclass(frozen=True)
class OtherNetwork:
    name: str
    mode: str
    bridge: str | None
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    active: bool


def validate_spec(spec: NetworkSpec) -> None:
    """Checks that need nothing but the spec itself."""
    if not spec.name or "/" in spec.name:
        raise KvmValidationError(f"Invalid network name {spec.name!r}")
    if spec.mode not in MODES:
        raise KvmValidationError(f"mode must be one of {', '.join(MODES)}, not {spec.mode!r}")
    if spec.bridge is not None and not _IFNAME_RE.match(spec.bridge):
        raise KvmValidationError(
            f"bridge {spec.bridge!r} is not a valid interface name (1-15 characters, no spaces)"
        )
    if spec.mtu is not None and not 68 <= spec.mtu <= 65535:
        raise KvmValidationError(f"mtu {spec.mtu} is out of range (68-65535)")
    if spec.domain is not None and not _HOSTNAME_RE.match(spec.domain):
        raise KvmValidationError(f"domain {spec.domain!r} is not a valid DNS domain name")

    if spec.mode == "bridge":
        if not spec.bridge:
            raise KvmValidationError(
                "mode=bridge needs bridge: the name of an existing bridge on the host"
            )
        unsupported = [
            opt
            for opt, value in (
                ("addresses", spec.addresses),
                ("dns_hosts", spec.dns_hosts),
                ("domain", spec.domain),
                ("mtu", spec.mtu),
                ("forward_dev", spec.forward_dev),
            )
            if value
        ]
        if unsupported:
            raise KvmValidationError(
                "mode=bridge attaches guests to an existing host bridge; libvirt runs no "
                f"address, DHCP or DNS service there, so {', '.join(unsupported)} cannot be set"
            )
    if spec.forward_dev and spec.mode not in ("nat", "route"):
        raise KvmValidationError(
            f"forward_dev is only used with mode nat or route, not {spec.mode}"
        )

    seen: dict[Any, str] = {}
    dhcp_family: dict[str, str] = {}
    for ip in spec.addresses:
        _validate_ip(ip)
        subnet = ip.interface.network
        for other_net, other_addr in seen.items():
            if subnet.overlaps(other_net):
                raise KvmValidationError(
                    f"addresses {other_addr} and {ip.address} overlap: each needs its own subnet"
                )
        seen[subnet] = ip.address
        if ip.has_dhcp:
            if ip.family in dhcp_family:
                raise KvmValidationError(
                    f"DHCP can be served on one {ip.family} address per network, not on both "
                    f"{dhcp_family[ip.family]} and {ip.address}"
                )
            dhcp_family[ip.family] = ip.address

    by_ip: dict[str, DnsHost] = {}
    for h in spec.dns_hosts:
        if not h.hostnames:
            raise KvmValidationError(f"dns_hosts entry {h.ip} needs at least one hostname")
        for name in h.hostnames:
            if not _HOSTNAME_RE.match(name):
                raise KvmValidationError(f"dns_hosts entry {h.ip}: invalid hostname {name!r}")
        if h.ip in by_ip:
            raise KvmValidationError(
                f"dns_hosts has {h.ip} twice: list all its hostnames in one entry"
            )
        by_ip[h.ip] = h


def _validate_ip(ip: IpConfig) -> None:
    iface = ip.interface
    net = iface.network
    where = f"address {ip.address}"
    if iface.version == 4:
        if net.prefixlen > 30:
            raise KvmValidationError(f"{where}: prefix /{net.prefixlen} leaves no room for guests")
        if iface.ip in (net.network_address, net.broadcast_address):
            raise KvmValidationError(
                f"{where}: the host address cannot be the subnet's network or broadcast address"
            )
    else:
        if net.prefixlen > 126:
            raise KvmValidationError(f"{where}: prefix /{net.prefixlen} leaves no room for guests")
        if iface.ip == net.network_address:
            raise KvmValidationError(f"{where}: the host address cannot be the subnet address")
        if iface.ip.is_link_local or iface.ip.is_multicast:
            raise KvmValidationError(f"{where}: link-local and multicast addresses are not usable")

    def usable(addr: Any) -> bool:
        if addr not in net or addr == net.network_address:
            return False
        return not (iface.version == 4 and addr == net.broadcast_address)

    spans: list[tuple[Any, Any]] = []
    for r in ip.dhcp_ranges:
        start, end = ipaddress.ip_address(r.start), ipaddress.ip_address(r.end)
        label = f"DHCP range {r.start}-{r.end} of {ip.address}"
        if start.version != iface.version or end.version != iface.version:
            raise KvmValidationError(f"{label}: address family differs from {ip.address}")
        if not (usable(start) and usable(end)):
            raise KvmValidationError(f"{label} is not inside the subnet {net}")
        if start > end:
            raise KvmValidationError(f"{label}: start is after end")
        if start <= iface.ip <= end:
            raise KvmValidationError(f"{label} contains the host's own address {iface.ip}")
        for s2, e2 in spans:
            if start <= e2 and s2 <= end:
                raise KvmValidationError(f"{label} overlaps the DHCP range {s2}-{e2}")
        spans.append((start, end))

    macs: set[str] = set()
    ips: set[str] = set()
    names: set[str] = set()
    for h in ip.dhcp_hosts:
        label = f"DHCP host {h.mac or h.name} ({h.ip}) of {ip.address}"
        addr = ipaddress.ip_address(h.ip)
        if addr.version != iface.version:
            raise KvmValidationError(f"{label}: address family differs from {ip.address}")
        if not usable(addr):
            raise KvmValidationError(f"{label}: {h.ip} is not inside the subnet {net}")
        if addr == iface.ip:
            raise KvmValidationError(f"{label}: {h.ip} is the host's own address")
        if iface.version == 4 and not (h.mac or h.name):
            raise KvmValidationError(f"{label}: an IPv4 host entry needs a mac (or a name)")
        if iface.version == 6:
            if h.mac:
                raise KvmValidationError(
                    f"{label}: libvirt matches IPv6 hosts by name, not by MAC: drop mac"
                )
            if not h.name:
                raise KvmValidationError(f"{label}: an IPv6 host entry needs a name")
        if h.name is not None and not _HOSTNAME_RE.match(h.name):
            raise KvmValidationError(f"{label}: invalid host name {h.name!r}")
        for value, pool, kind in ((h.mac, macs, "MAC"), (h.ip, ips, "IP"), (h.name, names, "name")):
            if value is None:
                continue
            if value in pool:
                raise KvmValidationError(
                    f"DHCP hosts of {ip.address}: {kind} {value} is used by more than one entry"
                )
            pool.add(value)


def validate_against_host(
    spec: NetworkSpec,
    *,
    others: Iterable[OtherNetwork],
    own_bridge: str | None,
    interface_kind,
    routes: list[Route] | None,
    check_mode: bool = False,
) -> list[str]:
    """Checks against the other networks and the host. Returns warnings.

    In check mode a host bridge that does not exist yet is a warning: an earlier task of the
    play may create it.

    ``interface_kind(name)`` says ``"bridge"``, ``"other"``, ``None`` (no such interface)
    or ``"unknown"`` (cannot tell); ``routes`` is None when the host's routes cannot be read.
    ``own_bridge`` is the bridge this network has now (its own route is no conflict).
    """
    warnings: list[str] = []
    others = list(others)
    subnets = [ip.interface.network for ip in spec.addresses]

    for other in others:
        shared_host_bridge = spec.mode == "bridge" and other.mode == "bridge"
        if spec.bridge and other.bridge == spec.bridge and not shared_host_bridge:
            raise KvmValidationError(
                f"bridge {spec.bridge} is already used by network {other.name!r}"
                + ("" if spec.mode == "bridge" else "; choose another name or leave it unset")
            )
        for mine in subnets:
            for theirs in other.subnets:
                if mine.overlaps(theirs):
                    raise KvmValidationError(
                        f"subnet {mine} overlaps {theirs} of network {other.name!r}"
                        f" ({'active' if other.active else 'inactive'}): libvirt cannot route "
                        "both; pick another subnet"
                    )

    if spec.mode == "bridge":
        kind = interface_kind(spec.bridge)
        if kind is None and check_mode:
            warnings.append(assumed_in_check_mode(f"Host bridge {spec.bridge}"))
        elif kind is None:
            raise KvmValidationError(
                f"bridge {spec.bridge} does not exist on the host: create it first "
                "(mode=bridge attaches guests to an existing bridge)"
            )
        if kind == "other":
            raise KvmValidationError(f"{spec.bridge} exists on the host but is not a bridge")
        if kind == "unknown":
            warnings.append(
                f"Could not check that bridge {spec.bridge} exists on the host "
                "(no interface information from this connection)"
            )
    elif spec.bridge and spec.bridge != own_bridge:
        kind = interface_kind(spec.bridge)
        if kind not in (None, "unknown"):
            raise KvmValidationError(
                f"bridge {spec.bridge} already exists on the host: libvirt creates the bridge "
                f"of a {spec.mode} network itself; choose a free name or leave bridge unset"
            )

    if spec.forward_dev:
        kind = interface_kind(spec.forward_dev)
        if kind is None:
            raise KvmValidationError(f"forward_dev {spec.forward_dev} does not exist on the host")
        if kind == "unknown":
            warnings.append(f"Could not check that forward_dev {spec.forward_dev} exists")

    if routes is None:
        if subnets:
            warnings.append(
                "Could not read the host's routes through this connection: only the "
                "other libvirt networks were checked for overlapping subnets"
            )
        return warnings
    for mine in subnets:
        for route in routes:
            if own_bridge and route.dev == own_bridge:
                continue
            if route.network.version != mine.version or route.network.prefixlen == 0:
                continue
            exact = route.network == mine
            if exact or (route.connected and route.network.overlaps(mine)):
                raise KvmValidationError(
                    f"subnet {mine} is already in use on the host: route {route.network} via "
                    f"{route.dev}; libvirt would refuse to start the network"
                )
    return warnings
