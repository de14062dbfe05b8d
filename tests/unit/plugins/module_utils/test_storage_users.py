"""Who uses a volume (``_storage_users``), and the modules that refuse to remove storage in
use, on libvirt's test:///default driver (one shared state per process)."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule
from ansible_collections.virtops.kvm.plugins.module_utils._storage_users import (
    StorageUser,
    StorageUsers,
)
from ansible_collections.virtops.kvm.plugins.module_utils._volume_import import (
    DigestRecords,
    volume_fingerprint,
)
from ansible_collections.virtops.kvm.plugins.modules import domain as domain_module
from ansible_collections.virtops.kvm.plugins.modules import pool as pool_module
from ansible_collections.virtops.kvm.plugins.modules import volume as volume_module

TEST = "test:///default"
POOL = "default-pool"
DIR = "/default-pool"


@pytest.fixture
def warned(monkeypatch) -> list[str]:
    """The warnings modules give (ansible's own collection of them is process-wide)."""
    got: list[str] = []
    monkeypatch.setattr(KvmModule, "warn", lambda _self, msg: got.append(msg))
    return got


@pytest.fixture
def conn():
    c = libvirt.open(TEST)
    yield c
    for dom in c.listAllDomains():
        if not dom.isPersistent():
            dom.destroy()  # the pristine fixture undefines persistent guests only
    c.close()


def volume(pool, name: str, *, fmt: str = "qcow2", backing: str | None = None):
    store = f"<backingStore><path>{backing}</path></backingStore>" if backing else ""
    return pool.createXML(
        f"<volume><name>{name}</name><capacity>1048576</capacity>"
        f"<target><format type='{fmt}'/></target>{store}</volume>",
        0,
    )


def guest_xml(name: str, *disks: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory>1024</memory>"
        f"<os><type>hvm</type></os><devices>{''.join(disks)}</devices></domain>"
    )


def vol_disk(target: str, name: str, pool: str = POOL) -> str:
    return (
        f"<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source pool='{pool}' volume='{name}'/><target dev='{target}'/></disk>"
    )


def file_disk(target: str, path: str, fmt: str = "qcow2", backing: str = "") -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{path}'/>{backing}<target dev='{target}'/></disk>"
    )


def chain_xml(*paths: str) -> str:
    """<backingStore> elements for the layers ``paths`` (top first), ended by an empty one."""
    out = "<backingStore/>"
    for path in reversed(paths):
        out = (
            f"<backingStore type='file'><format type='qcow2'/><source file='{path}'/>"
            f"{out}</backingStore>"
        )
    return out


@pytest.fixture
def pool(conn):
    p = conn.storagePoolLookupByName(POOL)
    volume(p, "v1.qcow2")
    volume(p, "v2.qcow2")
    return p


def test_shut_off_running_and_transient_guests_use_volume_disks(conn, pool):
    conn.defineXML(guest_xml("A", vol_disk("vda", "v1.qcow2"), vol_disk("vdb", "v2.qcow2")))
    conn.defineXML(guest_xml("B", vol_disk("vdc", "v2.qcow2"))).create()
    conn.createXML(guest_xml("T", file_disk("vdd", f"{DIR}/v2.qcow2")), 0)
    users = StorageUsers(conn)
    v1 = pool.storageVolLookupByName("v1.qcow2")
    v2 = pool.storageVolLookupByName("v2.qcow2")
    assert users.of_volume(v1) == [StorageUser("A", "vda", "direct", False, "v1.qcow2")]
    assert users.of_volume(v2) == [
        StorageUser("A", "vdb", "direct", False, "v2.qcow2"),
        StorageUser("B", "vdc", "direct", True, "v2.qcow2"),
        StorageUser("T", "vdd", "direct", True, "v2.qcow2"),
    ]
    assert [u.guest for u in users.of_volume(v2, exclude_guest="A")] == ["B", "T"]
    assert users.of_volume(v1)[0].describe() == "guest A (shut off) disk vda uses v1.qcow2"


def test_backing_chains_from_guest_xml_and_volume_xml(conn, pool):
    v1 = pool.storageVolLookupByName("v1.qcow2")
    volume(pool, "ov.qcow2", backing=f"{DIR}/v1.qcow2")
    volume(pool, "ov2.qcow2", backing=f"{DIR}/ov.qcow2")
    # the chain in the guest's XML (as in the live XML of a running guest)
    conn.defineXML(
        guest_xml(
            "X", file_disk("vda", "/elsewhere/top.qcow2", backing=chain_xml(f"{DIR}/v1.qcow2"))
        )
    )
    # no chain in the XML: followed through the volume XML, two layers down
    conn.defineXML(guest_xml("C", file_disk("vdb", f"{DIR}/ov2.qcow2")))
    # a disk read as raw has no backing chain (QEMU reads the qcow2 file as raw data)
    conn.defineXML(guest_xml("R", file_disk("vdc", f"{DIR}/ov.qcow2", fmt="raw")))
    users = StorageUsers(conn).of_volume(v1)
    assert [(u.guest, u.disk, u.how) for u in users] == [
        ("C", "vdb", "backing chain"),
        ("X", "vda", "backing chain"),
        (None, None, "backing of volume ov.qcow2"),
    ]
    vol_user = next(u for u in users if u.guest is None)
    assert vol_user.describe() == "volume ov.qcow2 backs onto it"


def test_unused_volume_has_no_users(conn, pool):
    conn.defineXML(guest_xml("A", vol_disk("vda", "v1.qcow2")))
    assert StorageUsers(conn).of_volume(pool.storageVolLookupByName("v2.qcow2")) == []


def test_pool_users_running_and_stopped_pools(conn, pool):
    volume(pool, "ov.qcow2", backing=f"{DIR}/v1.qcow2")  # inside the pool: does not count
    other = conn.storagePoolDefineXML(
        "<pool type='dir'><name>other</name><target><path>/other</path></target></pool>", 0
    )
    conn.defineXML(
        guest_xml(
            "A",
            vol_disk("vda", "v1.qcow2"),
            file_disk("vdb", "/other/x.img", fmt="raw"),
            vol_disk("vdc", "y.qcow2", pool="other"),
            file_disk("vdd", "/otherwise/z.img", fmt="raw"),
        )
    )
    users = StorageUsers(conn)
    assert [(u.disk, u.volume) for u in users.of_pool(pool)] == [("vda", "v1.qcow2")]
    assert not other.isActive()
    assert [(u.disk, u.volume) for u in users.of_pool(other)] == [
        ("vdb", "x.img"),
        ("vdc", "y.qcow2"),
    ]
    assert users.of_pool(other, exclude_guest="A") == []


def test_network_disks_compare_protocol_and_name(conn):
    rbd = conn.storagePoolDefineXML(
        "<pool type='rbd'><name>ceph</name><source><host name='198.18.0.5'/>"
        "<name>vms</name></source></pool>",
        0,
    )
    net = (
        "<disk type='network' device='disk'><source protocol='{p}' name='{n}'/>"
        "<target dev='{t}'/></disk>"
    )
    conn.defineXML(
        guest_xml(
            "N",
            net.format(p="rbd", n="vms/img1", t="vda"),
            net.format(p="nbd", n="vms/img2", t="vdb"),  # same name, other protocol
            net.format(p="rbd", n="other/img3", t="vdc"),
        )
    )
    users = StorageUsers(conn).of_pool(rbd)
    assert [(u.guest, u.disk, u.volume) for u in users] == [("N", "vda", "img1")]


def test_each_guest_xml_is_read_once(conn, pool):
    conn.defineXML(guest_xml("A", vol_disk("vda", "v1.qcow2")))
    conn.defineXML(guest_xml("B", vol_disk("vda", "v2.qcow2"))).create()
    reads: dict[str, int] = {}

    class Counting:
        def __init__(self, dom):
            self.dom = dom

        def __getattr__(self, name):
            return getattr(self.dom, name)

        def XMLDesc(self, flags):
            reads[self.dom.name()] = reads.get(self.dom.name(), 0) + 1
            return self.dom.XMLDesc(flags)

    class Conn:
        def __getattr__(self, name):
            return getattr(conn, name)

        def listAllDomains(self, flags):
            return [Counting(d) for d in conn.listAllDomains(flags)]

    users = StorageUsers(Conn())
    for vol in pool.listAllVolumes(0):
        users.of_volume(vol)
    users.of_pool(pool)
    assert reads == {"A": 1, "B": 2, "test": 2}  # inactive XML, and the live one when running


# ------------------------------------------------------------------ the modules


def test_volume_absent_refused_while_used_then_forced(conn, pool, module_runner, warned):
    conn.defineXML(guest_xml("A", vol_disk("vda", "v1.qcow2")))
    args = {"uri": TEST, "pool": POOL, "name": "v1.qcow2", "state": "absent"}
    for check in (True, False):
        refused = module_runner(volume_module, args, check_mode=check)
        assert refused["failed"]
        assert "is in use: guest A (shut off) disk vda" in refused["msg"]
        assert refused["users"] == [
            {"guest": "A", "disk": "vda", "how": "direct", "running": False, "volume": "v1.qcow2"}
        ]
    assert "v1.qcow2" in pool.listVolumes()
    forced = module_runner(volume_module, {**args, "force": True})
    assert forced["changed"] and forced["actions"] == ["delete"]
    assert forced["users"][0]["guest"] == "A"
    assert any("deleting it anyway" in w for w in warned)
    assert "v1.qcow2" not in pool.listVolumes()


def test_pool_absent_delete_storage_refused_while_used(conn, pool, module_runner):
    conn.defineXML(guest_xml("A", vol_disk("vda", "v2.qcow2")))
    args = {"uri": TEST, "name": POOL, "state": "absent", "delete_storage": True}
    refused = module_runner(pool_module, args)
    assert refused["failed"] and "guest A (shut off) disk vda uses v2.qcow2" in refused["msg"]
    assert pool.isActive() and sorted(pool.listVolumes()) == ["v1.qcow2", "v2.qcow2"]
    kept = module_runner(pool_module, {**args, "delete_storage": False}, check_mode=True)
    assert kept["changed"] and "users" not in kept  # the volumes would stay: not refused


def test_domain_absent_keeps_shared_volumes(conn, pool, module_runner, warned):
    conn.defineXML(guest_xml("A", vol_disk("vda", "v1.qcow2"), vol_disk("vdb", "v2.qcow2")))
    conn.defineXML(
        guest_xml("B", vol_disk("vda", "v2.qcow2"), file_disk("vdb", "/nowhere/disk.qcow2"))
    )
    args = {"uri": TEST, "name": "B", "state": "absent", "remove_storage": True}
    for check in (True, False):
        result = module_runner(domain_module, args, check_mode=check)
        assert result["changed"] and result["removed_volumes"] == []
        assert result["kept_volumes"] == [
            {
                "path": f"{DIR}/v2.qcow2",
                "reason": "in use: guest A (shut off) disk vdb uses v2.qcow2",
            },
            {
                "path": "/nowhere/disk.qcow2",
                "reason": "disk vdb is not a volume of a running storage pool",
            },
        ]
        assert any(w.startswith(f"Volume {DIR}/v2.qcow2 is kept") for w in warned)
    assert sorted(pool.listVolumes()) == ["v1.qcow2", "v2.qcow2"]
    gone = module_runner(
        domain_module, {**args, "name": "A"}
    )  # A is the last user of both: they go with it
    assert gone["removed_volumes"] == [f"{DIR}/v1.qcow2", f"{DIR}/v2.qcow2"]
    assert gone["kept_volumes"] == []
    assert pool.listVolumes() == []


# ------------------------------------------------------------------ digests for check mode


VOLUME_XML = """<volume type='file'><name>v</name><capacity unit='bytes'>1048576</capacity>
  <allocation unit='bytes'>4096</allocation><target><path>/p/v</path>
  <timestamps><mtime>{mtime}</mtime><ctime>1796069991.397044705</ctime></timestamps>
  </target></volume>"""


def test_recorded_digest_holds_only_while_the_volume_is_unchanged(tmp_path):
    records = DigestRecords(str(tmp_path / "cache" / "digests.json"))
    before = volume_fingerprint(VOLUME_XML.format(mtime="1796069991.397044705"))
    records.put("qemu:///system /p/v", before, "sha256", "ab" * 32)
    assert records.get("qemu:///system /p/v", before, "sha256") == "ab" * 32
    assert records.get("qemu:///system /p/v", before, "sha512") is None
    assert records.get("qemu:///system /p/w", before, "sha256") is None
    written = volume_fingerprint(VOLUME_XML.format(mtime="1796070000.000000001"))
    assert records.get("qemu:///system /p/v", written, "sha256") is None
    # no times (block or RBD volumes): nothing is recorded or trusted
    bare = volume_fingerprint(VOLUME_XML.format(mtime="").replace("<mtime></mtime>", ""))
    assert bare is None
    records.put("qemu:///system /p/x", bare, "sha256", "cd" * 32)
    assert records.get("qemu:///system /p/x", bare, "sha256") is None
