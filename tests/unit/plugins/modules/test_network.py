"""The network and network_info modules end to end in-process, against libvirt's test driver.

test:///default keeps its state while a connection to it stays open: the fixture holds one,
so successive module runs see each other's work.
"""

from __future__ import annotations

import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.modules import network, network_info

TEST_URI = "test:///default"


@pytest.fixture
def name():
    libvirt.registerErrorHandler(lambda *_: None, None)
    net_name = f"unit-{secrets.token_hex(3)}"
    conn = libvirt.open(TEST_URI)
    yield net_name
    try:
        net = conn.networkLookupByName(net_name)
    except libvirt.libvirtError:
        net = None
    if net is not None:
        persistent = net.isPersistent()
        if net.isActive():
            net.destroy()
        if persistent:
            net.undefine()
    conn.close()


def args(name, **kw):
    base = {
        "uri": TEST_URI,
        "name": name,
        "state": "active",
        "mode": "isolated",
        "addresses": [
            {
                "address": "198.18.40.1/24",
                "dhcp_ranges": [{"start": "198.18.40.100", "end": "198.18.40.110"}],
                "dhcp_hosts": [{"mac": "52:54:00:40:00:01", "ip": "198.18.40.10", "name": "a"}],
            }
        ],
    }
    base.update(kw)
    return base


def test_check_apply_check_apply(module_runner, name):
    r = module_runner(network, args(name), check_mode=True, diff=True)
    assert r["changed"] and not r.get("failed")
    assert r["diff"]["after"]["mode"] == "isolated"
    r = module_runner(network, args(name))
    assert r["changed"] and r["network"]["state"] == "active"
    r = module_runner(network, args(name), check_mode=True)
    assert not r["changed"]
    r = module_runner(network, args(name))
    assert not r["changed"]


def test_live_dhcp_host_added(module_runner, name):
    module_runner(network, args(name))
    a = args(name)
    a["addresses"][0]["dhcp_hosts"].append(
        {"mac": "52:54:00:40:00:02", "ip": "198.18.40.11", "name": "b"}
    )
    r = module_runner(network, a)
    assert r["changed"] and not r["restart_required"]
    assert r["live_updates"] == [
        {
            "command": "add",
            "section": "ip-dhcp-host",
            "parent_index": 0,
            "xml": '<host mac="52:54:00:40:00:02" name="b" ip="198.18.40.11"/>',
        }
    ]


def test_overlapping_range_fails_before_anything(module_runner, name):
    a = args(name)
    a["addresses"][0]["dhcp_ranges"].append({"start": "198.18.40.105", "end": "198.18.40.120"})
    r = module_runner(network, a)
    assert r["failed"] and "overlaps the DHCP range" in r["msg"]
    info = module_runner(network_info, {"uri": TEST_URI, "name": name})
    assert info["networks"] == []


def test_info_reads_one_and_all(module_runner, name):
    module_runner(network, args(name))
    one = module_runner(network_info, {"uri": TEST_URI, "name": name})
    assert not one["changed"]
    assert one["networks"][0]["addresses"][0]["dhcp_hosts"][0]["mac"] == "52:54:00:40:00:01"
    every = module_runner(network_info, {"uri": TEST_URI})
    assert {"default", name} <= {n["name"] for n in every["networks"]}


def test_absent(module_runner, name):
    module_runner(network, args(name))
    r = module_runner(network, {"uri": TEST_URI, "name": name, "state": "absent"})
    assert r["changed"] and r["network"] is None
    r = module_runner(network, {"uri": TEST_URI, "name": name, "state": "absent"})
    assert not r["changed"]
