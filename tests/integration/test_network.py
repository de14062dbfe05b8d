"""The network and network_info modules against the real local libvirtd (no guest booted).

Every network lives in 198.18.0.0/15 (IPv4) and fd00::/8 (IPv6 ULA), is named from
``name_prefix`` and is removed in teardown, even when the test fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import libvirt
import pytest

from devtools.libvirt_cleanup import remove_network
from tests.helpers import dnsmasq_pid, four_results, free_subnet, network_task

pytestmark = pytest.mark.integration


@pytest.fixture
def networks(conn, name_prefix):
    """Names for test networks (``networks(suffix)``); all removed at the end."""
    made: list[str] = []

    def _name(suffix: str = "n") -> str:
        made.append(f"{name_prefix}-{suffix}")
        return made[-1]

    yield _name
    for name in made:
        remove_network(conn, name)


def nat_args(name, x, hosts=None, **extra):
    args = {
        "name": name,
        "state": "active",
        "mode": "nat",
        "domain": f"{name}.test",
        "addresses": [
            {
                "address": f"198.18.{x}.1/24",
                "dhcp_ranges": [{"start": f"198.18.{x}.100", "end": f"198.18.{x}.150"}],
                "dhcp_hosts": hosts
                if hosts is not None
                else [{"mac": "52:54:00:18:00:01", "ip": f"198.18.{x}.10", "name": "one"}],
            },
            {"address": f"fd00:18:{x:x}::1/64"},
        ],
        "dns_hosts": [{"ip": f"198.18.{x}.20", "hostnames": ["db"]}],
    }
    args.update(extra)
    return args


def test_nat_network_create_is_idempotent(playbook, conn, networks):
    name = networks()
    x = free_subnet(conn)
    results = four_results(playbook, network_task(nat_args(name, x)))
    created = results[1]
    assert created["diff"]["before"]["state"] == "absent"
    assert created["diff"]["after"]["state"] == "active"
    net = conn.networkLookupByName(name)
    assert net.isActive() and net.isPersistent()
    xml = net.XMLDesc(0)
    assert f"198.18.{x}.10" in xml and "fd00:18" in xml and f"{name}.test" in xml
    info = playbook([network_task({"name": name}, module="virtops.kvm.network_info")]).task("net")
    (facts,) = info["networks"]
    assert facts["mode"] == "nat" and facts["state"] == "active"
    assert facts["bridge"].startswith("virbr")  # libvirt's choice, never reported as change
    assert [a["address"] for a in facts["addresses"]] == [
        f"198.18.{x}.1/24",
        f"fd00:18:{x:x}::1/64",
    ]
    assert facts["dns_hosts"] == [{"ip": f"198.18.{x}.20", "hostnames": ["db"]}]


def test_dhcp_host_edit_and_add_apply_live(playbook, conn, networks):
    name = networks()
    x = free_subnet(conn)
    assert playbook([network_task(nat_args(name, x))]).rc == 0
    pid = dnsmasq_pid(name)
    hosts = [
        {"mac": "52:54:00:18:00:01", "ip": f"198.18.{x}.11", "name": "one"},  # edited
        {"mac": "52:54:00:18:00:02", "ip": f"198.18.{x}.12", "name": "two"},  # added
    ]
    args = nat_args(name, x, hosts=hosts)
    args["dns_hosts"].append({"ip": f"198.18.{x}.21", "hostnames": ["web"]})
    results = four_results(playbook, network_task(args))
    applied = results[1]
    assert not applied["restart_required"] and not applied["restarted"]
    assert sorted((u["command"], u["section"]) for u in applied["live_updates"]) == [
        ("add", "dns-host"),
        ("add", "ip-dhcp-host"),
        ("modify", "ip-dhcp-host"),
    ]
    assert dnsmasq_pid(name) == pid  # dnsmasq re-read its files: no restart
    net = conn.networkLookupByName(name)
    for flags in (0, libvirt.VIR_NETWORK_XML_INACTIVE):  # live and persisted
        xml = net.XMLDesc(flags)
        assert f"ip='198.18.{x}.11'" in xml and f"ip='198.18.{x}.12'" in xml
        assert f"198.18.{x}.10'" not in xml and "<hostname>web</hostname>" in xml
    hostsfile = Path(f"/var/lib/libvirt/dnsmasq/{name}.hostsfile").read_text()
    assert f"52:54:00:18:00:02,198.18.{x}.12,two" in hostsfile


def test_restart_fields_wait_until_restart(playbook, conn, networks):
    name = networks()
    x = free_subnet(conn)
    assert playbook([network_task(nat_args(name, x))]).rc == 0
    net = conn.networkLookupByName(name)
    bridge = playbook([network_task({"name": name}, module="virtops.kvm.network_info")]).task(
        "net"
    )["networks"][0]["bridge"]
    hosts = [{"mac": "52:54:00:18:00:01", "ip": f"198.18.{x}.13", "name": "one"}]
    args = nat_args(name, x, hosts=hosts, mtu=1400)

    check = playbook([network_task(args)], check=True).task("net")
    assert check["changed"] and check["restart_fields"] == ["mtu"]
    applied = playbook([network_task(args)]).task("net")
    assert applied["changed"] and applied["restart_required"]
    assert applied["restart_fields"] == ["mtu"]
    assert applied["network"]["pending_changes"] == ["mtu"]
    assert "<mtu size='1400'/>" in net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    assert "<mtu" not in net.XMLDesc(0)
    assert f"198.18.{x}.13" in net.XMLDesc(0)  # the DHCP host went live meanwhile
    # Nothing left to change in the config, but the restart is still owed.
    again = playbook([network_task(args)]).task("net")
    assert not again["changed"] and again["restart_required"]

    args["restart"] = True
    check = playbook([network_task(args)], check=True).task("net")
    assert check["changed"] and check["restarted"]
    assert "<mtu" not in net.XMLDesc(0)
    restarted = playbook([network_task(args)]).task("net")
    assert restarted["changed"] and restarted["restarted"] and not restarted["restart_required"]
    assert Path(f"/sys/class/net/{bridge}/mtu").read_text().strip() == "1400"
    for check_mode in (True, False):
        r = playbook([network_task(args)], check=check_mode).task("net")
        assert not r["changed"] and not r["restarted"]


def test_address_change_is_a_restart_and_state_inactive_applies_it(playbook, conn, networks):
    name = networks()
    x = free_subnet(conn)
    assert playbook([network_task(nat_args(name, x))]).rc == 0
    y = free_subnet(conn)
    args = nat_args(name, y)
    applied = playbook([network_task(args)]).task("net")
    # the DHCP entries belong to the new address: they come with the restart; a DNS host
    # entry is not tied to an address, so it goes live at once
    assert applied["restart_fields"] == ["addresses", "dhcp_ranges", "dhcp_hosts"]
    assert [u["section"] for u in applied["live_updates"]] == ["dns-host", "dns-host"]
    args["state"] = "inactive"
    results = four_results(playbook, network_task(args))
    assert not results[1]["restart_required"]
    net = conn.networkLookupByName(name)
    assert not net.isActive() and f"198.18.{y}.1'" in net.XMLDesc(0)
    args["state"] = "active"
    four_results(playbook, network_task(args))
    assert net.isActive()


def test_isolated_route_and_open_modes(playbook, conn, networks):
    for mode in ("isolated", "route", "open"):
        name = networks(mode)
        x = free_subnet(conn, second=19)
        args = {
            "name": name,
            "state": "active",
            "mode": mode,
            "addresses": [{"address": f"198.19.{x}.1/24"}],
        }
        four_results(playbook, network_task(args))
        net = conn.networkLookupByName(name)
        spec_xml = net.XMLDesc(0)
        if mode == "isolated":
            assert "<forward" not in spec_xml
        else:
            assert f"<forward mode='{mode}'" in spec_xml
    # the mode of an existing network converges too (a restart field)
    args["mode"] = "isolated"
    args["restart"] = True
    results = four_results(playbook, network_task(args))
    assert results[1]["restarted"]
    assert "<forward" not in conn.networkLookupByName(args["name"]).XMLDesc(0)


@pytest.fixture
def host_bridge(name_prefix):
    name = f"{name_prefix}b"[:15]
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    yield name
    subprocess.run(["ip", "link", "del", name], check=False)


def test_bridge_mode_on_an_existing_host_bridge(playbook, conn, networks, host_bridge):
    name = networks()
    args = {"name": name, "state": "active", "mode": "bridge", "bridge": host_bridge}
    four_results(playbook, network_task(args))
    xml = conn.networkLookupByName(name).XMLDesc(0)
    assert "<forward mode='bridge'/>" in xml and f"name='{host_bridge}'" in xml


def test_bad_input_leaves_nothing_behind(playbook, conn, networks, name_prefix):
    x = free_subnet(conn)
    other = networks("other")
    assert playbook([network_task(nat_args(other, x, hosts=[]))]).rc == 0
    name = networks("bad")
    y = free_subnet(conn)
    cases = {
        "overlaps the DHCP range": nat_args(name, y),
        "bridge nosuchbr0 does not exist": {
            "name": name,
            "state": "active",
            "mode": "bridge",
            "bridge": "nosuchbr0",
        },
        f"overlaps 198.18.{x}.0/24 of network '{other}'": nat_args(name, x, hosts=[]),
        "forward_dev nosuch0 does not exist": nat_args(name, y, hosts=[], forward_dev="nosuch0"),
        "is used by more than one entry": nat_args(
            name,
            y,
            hosts=[
                {"mac": "52:54:00:18:00:01", "ip": f"198.18.{y}.10"},
                {"mac": "52:54:00:18:00:01", "ip": f"198.18.{y}.11"},
            ],
        ),
    }
    cases["overlaps the DHCP range"]["addresses"][0]["dhcp_ranges"].append(
        {"start": f"198.18.{y}.140", "end": f"198.18.{y}.160"}
    )
    tasks = [
        dict(network_task(args, name=f"{message}|{check}"), check_mode=check, ignore_errors=True)
        for message, args in cases.items()
        for check in (True, False)
    ]
    run = playbook(tasks)
    status = {e["task"]: e["status"] for e in run.results}
    for message in cases:
        for check in (True, False):
            result = run.task(f"{message}|{check}")
            if check and message.startswith("bridge nosuchbr0"):
                # check mode: an earlier task of the play may create the host bridge
                assert status[f"{message}|{check}"] == "ok" and result["changed"], result
                assert "Host bridge nosuchbr0 does not exist yet" in str(result["warnings"])
                continue
            assert status[f"{message}|{check}"] == "failed", result
            assert message in result["msg"], result["msg"]
    names = {n.name() for n in conn.listAllNetworks()}
    assert name not in names
    assert not Path(f"/etc/libvirt/qemu/networks/{name}.xml").exists()
    # the untouched neighbour is still there and unchanged
    assert (
        playbook([network_task(nat_args(other, x, hosts=[]))], check=True).task("net")["changed"]
        is False
    )


def test_absent_removes_running_network(playbook, conn, networks):
    name = networks()
    x = free_subnet(conn)
    assert playbook([network_task(nat_args(name, x))]).rc == 0
    four_results(playbook, network_task({"name": name, "state": "absent"}))
    assert name not in {n.name() for n in conn.listAllNetworks()}


def test_autostart(playbook, conn, networks):
    name = networks()
    x = free_subnet(conn)
    four_results(playbook, network_task(nat_args(name, x, autostart=True)))
    assert conn.networkLookupByName(name).autostart()
    four_results(playbook, network_task(nat_args(name, x, autostart=False)))
    assert not conn.networkLookupByName(name).autostart()


@pytest.mark.skipif(os.geteuid() != 0, reason="reads libvirt's root-only files")
def test_info_all_includes_ours(playbook, conn, networks):
    name = networks()
    x = free_subnet(conn)
    assert playbook([network_task(nat_args(name, x))]).rc == 0
    info = playbook([network_task({}, module="virtops.kvm.network_info")]).task("net")
    assert name in [n["name"] for n in info["networks"]]
