"""Unit tests of _libvirt: URIs, guest state names and the guest lookup."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmLibvirtError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
    DOMAIN_STATES,
    domain_state,
    free_memory_bytes,
    is_local_uri,
    is_this_machine,
    libvirt,
    lookup_domain,
    lookup_or_none,
    pool_state_name,
    run_state,
    state_name,
)


@pytest.mark.parametrize(
    ("uri", "local", "this_machine"),
    [
        ("qemu:///system", True, True),
        ("qemu:///session", True, True),
        ("qemu+unix:///system", True, True),
        ("qemu+ssh:///system", True, True),
        ("test:///default", True, False),
        ("qemu+ssh://root@host/system", False, False),
        ("qemu+tcp://198.18.0.2/system", False, False),
        ("qemu+tls://kvm1.example.com/system", False, False),
        ("test+tcp://198.18.0.2/default", False, False),
        ("", False, False),
        (None, False, False),
    ],
)
def test_local_uri(uri, local, this_machine):
    assert is_local_uri(uri) is local
    assert is_this_machine(uri) is this_machine


def test_state_names_follow_libvirt_codes():
    codes = {
        libvirt.VIR_DOMAIN_NOSTATE: "nostate",
        libvirt.VIR_DOMAIN_RUNNING: "running",
        libvirt.VIR_DOMAIN_BLOCKED: "blocked",
        libvirt.VIR_DOMAIN_PAUSED: "paused",
        libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
        libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
        libvirt.VIR_DOMAIN_CRASHED: "crashed",
        libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
    }
    assert {code: state_name(code) for code in codes} == codes
    assert len(DOMAIN_STATES) == len(codes)
    assert run_state(libvirt.VIR_DOMAIN_BLOCKED) == "running"
    assert run_state(libvirt.VIR_DOMAIN_SHUTOFF) == "shutoff"
    assert state_name(99) == run_state(-1) == "nostate"


def test_pool_state_names_follow_libvirt_codes():
    codes = {
        libvirt.VIR_STORAGE_POOL_INACTIVE: "inactive",
        libvirt.VIR_STORAGE_POOL_BUILDING: "building",
        libvirt.VIR_STORAGE_POOL_RUNNING: "running",
        libvirt.VIR_STORAGE_POOL_DEGRADED: "degraded",
        libvirt.VIR_STORAGE_POOL_INACCESSIBLE: "inaccessible",
    }
    assert {code: pool_state_name(code) for code in codes} == codes
    assert pool_state_name(len(codes)) == f"unknown({len(codes)})"


def test_lookup_domain_and_state():
    conn = libvirt.open("test:///default")
    try:
        dom = lookup_domain(conn, "test")
        assert dom is not None and domain_state(dom) == "running"
        assert lookup_domain(conn, uuid=dom.UUIDString()).name() == "test"
        assert lookup_domain(conn, "no-such-guest") is None
        dom.suspend()
        assert domain_state(dom) == "paused"
    finally:
        conn.close()
    # A closed connection is an error, not "no such guest".
    with pytest.raises(KvmLibvirtError, match="look up guest test"):
        lookup_domain(conn, "test")


def test_lookup_or_none():
    conn = libvirt.open("test:///default")
    try:
        net = lookup_or_none(
            lambda: conn.networkLookupByName("default"), libvirt.VIR_ERR_NO_NETWORK, "look up"
        )
        assert net is not None and net.name() == "default"
        missing = lookup_or_none(
            lambda: conn.networkLookupByName("nope"), libvirt.VIR_ERR_NO_NETWORK, "look up"
        )
        assert missing is None
        # Another "missing" code than the one libvirt answers is an error.
        with pytest.raises(KvmLibvirtError, match="Failed to look up network nope"):
            lookup_or_none(
                lambda: conn.networkLookupByName("nope"),
                libvirt.VIR_ERR_NO_STORAGE_VOL,
                "look up network nope",
            )
    finally:
        conn.close()
    # A closed connection: a typed error naming what failed, or libvirt's own without a name.
    with pytest.raises(KvmLibvirtError, match="look up network default"):
        lookup_or_none(
            lambda: conn.networkLookupByName("default"),
            libvirt.VIR_ERR_NO_NETWORK,
            "look up network default",
        )
    with pytest.raises(libvirt.libvirtError):
        lookup_or_none(
            lambda: conn.networkLookupByName("default"), libvirt.VIR_ERR_NO_NETWORK, None
        )


class _Stats:
    """A connection whose cells hold a quarter of the host's free memory."""

    def __init__(self, stats=None, error=None):
        self.stats, self.error = stats, error

    def getMemoryStats(self, cell, flags=0):
        assert cell == libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS
        if self.error is not None:
            exc = libvirt.libvirtError("fake")
            exc.err = (self.error, libvirt.VIR_FROM_NONE, "fake", 2, None, None, None, 0, 0)
            raise exc
        return self.stats

    def getFreeMemory(self):
        return 1024**3


def test_free_memory_is_the_whole_hosts():
    # the all-cells statistics (KiB) win over the cells' sum
    assert free_memory_bytes(_Stats({"total": 16 * 1024**2, "free": 4 * 1024**2})) == 4 * 1024**3
    # a driver without node memory statistics: the cells' sum
    assert free_memory_bytes(_Stats(error=libvirt.VIR_ERR_NO_SUPPORT)) == 1024**3
    assert free_memory_bytes(_Stats({"total": 1})) == 1024**3
    conn = libvirt.open("test:///default")  # the test driver has no node memory statistics
    try:
        assert free_memory_bytes(conn) == conn.getFreeMemory()
    finally:
        conn.close()
    # any other error is the caller's
    with pytest.raises(libvirt.libvirtError):
        free_memory_bytes(_Stats(error=libvirt.VIR_ERR_INTERNAL_ERROR))
