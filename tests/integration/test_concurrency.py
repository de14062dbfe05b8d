"""No lost updates, no bare crashes, against the real local libvirtd (qemu:///system).

The lost-update tests run a module in-process and, between its read and its write (at the
guard's re-read), define a change to the same object through a second libvirt connection,
as a second play would.
"""

from __future__ import annotations

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _concurrency
from ansible_collections.virtops.kvm.plugins.modules import domain as domain_module
from ansible_collections.virtops.kvm.plugins.modules import network as network_module
from ansible_collections.virtops.kvm.plugins.modules import pool as pool_module
from tests.helpers import failed, free_subnet
from tests.module_runner import run_module

pytestmark = pytest.mark.integration

URI = "qemu:///system"


def define_guest(conn, name: str):
    xml = (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
    )
    return conn.defineXML(xml)


def define_network(conn, name: str):
    x = free_subnet(conn)
    xml = f"<network><name>{name}</name><ip address='198.18.{x}.1' prefix='24'/></network>"
    return conn.networkDefineXML(xml)


def guest_xml(conn, name: str):
    return etree.fromstring(
        conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode()
    )


def network_xml(conn, name: str):
    net = conn.networkLookupByName(name)
    return etree.fromstring(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE).encode())


def pool_xml(conn, name: str):
    pool = conn.storagePoolLookupByName(name)
    return etree.fromstring(pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE).encode())


@pytest.fixture
def interleave(monkeypatch):
    """``interleave(change, times)``: run ``change()`` (another writer, on its own
    connection) just before the module's re-read, the first ``times`` times; returns the
    list of calls (one per re-read)."""

    def _install(change, times: int = 1) -> list[int]:
        calls: list[int] = []
        original = _concurrency.Guard.check

        def check(guard):
            calls.append(len(calls))
            if len(calls) <= times:
                change()
            return original(guard)

        monkeypatch.setattr(_concurrency.Guard, "check", check)
        return calls

    return _install


# --------------------------------------------------------------------------- domain
def _describe(conn, name: str, text: str) -> None:
    """The other writer: give the guest a description (the module manages no description)."""
    root = guest_xml(conn, name)
    desc = root.find("description")
    if desc is None:
        desc = etree.SubElement(root, "description")
    desc.text = text
    conn.defineXML(etree.tostring(root, encoding="unicode"))


def test_domain_recomputes_after_a_concurrent_change(conn, cleanup, name_prefix, interleave):
    name = f"{name_prefix}-g"
    define_guest(conn, name)
    other = libvirt.open(URI)  # the second writer
    try:
        calls = interleave(lambda: _describe(other, name, "set by the other play"))
        result = run_module(
            domain_module, {"name": name, "title": "set by the module", "memory_guard": False}
        )
    finally:
        other.close()
    assert not result.get("failed"), result
    assert result["changed"] is True and result["changes"] == ["title"]
    assert calls == [0, 1]  # read, changed under it, read again, checked again, wrote
    root = guest_xml(conn, name)
    assert root.findtext("title") == "set by the module"
    assert root.findtext("description") == "set by the other play"  # not lost


def test_domain_changed_again_fails_and_writes_nothing(conn, cleanup, name_prefix, interleave):
    name = f"{name_prefix}-g"
    define_guest(conn, name)
    other = libvirt.open(URI)
    seq = iter(range(100))
    try:
        calls = interleave(lambda: _describe(other, name, f"edit {next(seq)}"), times=99)
        result = run_module(
            domain_module, {"name": name, "title": "set by the module", "memory_guard": False}
        )
    finally:
        other.close()
    assert result["failed"] is True
    assert result["msg"].startswith(f"guest {name} was changed concurrently by someone else")
    assert "nothing was written" in result["msg"]
    assert len(calls) == 2
    root = guest_xml(conn, name)
    assert root.find("title") is None  # the module wrote nothing
    assert root.findtext("description") == "edit 1"  # the other writer's last change stays


def test_domain_created_concurrently_is_updated_not_replaced(
    conn, cleanup, name_prefix, interleave
):
    name = f"{name_prefix}-g"
    other = libvirt.open(URI)
    made = []

    def create_elsewhere():
        made.append(define_guest(other, name).UUIDString())
        _describe(other, name, "created by the other play")

    try:
        calls = interleave(create_elsewhere)
        result = run_module(
            domain_module,
            {"name": name, "memory": 64, "title": "set by the module", "memory_guard": False},
        )
    finally:
        other.close()
    assert not result.get("failed"), result
    assert len(calls) == 2
    root = guest_xml(conn, name)
    assert root.findtext("uuid") == made[0]  # the other play's guest, updated in place
    assert root.findtext("title") == "set by the module"
    assert root.findtext("description") == "created by the other play"


# --------------------------------------------------------------------------- network
def test_network_recomputes_after_a_concurrent_change(conn, cleanup, name_prefix, interleave):
    name = f"{name_prefix}-n"
    define_network(conn, name)
    other = libvirt.open(URI)

    def set_mtu():
        root = network_xml(other, name)
        etree.SubElement(root, "mtu", size="1400")
        other.networkDefineXML(etree.tostring(root, encoding="unicode"))

    try:
        calls = interleave(set_mtu)
        result = run_module(
            network_module, {"name": name, "state": "present", "domain": "conc.test"}
        )
    finally:
        other.close()
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert len(calls) == 2
    root = network_xml(conn, name)
    assert root.find("domain").get("name") == "conc.test"
    assert root.find("mtu").get("size") == "1400"  # not lost


def test_network_changed_again_fails_and_writes_nothing(conn, cleanup, name_prefix, interleave):
    name = f"{name_prefix}-n"
    define_network(conn, name)
    other = libvirt.open(URI)
    sizes = iter(range(1400, 1500))

    def set_mtu():
        root = network_xml(other, name)
        mtu = root.find("mtu")
        if mtu is None:
            mtu = etree.SubElement(root, "mtu")
        mtu.set("size", str(next(sizes)))
        other.networkDefineXML(etree.tostring(root, encoding="unicode"))

    try:
        calls = interleave(set_mtu, times=99)
        result = run_module(
            network_module, {"name": name, "state": "present", "domain": "conc.test"}
        )
    finally:
        other.close()
    assert result["failed"] is True
    assert result["msg"].startswith(f"network {name} was changed concurrently by someone else")
    assert len(calls) == 2
    root = network_xml(conn, name)
    assert root.find("domain") is None
    assert root.find("mtu").get("size") == "1401"


# --------------------------------------------------------------------------- pool
def _netfs_pool(conn, name: str, target: str):
    return conn.storagePoolDefineXML(
        f"<pool type='netfs'><name>{name}</name><source><host name='198.18.0.9'/>"
        "<dir path='/export/a'/><format type='nfs'/></source>"
        f"<target><path>{target}</path></target></pool>",
        0,
    )


def _set_mode(conn, name: str, mode: str) -> None:
    root = pool_xml(conn, name)
    target = root.find("target")
    perms = target.find("permissions")
    if perms is None:
        perms = etree.SubElement(target, "permissions")
    for old in perms.findall("mode"):
        perms.remove(old)
    etree.SubElement(perms, "mode").text = mode
    conn.storagePoolDefineXML(etree.tostring(root, encoding="unicode"), 0)


def pool_args(name: str, tmp_path) -> dict:
    """The module's wish: the same pool, another exported directory."""
    return {
        "name": name,
        "type": "netfs",
        "target": str(tmp_path / "mnt"),
        "source": {"hosts": ["198.18.0.9"], "dir": "/export/b"},
        "active": False,
    }


def test_pool_recomputes_after_a_concurrent_change(
    conn, cleanup, name_prefix, interleave, tmp_path
):
    name = f"{name_prefix}-p"
    _netfs_pool(conn, name, str(tmp_path / "mnt"))
    other = libvirt.open(URI)
    try:
        calls = interleave(lambda: _set_mode(other, name, "0711"))
        result = run_module(pool_module, pool_args(name, tmp_path))
    finally:
        other.close()
    assert not result.get("failed"), result
    assert result["actions"] == ["redefine"]
    assert len(calls) == 2
    root = pool_xml(conn, name)
    assert root.find("source/dir").get("path") == "/export/b"
    assert root.find("source/format").get("type") == "nfs"  # not given: kept
    assert root.findtext("target/permissions/mode") == "0711"  # not lost


def test_pool_changed_again_fails_and_writes_nothing(
    conn, cleanup, name_prefix, interleave, tmp_path
):
    name = f"{name_prefix}-p"
    _netfs_pool(conn, name, str(tmp_path / "mnt"))
    other = libvirt.open(URI)
    modes = iter(["0700", "0701", "0710", "0711", "0750"])
    try:
        calls = interleave(lambda: _set_mode(other, name, next(modes)), times=99)
        result = run_module(pool_module, pool_args(name, tmp_path))
    finally:
        other.close()
    assert result["failed"] is True
    assert result["msg"].startswith(f"storage pool '{name}' was changed concurrently")
    assert len(calls) == 2
    root = pool_xml(conn, name)
    assert root.find("source/dir").get("path") == "/export/a"
    assert root.findtext("target/permissions/mode") == "0701"


def test_pool_redefine_keeps_what_the_module_does_not_manage(conn, cleanup, name_prefix, tmp_path):
    name = f"{name_prefix}-p"
    _netfs_pool(conn, name, str(tmp_path / "mnt"))
    _set_mode(conn, name, "0750")
    result = run_module(pool_module, pool_args(name, tmp_path))
    assert result["actions"] == ["redefine"], result
    root = pool_xml(conn, name)
    assert root.find("source/dir").get("path") == "/export/b"
    assert root.findtext("target/permissions/mode") == "0750"


# --------------------------------------------------------------------------- no bare crash
def _no_crash(run) -> None:
    for text in (run.stdout, run.stderr):
        assert "MODULE FAILURE" not in text
        assert "Traceback" not in text


def test_control_characters_fail_clearly_before_any_change(playbook, conn, cleanup, name_prefix):
    existing = f"{name_prefix}-ok"
    define_guest(conn, existing)
    before = conn.lookupByName(existing).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    cases = [
        (
            "guest name",
            "virtops.kvm.domain",
            {"name": f"{name_prefix}-a\x01", "memory": 64},
            "name",
        ),
        ("guest title", "virtops.kvm.domain", {"name": existing, "title": "t\x1bx"}, "title"),
        (
            "new guest description",
            "virtops.kvm.domain",
            {"name": f"{name_prefix}-b", "memory": 64, "description": "d\x00"},
            "description",
        ),
        ("network name", "virtops.kvm.network", {"name": f"{name_prefix}-n\x02"}, "name"),
        (
            "pool name",
            "virtops.kvm.pool",
            {"name": f"{name_prefix}-p\x03", "type": "dir", "target": "/var/tmp/x"},
            "name",
        ),
        ("volume name", "virtops.kvm.volume", {"pool": "default", "name": "v\x04"}, "name"),
        (
            "snapshot description",
            "virtops.kvm.snapshot",
            {"domain": existing, "name": "s1", "description": "x\x05"},
            "description",
        ),
    ]
    tasks = [
        {"name": label, module: args, "ignore_errors": True}
        for label, module, args, _option in cases
    ]
    run = playbook(tasks)
    _no_crash(run)
    for label, _module, _args, option in cases:
        result = failed(run, label)
        assert result["msg"].startswith(f"Option {option} contains the control character U+"), (
            label,
            result["msg"],
        )
        assert result["option"] == option
    assert [d.name() for d in conn.listAllDomains(0) if d.name().startswith(name_prefix)] == [
        existing
    ]
    assert not [n for n in conn.listAllNetworks(0) if n.name().startswith(name_prefix)]
    assert not [p for p in conn.listAllStoragePools(0) if p.name().startswith(name_prefix)]
    dom = conn.lookupByName(existing)
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    assert dom.snapshotNum(0) == 0


def test_unreadable_source_path_is_a_typed_error(playbook, conn, dir_pool, name_prefix):
    task = {
        "name": "import",
        "virtops.kvm.volume": {
            "pool": dir_pool.name(),
            "name": f"{name_prefix}.img",
            "source_path": "/proc/self/mem",
        },
        "ignore_errors": True,
    }
    run = playbook([task])
    _no_crash(run)
    result = failed(run, "import")
    assert result["msg"].startswith("Cannot read source_path '/proc/self/mem': ")
    assert result["option"] == "source_path"
    dir_pool.refresh(0)
    assert dir_pool.listVolumes() == []
