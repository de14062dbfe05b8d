"""Unit tests of _network_host: bridges and routes read from /sys and /proc, or through libvirt."""

from __future__ import annotations

import ipaddress

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._network_host import (
    LibvirtHost,
    SysfsHost,
    host_for,
)
from ansible_collections.virtops.kvm.plugins.module_utils._network_model import Route

from .migrate_fakes import error

ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT"


def route4(dev: str, dest: str, flags: int, mask: str) -> str:
    """A /proc/net/route line: addresses in the kernel's little-endian hex."""

    def le(addr: str) -> str:
        return ipaddress.IPv4Address(addr).packed[::-1].hex().upper()

    return f"{dev}\t{le(dest)}\t00000000\t{flags:04X}\t0\t0\t100\t{le(mask)}\t0\t0\t0"


def route6(net: str, dev: str, flags: int) -> str:
    n = ipaddress.ip_network(net)
    zero = "0" * 32
    return (
        f"{n.network_address.packed.hex()} {n.prefixlen:02x} {zero} 00 {zero}"
        f" 00000100 00000001 00000000 {flags:08x} {dev}"
    )


@pytest.fixture
def sysfs(tmp_path):
    net = tmp_path / "sys"
    (net / "br0" / "bridge").mkdir(parents=True)
    (net / "eth0").mkdir()
    proc = tmp_path / "proc"
    proc.mkdir()
    return SysfsHost(str(net), str(proc)), proc


def test_sysfs_tells_bridges_from_other_interfaces(sysfs):
    host, _root = sysfs
    assert host.interface_kind("br0") == "bridge"
    assert host.interface_kind("eth0") == "other"
    assert host.interface_kind("nope") is None


@pytest.mark.parametrize("name", ["", "br0/bridge", "../sys/br0"])
def test_sysfs_refuses_empty_names_and_paths(sysfs, name):
    host, _root = sysfs
    assert host.interface_kind(name) is None


def test_sysfs_without_route_files_has_no_routes(sysfs):
    host, _root = sysfs
    assert host.routes() == []


def test_ipv4_routes_decode_little_endian_and_mark_gateway_routes(sysfs):
    host, proc = sysfs
    (proc / "route").write_text(
        "\n".join(
            [
                ROUTE_HEADER,
                route4("br0", "198.18.5.0", 0x1, "255.255.255.0"),
                route4("eth0", "0.0.0.0", 0x3, "0.0.0.0"),
                route4("eth0", "198.19.0.0", 0x3, "255.255.0.0"),
                "short line",
            ]
        )
        + "\n"
    )
    assert host.routes() == [
        Route(ipaddress.ip_network("198.18.5.0/24"), "br0", connected=True),
        Route(ipaddress.ip_network("0.0.0.0/0"), "eth0", connected=False),
        Route(ipaddress.ip_network("198.19.0.0/16"), "eth0", connected=False),
    ]


def test_ipv6_routes_skip_loopback_host_default_link_local_and_multicast(sysfs):
    host, proc = sysfs
    (proc / "ipv6_route").write_text(
        "\n".join(
            [
                route6("fd00:1::/64", "br0", 0x1),
                route6("fd00:2::/48", "eth0", 0x3),
                route6("fd00:3::/64", "lo", 0x1),
                route6("fd00:4::1/128", "eth0", 0x1),
                route6("::/0", "eth0", 0x3),
                route6("fe80::/64", "br0", 0x1),
                route6("ff00::/8", "br0", 0x1),
                "too few columns",
            ]
        )
        + "\n"
    )
    assert host.routes() == [
        Route(ipaddress.ip_network("fd00:1::/64"), "br0", connected=True),
        Route(ipaddress.ip_network("fd00:2::/48"), "eth0", connected=False),
    ]


def test_libvirt_host_reads_interfaces_from_the_test_driver():
    conn = libvirt.open("test:///default")
    try:
        host = LibvirtHost(conn)
        assert host.interface_kind("eth1") == "other"  # the test driver's ethernet interface
        assert host.interface_kind("no-such-if") is None
        assert host.routes() is None
    finally:
        conn.close()


class _Conn:
    def __init__(self, exc=None, xml_exc=None, xml="<interface type='bridge' name='br0'/>"):
        self.exc, self.xml_exc, self.xml = exc, xml_exc, xml

    def interfaceLookupByName(self, name):
        if self.exc:
            raise self.exc
        return self

    def XMLDesc(self, flags=0):
        if self.xml_exc:
            raise self.xml_exc
        return self.xml


def test_libvirt_host_sees_a_bridge_and_says_unknown_when_it_cannot_ask():
    assert LibvirtHost(_Conn()).interface_kind("br0") == "bridge"
    denied = error(libvirt.VIR_ERR_NO_SUPPORT, "no interface driver")
    assert LibvirtHost(_Conn(exc=denied)).interface_kind("br0") == "unknown"
    assert LibvirtHost(_Conn(xml_exc=denied)).interface_kind("br0") == "unknown"


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("qemu:///system", SysfsHost),
        ("test:///default", LibvirtHost),
        ("qemu+ssh://198.18.0.5/system", LibvirtHost),
        ("qemu+tcp://198.18.0.5/system", LibvirtHost),
    ],
)
def test_host_for_reads_sysfs_only_for_this_machines_real_driver(uri, kind):
    assert isinstance(host_for(uri, object()), kind)
