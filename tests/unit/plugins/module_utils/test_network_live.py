"""Unit tests of the live-update planner, replayed against libvirt's test driver."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._network import NetworkManager
from ansible_collections.virtops.kvm.plugins.module_utils._network_live import plan_live
from ansible_collections.virtops.kvm.plugins.module_utils._network_model import (
    DhcpHost,
    DhcpRange,
    DnsHost,
    IpConfig,
    NetworkSpec,
    build_xml,
    parse_network,
)

M1, M2, M3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


def net(hosts=(), ranges=(("198.18.20.100", "198.18.20.150"),), dns=(), extra_ips=()):
    return NetworkSpec(
        "live",
        addresses=(
            IpConfig("198.18.20.1/24", tuple(DhcpRange(*r) for r in ranges), tuple(hosts)),
            *extra_ips,
        ),
        dns_hosts=tuple(dns),
    )


@pytest.fixture
def conn():
    libvirt.registerErrorHandler(lambda *_: None, None)
    c = libvirt.open("test:///default")
    yield c
    c.close()


def replay(conn, live: NetworkSpec, desired: NetworkSpec) -> NetworkSpec:
    """Run the plan's update calls on a real (test driver) network; return what it has."""
    n = conn.networkCreateXML(build_xml(live))
    try:
        plan = plan_live(live, desired)
        assert plan.not_live == []
        manager = NetworkManager(conn, {"name": live.name}, host=object())
        for op in plan.ops:
            manager._update(n, op, libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE)
        return parse_network(n.XMLDesc(0))
    finally:
        n.destroy()


CASES = {
    "add host": (
        net([DhcpHost("198.18.20.10", M1, "a")]),
        net([DhcpHost("198.18.20.10", M1, "a"), DhcpHost("198.18.20.11", M2, "b")]),
    ),
    "edit host ip": (
        net([DhcpHost("198.18.20.10", M1, "a")]),
        net([DhcpHost("198.18.20.12", M1, "a")]),
    ),
    "rename host": (
        net([DhcpHost("198.18.20.10", M1, "a")]),
        net([DhcpHost("198.18.20.10", M1, "a2")]),
    ),
    "remove host": (
        net([DhcpHost("198.18.20.10", M1, "a"), DhcpHost("198.18.20.11", M2, "b")]),
        net([DhcpHost("198.18.20.11", M2, "b")]),
    ),
    "swap ips": (
        net([DhcpHost("198.18.20.10", M1, "a"), DhcpHost("198.18.20.11", M2, "b")]),
        net([DhcpHost("198.18.20.11", M1, "a"), DhcpHost("198.18.20.10", M2, "b")]),
    ),
    "new mac takes old ip": (
        net([DhcpHost("198.18.20.10", M1, "a")]),
        net([DhcpHost("198.18.20.10", M3, "a")]),
    ),
    "ranges": (
        net(ranges=[("198.18.20.100", "198.18.20.150")]),
        net(ranges=[("198.18.20.100", "198.18.20.160"), ("198.18.20.200", "198.18.20.210")]),
    ),
    "dns add and edit": (
        net(dns=[DnsHost("198.18.20.30", ("db",))]),
        net(dns=[DnsHost("198.18.20.30", ("db", "db2")), DnsHost("198.18.20.31", ("web",))]),
    ),
    "dns remove": (
        net(dns=[DnsHost("198.18.20.30", ("db",)), DnsHost("198.18.20.31", ("web",))]),
        net(dns=[DnsHost("198.18.20.31", ("web",))]),
    ),
    "ipv6 hosts": (
        net(extra_ips=[IpConfig("fd00:20::1/64", (), (DhcpHost("fd00:20::5", None, "a"),))]),
        net(
            extra_ips=[
                IpConfig(
                    "fd00:20::1/64",
                    (),
                    (DhcpHost("fd00:20::6", None, "a"), DhcpHost("fd00:20::7", None, "b")),
                )
            ]
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_reaches_desired_state_on_libvirt(conn, case):
    live, desired = CASES[case]
    result = replay(conn, live, desired)
    assert result.normalized() == desired.normalized()


def test_edit_with_same_mac_is_a_modify():
    live, desired = CASES["edit host ip"]
    ops = plan_live(live, desired).ops
    assert [(op.command, op.section) for op in ops] == [("modify", "ip-dhcp-host")]


def test_swap_uses_delete_then_add():
    live, desired = CASES["swap ips"]
    commands = [op.command for op in plan_live(live, desired).ops]
    assert commands.index("delete") < commands.index("add")


@pytest.mark.parametrize("case", sorted(CASES))
def test_nothing_to_do_gives_no_ops(case):
    live, desired = CASES[case]
    assert plan_live(live, live).ops == [] and plan_live(desired, desired).ops == []
    assert plan_live(live, desired).ops  # every case changes something


def test_dns_names_shared_between_entries_are_not_live():
    live = net(dns=[DnsHost("198.18.20.30", ("db",))])
    desired = net(dns=[DnsHost("198.18.20.30", ("db",)), DnsHost("fd00:20::30", ("db",))])
    plan = plan_live(live, desired)
    assert plan.not_live == ["dns_hosts"]
    assert plan.ops == []


def test_dhcp_on_new_address_is_not_live():
    live = net()
    desired = net(extra_ips=[IpConfig("fd00:20::1/64", (DhcpRange("fd00:20::10", "fd00:20::20"),))])
    plan = plan_live(live, desired)
    assert plan.not_live == ["dhcp_ranges"]


def test_moving_dhcp_between_two_ipv4_addresses_is_ordered():
    second = "198.18.21.1/24"
    live = net(extra_ips=[IpConfig(second)])
    desired = net(
        ranges=(), extra_ips=[IpConfig(second, (DhcpRange("198.18.21.10", "198.18.21.20"),))]
    )
    plan = plan_live(live, desired)
    assert plan.not_live == []
    assert [op.command for op in plan.ops] == ["delete", "add"]
