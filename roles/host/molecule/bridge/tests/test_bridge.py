"""Verify the `bridge` scenario: br0 on eth1 holds the address eth1 had (ifupdown).

The role ran through its "network" entry point: no libvirt on this VM.
"""

from __future__ import annotations

import json


def addresses(host, dev: str) -> list[str]:
    data = json.loads(host.check_output(f"ip -j -4 addr show dev {dev}"))
    return [f"{a['local']}/{a['prefixlen']}" for link in data for a in link["addr_info"]]


def test_bridge_has_the_address(host):
    assert addresses(host, "br0") == ["198.19.252.10/24"]
    link = json.loads(host.check_output("ip -j -d link show br0"))[0]
    assert link["linkinfo"]["info_kind"] == "bridge"
    assert link["operstate"] == "UP"


def test_nic_is_a_port_without_address(host):
    link = json.loads(host.check_output("ip -j link show eth1"))[0]
    assert link["master"] == "br0"
    assert addresses(host, "eth1") == []


def test_bridge_forwards(host):
    """The isolated network's gateway (the lab host) answers through br0 and eth1.

    The minimal image has no ping: a TCP connection to the network's DNS server (libvirt's
    dnsmasq on the gateway) goes through the bridge.
    """
    route = json.loads(host.check_output("ip -j route get 198.19.252.1"))[0]
    assert route["dev"] == "br0"
    host.run_expect([0], "timeout 10 bash -c '</dev/tcp/198.19.252.1/53'")


def test_ssh_nic_untouched(host):
    assert addresses(host, "eth0") == ["198.19.251.10/24"]


def test_bridge_tools_installed(host):
    assert host.package("bridge-utils").is_installed


def test_ifupdown_configuration(host):
    conf = host.file("/etc/network/interfaces.d/virtops-kvm-br0").content_string
    assert "iface br0 inet static" in conf
    assert "address 198.19.252.10/24" in conf
    assert "bridge_ports eth1" in conf
    cloud = host.file("/etc/network/interfaces.d/50-cloud-init").content_string
    assert "iface eth1 inet static" not in cloud
    assert "eth1 is a port of br0" in cloud
    # ifupdown parses the whole configuration and knows br0 as configured.
    host.run_expect([0], "ifquery br0")


def test_rollback_script_confirmed(host):
    assert host.file("/run/virtops-kvm/bridge-br0.state").content_string.strip() == "confirmed"
