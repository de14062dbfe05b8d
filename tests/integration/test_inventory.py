"""Inventory plugin virtops.kvm.libvirt against the real libvirtd, through ansible-inventory.

Tiny guests of this test carry a tag unique to the test (plus web or db), and the inventory
file filters on it, so other engineers' guests on this machine do not show.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import libvirt
import pytest
import yaml
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils._domain_general import (
    NS_PREFIX,
    NS_VIRTOPS,
)
from ansible_collections.virtops.kvm.plugins.module_utils._fleet import (
    ensure_event_loop,
    set_keepalive,
)
from devtools.libvirt_cleanup import remove_domain
from tests.helpers import VENV_BIN, checkout_env
from tests.lab import fleet
from tests.lab.hosts import BLACKHOLE_ADDRESS


def set_tags(dom, tags: list[str]) -> None:
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    # un-namespaced: libvirt puts the element and its children into the namespace itself
    elem = etree.Element("tags")
    for tag in tags:
        etree.SubElement(elem, "tag").text = tag
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        etree.tostring(elem, encoding="unicode"),
        NS_PREFIX,
        NS_VIRTOPS,
        flags,
    )


def inventory(tmp_path: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "lab.libvirt.yml"
    path.write_text(yaml.safe_dump({"plugin": "virtops.kvm.libvirt", **config}))
    return subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(path), *args],
        capture_output=True,
        text=True,
        env=checkout_env(),
        timeout=300,
        check=False,
    )


def plain(value):
    """``--list`` marks strings from plugins as untrusted: ``{"__ansible_unsafe": "..."}``."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def graph_groups(text: str) -> dict[str, list[str]]:
    """``--graph`` output -> group -> hosts directly in it."""
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        name = re.sub(r"^[\s|]*(--)?", "", line).strip()
        if name.startswith("@"):
            current = name[1:].rstrip(":")
            groups.setdefault(current, [])
        elif name and current is not None:
            groups[current].append(name)
    return groups


@pytest.mark.lab
def test_graph_shows_lab_guests_with_their_groups(
    tmp_path, libvirt_conn, tiny_guest, default_network, name_prefix
):
    lab = name_prefix.replace("-", "_")
    web = tiny_guest(f"{name_prefix}-web", network=default_network)
    db = tiny_guest(f"{name_prefix}-db", start=False)
    set_tags(web.dom, [lab, "web"])
    set_tags(db.dom, [lab, "db"])
    address = web.dhcp_address(timeout=300)
    hypervisor = libvirt_conn.getHostname()
    config = {
        "uris": ["qemu:///system"],
        "tags": [lab],
        "keyed_groups": [{"key": "libvirt_vcpus | string", "prefix": "vcpus"}],
        "compose": {"guest_mac": "libvirt_interfaces[0].mac if libvirt_interfaces else ''"},
    }

    graph = inventory(tmp_path, config, "--graph")
    assert graph.returncode == 0, graph.stderr
    print(graph.stdout)
    groups = graph_groups(graph.stdout)
    assert groups[f"tag_{lab}"] == sorted([web.name, db.name])
    assert groups["tag_web"] == [web.name]
    assert groups["tag_db"] == [db.name]
    assert groups["state_running"] == [web.name]
    assert groups["state_shutoff"] == [db.name]
    assert groups[f"hypervisor_{hypervisor}"] == sorted([web.name, db.name])
    assert groups["vcpus_1"] == sorted([web.name, db.name])

    listing = inventory(tmp_path, config, "--list")
    assert listing.returncode == 0, listing.stderr
    hostvars = plain(json.loads(listing.stdout)["_meta"]["hostvars"])
    assert set(hostvars) == {web.name, db.name}
    hv = hostvars[web.name]
    assert hv["ansible_host"] == address  # the DHCP lease of the default network
    assert hv["libvirt_address_source"] == "lease"
    assert hv["libvirt_state"] == "running"
    assert hv["libvirt_uri"] == "qemu:///system"
    assert hv["libvirt_hypervisor"] == hypervisor
    assert hv["libvirt_tags"] == sorted([lab, "web"])
    assert hv["guest_mac"] == web.mac
    assert hv["libvirt_uuid"] == web.dom.UUIDString()
    assert "ansible_host" not in hostvars[db.name]

    # a state filter leaves the shut-off guest out
    running = inventory(tmp_path, {**config, "states": ["running"]}, "--graph")
    assert running.returncode == 0, running.stderr
    assert db.name not in running.stdout and web.name in running.stdout


@pytest.mark.lab
def test_unreachable_hypervisor(tmp_path, libvirt_conn, tiny_guest, name_prefix):
    # a guest of our own on the reachable hypervisor: a clean machine has none, and groups
    # only exist for hypervisors that have guests
    lab = name_prefix.replace("-", "_")
    guest = tiny_guest(f"{name_prefix}-reach", start=False)
    set_tags(guest.dom, [lab])
    bad = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"  # no traffic leaves the host
    failed = inventory(tmp_path, {"uris": [bad], "connect_timeout": 0}, "--graph")
    # ansible-inventory turns a failing source into a warning (exit code 0) and lists no host
    assert f"Failed to connect to libvirt at {bad}" in failed.stderr
    assert "Unable to parse" in failed.stderr and guest.name not in failed.stdout
    skipped = inventory(
        tmp_path,
        {
            "uris": [bad, "qemu:///system"],
            "tags": [lab],
            "connect_timeout": 0,
            "skip_unreachable": True,
        },
        "--graph",
    )
    assert skipped.returncode == 0, skipped.stderr
    assert f"skipping {bad}" in skipped.stderr
    groups = graph_groups(skipped.stdout)
    assert groups[f"hypervisor_{libvirt_conn.getHostname()}"] == [guest.name]


def ours(listing: subprocess.CompletedProcess, prefix: str) -> tuple[dict, dict]:
    """hostvars and group members of ``--list`` output, for the guests named ``prefix``*."""
    assert listing.returncode == 0, listing.stderr
    data = plain(json.loads(listing.stdout))
    hostvars = {k: v for k, v in data["_meta"]["hostvars"].items() if k.startswith(prefix)}
    groups = {
        name: sorted(h for h in group.get("hosts", []) if h.startswith(prefix))
        for name, group in data.items()
        if name != "_meta"
    }
    return hostvars, {k: v for k, v in groups.items() if v}


@pytest.mark.lab
@pytest.mark.multihost
def test_fleet_read_concurrently_and_a_silent_hypervisor(tmp_path, lab_hosts_factory, name_prefix):
    # three hosts, as the multihost tests after this file ask: the lab is not restarted
    lab_hosts = lab_hosts_factory(3)
    try:
        defined = fleet.populate(lab_hosts, 3, prefix=name_prefix)
        config = {"uris": lab_hosts.uris, "connect_timeout": 2}
        one_by_one = ours(inventory(tmp_path, {**config, "max_workers": 1}, "--list"), name_prefix)
        side_by_side = ours(
            inventory(tmp_path, {**config, "max_workers": 8}, "--list"), name_prefix
        )
        assert side_by_side == one_by_one
        hostvars, groups = side_by_side
        assert sorted(hostvars) == sorted(n for names in defined.values() for n in names)
        for host in lab_hosts.hosts:
            group = f"hypervisor_{host.name}".replace("-", "_")  # as Ansible sanitizes it
            assert groups[group] == defined[host.uri]
            for name in defined[host.uri]:
                assert hostvars[name]["libvirt_uri"] == host.uri

        # a hypervisor that drops every packet: given up after the connect limit (5 s at
        # least), while the kernel's TCP connect alone would wait about two minutes
        silent = f"qemu+tcp://{BLACKHOLE_ADDRESS}/system"
        uris = [lab_hosts.uris[0], silent, *lab_hosts.uris[1:]]
        started = time.monotonic()
        skipped = inventory(tmp_path, {**config, "uris": uris, "skip_unreachable": True}, "--list")
        took = time.monotonic() - started
        assert f"skipping {silent}: {silent} did not answer within 5 s" in skipped.stderr
        assert ours(skipped, name_prefix) == side_by_side
        assert took < 60, f"the silent hypervisor cost {took:.0f} s"

        failed = inventory(tmp_path, {**config, "uris": uris}, "--list")
        assert f"{silent} did not answer within 5 s" in failed.stderr
        assert "Unable to parse" in failed.stderr
        assert not ours(failed, name_prefix)[0]
    finally:
        for host in lab_hosts.hosts:
            conn = host.connect()
            try:
                for dom in conn.listAllDomains():
                    if dom.name().startswith(name_prefix):
                        remove_domain(dom)
            finally:
                conn.close()


@pytest.mark.lab
@pytest.mark.multihost
def test_keepalive_ends_a_call_to_a_hypervisor_that_stopped_answering(lab_hosts_factory):
    """What the plugin's keepalive options do: libvirt's keepalive, driven by the event loop
    of _fleet, fails a call to a libvirtd that froze after the connection was made."""
    host = lab_hosts_factory(3).hosts[0]
    pid = int(Path(host.pidfiles["libvirtd"]).read_text().strip())
    ensure_event_loop()
    conn = host.connect()
    set_keepalive(conn, 1, 2)
    assert conn.getHostname() == host.name
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(libvirt.libvirtError):
            conn.listAllDomains()
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    # 1 s x (2 + 1) and some slack; without keepalive the call waits as long as TCP does
    assert took < 30, f"the call took {took:.0f} s"
    after = host.connect()  # the daemon itself is fine again
    try:
        assert after.getHostname() == host.name
    finally:
        after.close()
