"""Unit tests of the network model: parse, build, normalize and validate."""

from __future__ import annotations

import ipaddress

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._network_model import (
    DhcpHost,
    DhcpRange,
    DnsHost,
    IpConfig,
    NetworkSpec,
    OtherNetwork,
    Route,
    build_xml,
    parse_network,
    spec_from_params,
    validate_against_host,
    validate_spec,
)

LIBVIRT_XML = """
<network connections='1'>
  <name>lab</name>
  <uuid>9e9904b3-1a26-4ecc-9ba5-d11da27f6c5d</uuid>
  <forward mode='nat'>
    <nat><port start='1024' end='65535'/></nat>
  </forward>
  <bridge name='virbr7' stp='on' delay='0'/>
  <mac address='52:54:00:af:31:b1'/>
  <domain name='lab.test'/>
  <dns>
    <forwarder addr='198.18.0.53'/>
    <host ip='198.18.5.20'><hostname>db</hostname><hostname>db2</hostname></host>
  </dns>
  <ip address='198.18.5.1' netmask='255.255.255.0'>
    <tftp root='/srv/tftp'/>
    <dhcp>
      <range start='198.18.5.100' end='198.18.5.150'/>
      <host mac='52:54:00:AA:00:01' name='a' ip='198.18.5.10'/>
      <bootp file='pxelinux.0'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd00:5:0:0::1' prefix='64'/>
</network>
"""


def params(**kw):
    base = {
        "name": "lab",
        "mode": None,
        "bridge": None,
        "forward_dev": None,
        "mtu": None,
        "domain": None,
        "addresses": None,
        "dns_hosts": None,
    }
    base.update(kw)
    return base


def test_parse_reads_managed_settings_and_normalizes():
    spec = parse_network(LIBVIRT_XML)
    assert spec.name == "lab"
    assert spec.mode == "nat"
    assert spec.bridge == "virbr7"
    assert spec.domain == "lab.test"
    assert [ip.address for ip in spec.addresses] == ["198.18.5.1/24", "fd00:5::1/64"]
    ip4 = spec.addresses[0]
    assert ip4.dhcp_ranges == (DhcpRange("198.18.5.100", "198.18.5.150"),)
    assert ip4.dhcp_hosts == (DhcpHost(ip="198.18.5.10", mac="52:54:00:aa:00:01", name="a"),)
    assert spec.dns_hosts == (DnsHost("198.18.5.20", ("db", "db2")),)


def test_isolated_when_no_forward():
    spec = parse_network("<network><name>x</name><ip address='198.18.9.1' prefix='24'/></network>")
    assert spec.mode == "isolated"


def test_build_round_trips_and_keeps_unmanaged_parts():
    spec = parse_network(LIBVIRT_XML)
    out = build_xml(spec, LIBVIRT_XML)
    assert parse_network(out) == spec
    for kept in ("9e9904b3", "52:54:00:af:31:b1", "<nat>", "forwarder", "tftp", "bootp"):
        assert kept in out


def test_build_from_scratch_round_trips():
    spec = NetworkSpec(
        name="new",
        mode="route",
        forward_dev="eth0",
        mtu=9000,
        domain="new.test",
        addresses=(
            IpConfig(
                "198.18.6.1/24",
                (DhcpRange("198.18.6.10", "198.18.6.20"),),
                (DhcpHost("198.18.6.5", "52:54:00:00:00:05", "five"),),
            ),
            IpConfig("fd00:6::1/64", (), (DhcpHost("fd00:6::5", None, "five"),)),
        ),
        dns_hosts=(DnsHost("198.18.6.7", ("seven",)),),
    )
    out = build_xml(spec)
    assert parse_network(out) == spec
    assert 'family="ipv6"' in out


def test_build_edits_change_only_what_differs():
    spec = parse_network(LIBVIRT_XML)
    params_ = params(mtu=1400, domain="", dns_hosts=[])
    desired = spec_from_params(params_, spec)
    out = build_xml(desired, LIBVIRT_XML)
    again = parse_network(out)
    assert again.mtu == 1400
    assert again.domain is None
    assert again.dns_hosts == ()
    assert "forwarder" in out  # the rest of <dns> stays


def test_mode_switch_to_bridge_drops_libvirt_bridge_and_mac():
    spec = parse_network(LIBVIRT_XML)
    desired = spec_from_params(
        params(mode="bridge", bridge="br0", addresses=[], dns_hosts=[], domain=""), spec
    )
    out = build_xml(desired, LIBVIRT_XML)
    assert "<mac" not in out and "stp" not in out
    assert parse_network(out).bridge == "br0"
    assert parse_network(out).mode == "bridge"


def test_switch_from_bridge_mode_forgets_host_bridge():
    base = NetworkSpec(name="lan", mode="bridge", bridge="br0")
    desired = spec_from_params(params(name="lan", mode="nat"), base)
    assert desired.bridge is None


def test_unset_options_keep_current_values():
    spec = parse_network(LIBVIRT_XML)
    assert spec_from_params(params(), spec) == spec


def test_params_normalize_case_and_forms():
    desired = spec_from_params(
        params(
            addresses=[
                {
                    "address": "FD00:7:0::1/64",
                    "dhcp_ranges": [],
                    "dhcp_hosts": [{"ip": "fd00:7::0:5", "mac": None, "name": "x"}],
                },
                {
                    "address": "198.18.7.1/24",
                    "dhcp_ranges": [],
                    "dhcp_hosts": [{"ip": "198.18.7.5", "mac": "52-54-00-AB-CD-EF", "name": None}],
                },
            ]
        ),
        None,
    )
    assert desired.addresses[0].address == "fd00:7::1/64"
    assert desired.addresses[0].dhcp_hosts[0].ip == "fd00:7::5"
    assert desired.addresses[1].dhcp_hosts[0].mac == "52:54:00:ab:cd:ef"


def test_order_does_not_matter_for_comparison():
    a = NetworkSpec(
        "n",
        addresses=(
            IpConfig(
                "198.18.8.1/24",
                (),
                (
                    DhcpHost("198.18.8.5", "52:54:00:00:00:05"),
                    DhcpHost("198.18.8.6", "52:54:00:00:00:06"),
                ),
            ),
            IpConfig("fd00:8::1/64"),
        ),
    )
    b = NetworkSpec(
        "n",
        addresses=(
            IpConfig("fd00:8::1/64"),
            IpConfig(
                "198.18.8.1/24",
                (),
                (
                    DhcpHost("198.18.8.6", "52:54:00:00:00:06"),
                    DhcpHost("198.18.8.5", "52:54:00:00:00:05"),
                ),
            ),
        ),
    )
    assert a != b
    assert a.normalized() == b.normalized()


# ---- validation --------------------------------------------------------------------


def ip4(ranges=(), hosts=(), address="198.18.10.1/24"):
    return IpConfig(address, tuple(DhcpRange(*r) for r in ranges), tuple(hosts))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (NetworkSpec("a/b"), "Invalid network name"),
        (NetworkSpec("n", mode="bridge"), "needs bridge"),
        (
            NetworkSpec("n", mode="bridge", bridge="br0", addresses=(ip4(),)),
            "addresses cannot be set",
        ),
        (NetworkSpec("n", mode="isolated", forward_dev="eth0"), "only used with mode nat"),
        (NetworkSpec("n", bridge="this-name-is-too-long"), "not a valid interface name"),
        (NetworkSpec("n", mtu=10), "out of range"),
        (NetworkSpec("n", addresses=(ip4(address="198.18.10.0/24"),)), "network or broadcast"),
        (NetworkSpec("n", addresses=(ip4(address="198.18.10.1/31"),)), "no room"),
        (
            NetworkSpec("n", addresses=(ip4(), ip4(address="198.18.10.129/25"))),
            "overlap",
        ),
        (
            NetworkSpec("n", addresses=(ip4([("198.18.11.10", "198.18.11.20")]),)),
            "not inside the subnet",
        ),
        (
            NetworkSpec("n", addresses=(ip4([("198.18.10.20", "198.18.10.10")]),)),
            "start is after end",
        ),
        (
            NetworkSpec("n", addresses=(ip4([("198.18.10.1", "198.18.10.10")]),)),
            "contains the host's own address",
        ),
        (
            NetworkSpec(
                "n",
                addresses=(
                    ip4([("198.18.10.10", "198.18.10.50"), ("198.18.10.40", "198.18.10.90")]),
                ),
            ),
            "overlaps the DHCP range",
        ),
        (
            NetworkSpec("n", addresses=(ip4([("198.18.10.10", "198.18.10.255")]),)),
            "not inside the subnet",
        ),
        (
            NetworkSpec(
                "n", addresses=(ip4(hosts=[DhcpHost("198.18.99.5", "52:54:00:00:00:01")]),)
            ),
            "not inside the subnet",
        ),
        (
            NetworkSpec(
                "n", addresses=(ip4(hosts=[DhcpHost("198.18.10.1", "52:54:00:00:00:01")]),)
            ),
            "host's own address",
        ),
        (
            NetworkSpec(
                "n",
                addresses=(
                    ip4(
                        hosts=[
                            DhcpHost("198.18.10.5", "52:54:00:00:00:01"),
                            DhcpHost("198.18.10.6", "52:54:00:00:00:01"),
                        ]
                    ),
                ),
            ),
            "MAC 52:54:00:00:00:01 is used by more than one",
        ),
        (
            NetworkSpec(
                "n",
                addresses=(
                    ip4(
                        hosts=[
                            DhcpHost("198.18.10.5", "52:54:00:00:00:01"),
                            DhcpHost("198.18.10.5", "52:54:00:00:00:02"),
                        ]
                    ),
                ),
            ),
            "IP 198.18.10.5 is used by more than one",
        ),
        (
            NetworkSpec(
                "n",
                addresses=(
                    IpConfig(
                        "fd00:10::1/64", (), (DhcpHost("fd00:10::5", "52:54:00:00:00:01", "a"),)
                    ),
                ),
            ),
            "drop mac",
        ),
        (
            NetworkSpec(
                "n",
                addresses=(
                    ip4([("198.18.10.10", "198.18.10.20")]),
                    ip4([("198.18.12.10", "198.18.12.20")], address="198.18.12.1/24"),
                ),
            ),
            "one ipv4 address per network",
        ),
        (NetworkSpec("n", dns_hosts=(DnsHost("198.18.10.5", ()),)), "at least one hostname"),
        (
            NetworkSpec(
                "n", dns_hosts=(DnsHost("198.18.10.5", ("a",)), DnsHost("198.18.10.5", ("b",)))
            ),
            "twice",
        ),
    ],
)
def test_validate_spec_rejects(spec, message):
    with pytest.raises(KvmValidationError, match=message):
        validate_spec(spec)


def test_validate_spec_accepts_a_full_network():
    validate_spec(
        NetworkSpec(
            "n",
            domain="lab.test",
            mtu=1400,
            addresses=(
                ip4(
                    [("198.18.10.100", "198.18.10.150"), ("198.18.10.200", "198.18.10.210")],
                    [DhcpHost("198.18.10.5", "52:54:00:00:00:01", "a")],
                ),
                IpConfig(
                    "fd00:10::1/64",
                    (DhcpRange("fd00:10::100", "fd00:10::1ff"),),
                    (DhcpHost("fd00:10::5", None, "a"),),
                ),
            ),
            dns_hosts=(DnsHost("198.18.10.20", ("db",)),),
        )
    )


def test_bad_param_values_fail_clearly():
    with pytest.raises(KvmValidationError, match="needs a prefix length"):
        spec_from_params(params(addresses=[{"address": "198.18.10.1"}]), None)
    with pytest.raises(KvmValidationError, match="not a valid MAC"):
        spec_from_params(
            params(
                addresses=[
                    {
                        "address": "198.18.10.1/24",
                        "dhcp_hosts": [{"ip": "198.18.10.5", "mac": "xx"}],
                    }
                ]
            ),
            None,
        )
    with pytest.raises(KvmValidationError, match="not a valid IP"):
        spec_from_params(params(dns_hosts=[{"ip": "198.18.10.300", "hostnames": ["a"]}]), None)


def kinds(**table):
    return table.get


def test_host_checks_other_networks_subnet_and_bridge():
    spec = NetworkSpec("n", bridge="virbr9", addresses=(ip4(),))
    other = OtherNetwork("other", "nat", "virbr3", (ipaddress.ip_network("198.18.10.0/25"),), False)
    with pytest.raises(KvmValidationError, match=r"overlaps 198\.18\.10\.0/25 of network 'other'"):
        validate_against_host(
            spec, others=[other], own_bridge=None, interface_kind=kinds(), routes=[]
        )
    other = OtherNetwork("other", "nat", "virbr9", (), True)
    with pytest.raises(KvmValidationError, match="already used by network 'other'"):
        validate_against_host(
            spec, others=[other], own_bridge=None, interface_kind=kinds(), routes=[]
        )


def test_host_checks_bridge_mode_needs_existing_bridge():
    spec = NetworkSpec("n", mode="bridge", bridge="br0")
    with pytest.raises(KvmValidationError, match="does not exist on the host"):
        validate_against_host(spec, others=[], own_bridge=None, interface_kind=kinds(), routes=[])
    with pytest.raises(KvmValidationError, match="not a bridge"):
        validate_against_host(
            spec, others=[], own_bridge=None, interface_kind=kinds(br0="other"), routes=[]
        )
    assert (
        validate_against_host(
            spec, others=[], own_bridge=None, interface_kind=kinds(br0="bridge"), routes=[]
        )
        == []
    )
    warnings = validate_against_host(
        spec, others=[], own_bridge=None, interface_kind=kinds(br0="unknown"), routes=None
    )
    assert "Could not check that bridge br0" in warnings[0]
    # two bridge-mode networks may share one host bridge
    shared = OtherNetwork("other", "bridge", "br0", (), True)
    validate_against_host(
        spec, others=[shared], own_bridge=None, interface_kind=kinds(br0="bridge"), routes=[]
    )


def test_host_checks_missing_bridge_is_assumed_in_check_mode_only():
    spec = NetworkSpec("n", mode="bridge", bridge="br0")
    warnings = validate_against_host(
        spec, others=[], own_bridge=None, interface_kind=kinds(), routes=[], check_mode=True
    )
    assert warnings == [
        "Host bridge br0 does not exist yet; check mode assumes an earlier task creates it "
        "(the real run fails if it does not)."
    ]
    with pytest.raises(KvmValidationError, match="not a bridge"):  # there, but wrong: fails
        validate_against_host(
            spec,
            others=[],
            own_bridge=None,
            interface_kind=kinds(br0="other"),
            routes=[],
            check_mode=True,
        )


def test_host_checks_libvirt_bridge_name_must_be_free_and_forward_dev_exist():
    spec = NetworkSpec("n", bridge="eth0")
    with pytest.raises(KvmValidationError, match="already exists on the host"):
        validate_against_host(
            spec, others=[], own_bridge=None, interface_kind=kinds(eth0="other"), routes=[]
        )
    # its own bridge, while it runs, is no conflict
    validate_against_host(
        spec, others=[], own_bridge="eth0", interface_kind=kinds(eth0="bridge"), routes=[]
    )
    spec = NetworkSpec("n", forward_dev="nope0")
    with pytest.raises(KvmValidationError, match="forward_dev nope0 does not exist"):
        validate_against_host(spec, others=[], own_bridge=None, interface_kind=kinds(), routes=[])


def test_host_checks_routes():
    spec = NetworkSpec("n", addresses=(ip4(),))
    connected = Route(ipaddress.ip_network("198.18.0.0/16"), "eth1", connected=True)
    with pytest.raises(KvmValidationError, match="already in use on the host"):
        validate_against_host(
            spec, others=[], own_bridge=None, interface_kind=kinds(), routes=[connected]
        )
    via_gateway = Route(ipaddress.ip_network("198.18.0.0/16"), "eth1", connected=False)
    default = Route(ipaddress.ip_network("0.0.0.0/0"), "eth0", connected=False)
    validate_against_host(
        spec, others=[], own_bridge=None, interface_kind=kinds(), routes=[via_gateway, default]
    )
    exact = Route(ipaddress.ip_network("198.18.10.0/24"), "eth1", connected=False)
    with pytest.raises(KvmValidationError, match=r"route 198\.18\.10\.0/24 via eth1"):
        validate_against_host(
            spec, others=[], own_bridge=None, interface_kind=kinds(), routes=[exact]
        )
    own = Route(ipaddress.ip_network("198.18.10.0/24"), "virbr9", connected=True)
    validate_against_host(
        spec, others=[], own_bridge="virbr9", interface_kind=kinds(), routes=[own]
    )
