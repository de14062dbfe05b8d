"""Console ports, the guest agent report and I/O counters of a running tiny guest on the real
local libvirtd (qemu:///system): an automatic VNC port is reported as the port QEMU listens
on, and a viewer can connect to it."""

from __future__ import annotations

import socket

import pytest

from ansible_collections.virtops.kvm.plugins.modules import domain as domain_module
from ansible_collections.virtops.kvm.plugins.modules import domain_info
from tests.module_runner import run_module

pytestmark = pytest.mark.integration

URI = "qemu:///system"
VNC = "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"
# an agent channel with no agent behind it (busybox runs none): libvirt's own answer
AGENT = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"


def _rfb_banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.settimeout(5)
        return s.recv(12)


def test_live_console_ports_agent_and_io_counters(tiny_guest, default_network):
    guest = tiny_guest(network=default_network, extra_devices=[VNC, AGENT])
    # some disk and network traffic to count
    guest.check("dd if=/dev/vda of=/dev/null bs=64k count=16")
    guest.dhcp_address()

    info = run_module(domain_info, {"uri": URI, "name": guest.name, "guest_info": True})
    assert not info.get("failed"), info
    (found,) = info["guests"]
    (vnc,) = [c for c in found["consoles"] if c["device"] == "graphics"]
    assert vnc["type"] == "vnc" and vnc["autoport"] is True and vnc["listen"] == "127.0.0.1"
    assert isinstance(vnc["port"], int) and vnc["port"] >= 5900
    assert _rfb_banner(vnc["listen"], vnc["port"]).startswith(b"RFB 003.0")
    serials = [c for c in found["consoles"] if c["device"] == "serial"]
    assert [s["type"] for s in serials] == ["file", "unix"]
    assert serials[0]["path"] == str(guest.files.console_log)
    assert [c["device"] for c in found["consoles"]].count("console") == 1

    # no agent in the guest: said per guest, not a failure
    agent = found["guest_agent"]
    assert agent["answering"] is False
    assert "agent not answering" in agent["reason"] and "not connected" in agent["reason"]

    (disk,) = found["stats"]["disks"]
    assert disk["name"] == "vda" and disk["read_bytes"] >= 16 * 64 * 1024
    assert disk["read_requests"] > 0
    (nic,) = found["stats"]["interfaces"]
    assert nic["name"].startswith("vnet") and nic["rx_bytes"] > 0 and nic["tx_bytes"] > 0
    assert nic["rx_packets"] > 0 and nic["tx_packets"] > 0

    # the domain module reports the same live port, in check mode and when applying
    for check in (True, False):
        result = run_module(
            domain_module, {"uri": URI, "name": guest.name, "state": "running"}, check_mode=check
        )
        assert not result.get("failed") and not result["changed"], result
        assert [c for c in result["consoles"] if c["device"] == "graphics"] == [vnc]

    # shut off: the port is gone, the console is still listed
    guest.dom.destroy()
    info = run_module(domain_info, {"uri": URI, "name": guest.name, "guest_info": True})
    (vnc_off,) = [c for c in info["guests"][0]["consoles"] if c["device"] == "graphics"]
    assert vnc_off["port"] is None and vnc_off["autoport"] is True
    assert info["guests"][0]["guest_agent"] == {
        "answering": False,
        "reason": "the guest is not running",
    }
    (disk_off,) = info["guests"][0]["stats"]["disks"]
    assert disk_off["name"] == "vda" and disk_off["read_bytes"] is None  # counters need QEMU
    assert info["guests"][0]["stats"]["interfaces"] == []
