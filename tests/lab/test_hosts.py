"""The multi-host lab: namespaced libvirt hosts, each its own daemon, reachable over TCP."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from tests.lab.hosts import BLACKHOLE_ADDRESS, path_on_host

pytestmark = [pytest.mark.lab, pytest.mark.multihost]


def host_uuid(conn) -> str:
    return etree.fromstring(conn.getCapabilities().encode()).findtext("host/uuid")


def test_three_hosts_are_separate_daemons(lab_hosts_factory, libvirt_conn):
    lab = lab_hosts_factory(3)
    assert [h.uri for h in lab.hosts] == [f"qemu+tcp://198.18.0.{10 + i}/system" for i in (1, 2, 3)]
    uuids = {host_uuid(libvirt_conn)}
    for host in lab.hosts:
        conn = host.connect()
        try:
            assert conn.getHostname() == host.name
            assert conn.listAllDomains() == []  # none of the machine's guests leak in
            uuids.add(host_uuid(conn))
        finally:
            conn.close()
    assert len(uuids) == 4, "each libvirtd needs its own host UUID for migration"


def test_private_paths_map_to_the_host_directories(lab_hosts):
    host = lab_hosts.hosts[1]
    sock = Path("/run/virtops-lab/x.sock")
    assert path_on_host(host.uri, sock) == Path(host.dir) / "vtrun" / "x.sock"
    assert path_on_host("qemu:///system", sock) == sock
    assert path_on_host(f"qemu+tcp://{BLACKHOLE_ADDRESS}/system", sock) == sock  # no host
