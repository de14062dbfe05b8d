"""Unit tests of the network manager against libvirt's test driver (one connection)."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._network import (
    NetworkManager,
    attached_guests,
    info,
)
from devtools.libvirt_cleanup import remove_network


class FakeHost:
    def __init__(self, interfaces=None, routes=()):
        self.interfaces = interfaces or {}
        self._routes = list(routes)

    def interface_kind(self, name):
        return self.interfaces.get(name)

    def routes(self):
        return self._routes


@pytest.fixture
def conn():
    libvirt.registerErrorHandler(lambda *_: None, None)
    c = libvirt.open("test:///default")
    # test:///default is shared by the whole process: start and end with its own network only
    _cleanup(c)
    yield c
    _cleanup(c)
    c.close()


def _cleanup(c):
    for net in c.listAllNetworks():
        if net.name() != "default":
            remove_network(c, net.name())


BASE = {
    "name": "unit",
    "state": "active",
    "mode": "nat",
    "bridge": None,
    "forward_dev": None,
    "mtu": None,
    "domain": "unit.test",
    "addresses": [
        {
            "address": "198.18.30.1/24",
            "dhcp_ranges": [{"start": "198.18.30.100", "end": "198.18.30.150"}],
            "dhcp_hosts": [{"mac": "52:54:00:30:00:01", "ip": "198.18.30.10", "name": "a"}],
        }
    ],
    "dns_hosts": None,
    "autostart": None,
    "restart": False,
}


def run(conn, check_mode=False, host=None, **overrides):
    params = dict(BASE)
    params.update(overrides)
    warnings = []
    result = NetworkManager(
        conn, params, check_mode=check_mode, host=host or FakeHost(), warn=warnings.append
    ).run()
    result["warnings"] = warnings
    return result


def names(conn):
    return sorted(n.name() for n in conn.listAllNetworks())


def test_create_check_apply_check_apply(conn):
    r = run(conn, check_mode=True)
    assert r["changed"] and "unit" not in names(conn)
    assert r["diff"]["before"]["state"] == "absent"
    assert r["diff"]["after"]["state"] == "active"
    r = run(conn)
    assert r["changed"]
    assert r["network"]["active"]
    assert r["network"]["addresses"][0]["dhcp_hosts"][0]["ip"] == "198.18.30.10"
    assert not run(conn, check_mode=True)["changed"]
    r = run(conn)
    assert not r["changed"] and not r["restart_required"]


def test_present_defines_without_starting(conn):
    run(conn, state="present")
    net = conn.networkLookupByName("unit")
    assert net.isPersistent() and not net.isActive()
    assert not run(conn, state="present")["changed"]
    r = run(conn, state="active")
    assert r["changed"] and net.isActive()
    r = run(conn, state="inactive")
    assert r["changed"] and not net.isActive()


def test_live_host_edit_and_add_without_restart(conn):
    run(conn)
    hosts = [
        {"mac": "52:54:00:30:00:01", "ip": "198.18.30.11", "name": "a"},
        {"mac": "52:54:00:30:00:02", "ip": "198.18.30.12", "name": "b"},
    ]
    addresses = [dict(BASE["addresses"][0], dhcp_hosts=hosts)]
    r = run(conn, check_mode=True, addresses=addresses)
    assert r["changed"] and [u["command"] for u in r["live_updates"]] == ["modify", "add"]
    assert not r["restart_required"]
    r = run(conn, addresses=addresses)
    assert r["changed"] and not r["restart_required"] and not r["restarted"]
    # (the test driver has one XML per network; the live/config split is tested for real
    # in tests/integration/test_network.py)
    xml = conn.networkLookupByName("unit").XMLDesc(0)
    assert "198.18.30.11" in xml and "198.18.30.12" in xml
    assert not run(conn, addresses=addresses)["changed"]


def test_autostart_and_absent(conn):
    r = run(conn, autostart=True)
    assert r["network"]["autostart"]
    assert not run(conn, autostart=True)["changed"]
    assert run(conn, autostart=False)["changed"]
    r = run(conn, state="absent", check_mode=True)
    assert r["changed"] and "unit" in names(conn)
    r = run(conn, state="absent")
    assert r["changed"] and "unit" not in names(conn)
    assert not run(conn, state="absent")["changed"]


def test_bad_input_leaves_nothing(conn):
    before = names(conn)
    bad = [dict(BASE["addresses"][0], dhcp_ranges=[{"start": "198.18.31.1", "end": "198.18.31.9"}])]
    with pytest.raises(KvmValidationError, match="not inside the subnet"):
        run(conn, addresses=bad)
    with pytest.raises(KvmValidationError, match="bridge br9 does not exist"):
        run(conn, mode="bridge", bridge="br9", addresses=None, domain=None)
    # overlaps the test driver's own "default" network (192.168.122.0/24)
    with pytest.raises(KvmValidationError, match="network 'default'"):
        run(conn, addresses=[{"address": "192.168.122.50/24"}])
    assert names(conn) == before


def test_bridge_of_another_network_is_refused(conn):
    conn.networkCreateXML(
        "<network><name>holder</name><bridge name='virbr77'/>"
        "<ip address='198.18.32.1' prefix='24'/></network>"
    )
    with pytest.raises(KvmValidationError, match="already used by network 'holder'"):
        run(conn, bridge="virbr77")
    assert "unit" not in names(conn)


def test_bridge_mode_on_existing_host_bridge(conn):
    host = FakeHost({"br0": "bridge"})
    params = {"mode": "bridge", "bridge": "br0", "addresses": None, "domain": None}
    r = run(conn, host=host, **params)
    assert r["changed"] and r["network"]["mode"] == "bridge"
    assert not run(conn, host=host, **params)["changed"]


def test_unmanaged_bridge_name_is_not_a_change(conn):
    conn.networkDefineXML(
        "<network><name>unit</name><forward mode='nat'/><bridge name='virbr42'/>"
        "<domain name='unit.test'/><ip address='198.18.30.1' prefix='24'/></network>"
    )
    r = run(conn, state="present", addresses=None)  # bridge not given: keep libvirt's
    assert not r["changed"]
    assert r["network"]["bridge"] == "virbr42"
    r = run(conn, state="present", addresses=None, bridge="virbr43")
    assert r["changed"] and r["diff"]["after"]["bridge"] == "virbr43"


def test_info_lists_networks_and_guests(conn):
    run(conn)
    nets = info(conn, None)
    assert [n["name"] for n in nets] == ["default", "unit"]
    assert info(conn, "missing") == []
    one = info(conn, "unit")[0]
    assert one["state"] == "active" and one["leases"] == []  # test driver has no leases
    # the test driver's guest "test" has no interface on our network
    assert attached_guests(conn, "unit") == []
