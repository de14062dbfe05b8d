"""Fixtures of the unit tests: a module runner, and libvirt's test:///default as it starts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.module_runner import run_module


@pytest.fixture
def module_runner():
    return run_module


def _test_driver_state(conn) -> dict[str, Any]:
    pools = {p.name(): set(p.listVolumes()) for p in conn.listAllStoragePools()}
    return {
        "domains": {d.name() for d in conn.listAllDomains()},
        "networks": {n.name() for n in conn.listAllNetworks()},
        "pools": pools,
    }


@pytest.fixture(autouse=True)
def pristine_test_driver():
    """Give every test libvirt's test:///default as the driver starts it.

    test:///default keeps one shared state per process, so whatever a test defines would be
    seen by the next one. After each test, remove what it added and bring the driver's own
    objects (the running guest ``test``, the active network and pool) back to their state.
    """
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is needed for unit tests")
    conn = libvirt.open("test:///default")
    try:
        before = _test_driver_state(conn)
        yield
        for dom in conn.listAllDomains():
            if dom.name() not in before["domains"]:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            elif dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            elif not dom.isActive():
                dom.create()
        for net in conn.listAllNetworks():
            if net.name() not in before["networks"]:
                if net.isActive():
                    net.destroy()
                net.undefine()
            elif not net.isActive():
                net.create()
        for pool in conn.listAllStoragePools():
            if not pool.isActive():
                pool.create()
            keep = before["pools"].get(pool.name(), set())
            for name in pool.listVolumes():
                if name not in keep:
                    pool.storageVolLookupByName(name).delete()
            if pool.name() not in before["pools"]:
                pool.destroy()
                pool.undefine()
    finally:
        conn.close()
