"""The network module with tiny guests booted on its networks (slow: marked ``lab``).

Guests only talk to their network's gateway and to each other; no traffic leaves the host.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from tests.helpers import dnsmasq_pid, four_results, free_subnet, network_task
from tests.lab.guests import TinyGuest, new_mac, prepare_tiny_files, tiny_domain_xml

pytestmark = pytest.mark.lab

# A tiny guest gets its address ~5 s after boot on an idle machine; with the machine shared
# (load 12 on 2 cores) it took 140 s. The wait ends as soon as the address shows.
BOOT_TIMEOUT = 360


def boot(conn, image, cleanup, name, *, network, mac) -> TinyGuest:
    """A transient tiny guest on ``network``; ``cleanup`` removes it and its files."""
    files = prepare_tiny_files(name, image, marker=False)
    guest = TinyGuest(name, files, conn)
    cleanup.append(files.dir)
    conn.createXML(tiny_domain_xml(name, image, files, network=network, mac=mac), 0)
    return guest


def tap_of(conn, guest: TinyGuest) -> str:
    root = etree.fromstring(conn.lookupByName(guest.name).XMLDesc(0))
    return root.find("devices/interface/target").get("dev")


def master_of(dev: str) -> str | None:
    link = Path(f"/sys/class/net/{dev}/master")
    return link.resolve().name if link.exists() else None


def test_guest_gets_its_static_address_and_hosts_change_live(
    playbook, conn, tiny_image, cleanup, name_prefix
):
    name = f"{name_prefix}-nat"
    x = free_subnet(conn)
    mac = new_mac()
    hosts = [{"mac": mac, "ip": f"198.18.{x}.10", "name": "tiny"}]
    args = {
        "name": name,
        "state": "active",
        "mode": "nat",
        "addresses": [
            {
                "address": f"198.18.{x}.1/24",
                "dhcp_ranges": [{"start": f"198.18.{x}.100", "end": f"198.18.{x}.150"}],
                "dhcp_hosts": hosts,
            }
        ],
    }
    four_results(playbook, network_task(args))
    guest = boot(conn, tiny_image, cleanup, f"{name_prefix}-g1", network=name, mac=mac)
    assert guest.dhcp_address(mac, timeout=BOOT_TIMEOUT) == f"198.18.{x}.10"
    info = playbook([network_task({"name": name}, module="virtops.kvm.network_info")]).task("net")
    facts = info["networks"][0]
    assert {"mac": mac, "ip": f"198.18.{x}.10"} in [
        {"mac": lease["mac"], "ip": lease["ip"]} for lease in facts["leases"]
    ]
    assert [g["name"] for g in facts["attached_guests"]] == [guest.name]

    # Add a second static host: live, no network restart, the guest keeps its link.
    pid = dnsmasq_pid(name)
    tap = tap_of(conn, guest)
    bridge = facts["bridge"]
    assert master_of(tap) == bridge
    args["addresses"][0]["dhcp_hosts"] = [
        *hosts,
        {"mac": new_mac(), "ip": f"198.18.{x}.11", "name": "other"},
    ]
    results = four_results(playbook, network_task(args))
    assert [u["command"] for u in results[1]["live_updates"]] == ["add"]
    assert not results[1]["restart_required"] and not results[1]["restarted"]
    assert dnsmasq_pid(name) == pid
    assert master_of(tap) == bridge
    guest.check(f"ping -c 1 -W 5 198.18.{x}.1", timeout=30)

    # A restart field with restart=true: the module names the guest whose link it cut.
    args["mtu"] = 1400
    args["restart"] = True
    restarted = playbook([network_task(args)]).task("net")
    assert restarted["restarted"]
    assert [g["name"] for g in restarted["guests_disconnected"]] == [guest.name]
    assert master_of(tap) is None  # libvirt does not reattach running guests


def test_isolated_network_shared_by_two_guests(playbook, conn, tiny_image, cleanup, name_prefix):
    name = f"{name_prefix}-iso"
    x = free_subnet(conn, second=19)
    macs = [new_mac(), new_mac()]
    args = {
        "name": name,
        "state": "active",
        "mode": "isolated",
        "addresses": [
            {
                "address": f"198.19.{x}.1/24",
                "dhcp_hosts": [
                    {"mac": macs[0], "ip": f"198.19.{x}.21", "name": "left"},
                    {"mac": macs[1], "ip": f"198.19.{x}.22", "name": "right"},
                ],
            }
        ],
    }
    four_results(playbook, network_task(args))
    left = boot(conn, tiny_image, cleanup, f"{name_prefix}-l", network=name, mac=macs[0])
    right = boot(conn, tiny_image, cleanup, f"{name_prefix}-r", network=name, mac=macs[1])
    assert left.dhcp_address(macs[0], timeout=BOOT_TIMEOUT) == f"198.19.{x}.21"
    assert right.dhcp_address(macs[1], timeout=BOOT_TIMEOUT) == f"198.19.{x}.22"
    left.check(f"ping -c 1 -W 5 198.19.{x}.22", timeout=30)
    right.check(f"ping -c 1 -W 5 198.19.{x}.21", timeout=30)
    xml = conn.networkLookupByName(name).XMLDesc(0)
    assert "<forward" not in xml
