"""The tiny guest: heartbeat, command channel, marker disk, ACPI shutdown, DHCP."""

from __future__ import annotations

import time

import pytest

from tests.helpers import wait_for

pytestmark = pytest.mark.lab


def test_heartbeat_counts_and_marker_round_trip(tiny_guest, record_property):
    guest = tiny_guest()
    record_property("boot_to_first_heartbeat_s", round(guest.boot_seconds, 2))
    first = guest.last_heartbeat()
    newest = guest.wait_heartbeat(after=first + 2, timeout=60)
    assert newest >= first + 3
    beats = guest.heartbeats()
    assert beats == list(range(1, len(beats) + 1)), "heartbeats must be consecutive from 1"

    status, output = guest.run("grep ' /mnt/marker ' /proc/mounts")
    assert status == 0
    assert output.split()[:3] == ["/dev/vda", "/mnt/marker", "ext4"]
    assert guest.run("echo out; echo err >&2; exit 7") == (7, "out\nerr\n")

    text = f"marker {time.time_ns()}\nsecond line"
    guest.write_marker("probe", text)
    assert guest.read_marker("probe") == text


def test_acpi_shutdown_keeps_marker_on_disk(tiny_guest):
    guest = tiny_guest(blank_marker=True)
    assert b"TINY MARKER FORMAT /dev/vda" in guest.console()
    guest.write_marker("kept", "across a power cycle")
    guest.dom.shutdown()  # ACPI power button
    wait_for(lambda: not guest.dom.isActive(), 120, "the guest acting on the ACPI power button")
    assert b"TINY POWEROFF" in guest.console()

    guest.files.console_log.write_bytes(b"")
    guest.dom.create()
    guest.wait_heartbeat(0, timeout=240)
    assert b"TINY MARKER FORMAT" not in guest.console()
    assert guest.read_marker("kept") == "across a power cycle"


def test_dhcp_on_default_network(tiny_guest, default_network, libvirt_conn):
    guest = tiny_guest(network=default_network)
    address = guest.dhcp_address(guest.mac, timeout=90)
    leases = libvirt_conn.networkLookupByName(default_network).DHCPLeases(guest.mac)
    assert address in [lease["ipaddr"] for lease in leases]
    status, output = guest.run("ip -4 -o addr show eth0")
    assert status == 0 and f" {address}/" in output
