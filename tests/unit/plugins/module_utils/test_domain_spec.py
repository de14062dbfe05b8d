"""Unit tests of the option checks and the lifecycle plan of the domain module."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _xml
from ansible_collections.virtops.kvm.plugins.module_utils._domain_checks import HostChecks
from ansible_collections.virtops.kvm.plugins.module_utils._domain_lifecycle import (
    Lifecycle,
    plan,
)
from ansible_collections.virtops.kvm.plugins.module_utils._domain_spec import desired_from_params
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmTimeoutError,
    KvmValidationError,
)


def wish(**params):
    params.setdefault("name", "g")
    return desired_from_params(params)


def test_memory_units():
    assert wish(memory=512).fields["memory"] == 512
    assert wish(memory="2GiB").fields["memory"] == 2048
    assert wish(memory="1G").fields["memory"] == 1024
    assert wish(memory="1536MiB", max_memory="2G").fields["max_memory"] == 2048


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"memory": "lots"}, "cannot read"),
        ({"memory": "1000KiB"}, "not a whole number of MiB"),
        ({"memory": 0}, "at least 1 MiB"),
        ({"memory": 512, "max_memory": 256}, "is below memory"),
        ({"vcpus": 0}, "at least 1"),
        ({"vcpus": 4, "max_vcpus": 2}, "is below vcpus"),
        ({"cpu": {"mode": "host-passthrough", "model": "qemu64"}}, "needs mode custom"),
        ({"firmware": "bios", "secure_boot": True}, "needs firmware uefi"),
        ({"kernel": "", "initrd": "/i"}, "need a kernel"),
        ({"disks": [{"path": "/a", "pool": "p", "volume": "v"}]}, "not both"),
        ({"disks": [{"volume": "v"}]}, "needs its pool"),
        ({"disks": [{"device": "disk"}]}, "needs a path"),
        ({"disks": [{"path": "/a", "bus": "sata", "target": "vdb"}]}, "does not fit bus"),
        ({"interfaces": [{}]}, "exactly one of"),
        ({"interfaces": [{"network": "n", "mac": "01:00:00:00:00:01"}]}, "multicast"),
        ({"interfaces": [{"network": "n", "mac": "zz"}]}, "invalid MAC"),
        ({"interfaces": [{"network": "n", "mode": "vepa"}]}, "macvtap"),
        ({"serials": [{"type": "file"}]}, "needs a path"),
        ({"serials": [{"port": 0}, {"port": 0}]}, "given twice"),
        ({"graphics": {"type": "none", "port": 5901}}, "takes no listen"),
        ({"tuning": {"vcpu_pins": [{"vcpu": 0, "cpuset": "x"}]}}, "Invalid"),
        (
            {"tuning": {"iothreads": 1, "iothread_pins": [{"iothread": 2, "cpuset": "0"}]}},
            "does not exist",
        ),
        ({"tuning": {"blkio_weight": 5}}, "100-1000"),
        ({"tuning": {"memory_hard_limit": 100, "memory_soft_limit": 200}}, "above"),
        ({"xml": "<devices><disk></devices>"}, "Malformed xml option"),
    ],
)
def test_bad_input(params, message):
    with pytest.raises(KvmValidationError, match=message):
        wish(**params)


def test_secure_boot_implies_uefi():
    fields = wish(secure_boot=True).fields
    assert fields["firmware"] == "uefi" and fields["secure_boot"] is True


def test_cdrom_is_an_extra_disk_and_not_exclusive():
    disks = wish(cdrom="/x.iso").fields["disks"]
    assert disks.exclusive is False
    [cd] = disks.disks
    assert (cd.device, cd.bus, cd.path, cd.readonly) == ("cdrom", "sata", "/x.iso", True)


def test_interfaces_types():
    nics = wish(interfaces=[{"network": "n"}, {"bridge": "br0"}, {"dev": "eth0"}]).fields[
        "interfaces"
    ]
    assert [(n.type, n.source, n.mode) for n in nics] == [
        ("network", "n", None),
        ("bridge", "br0", None),
        ("direct", "eth0", "bridge"),
    ]


@pytest.mark.parametrize(
    ("current", "wanted", "steps", "final"),
    [
        ("shutoff", "running", ["start"], "running"),
        ("paused", "running", ["resume"], "running"),
        ("running", "running", [], "running"),
        ("running", "shutdown", ["shutdown"], "shutoff"),
        ("paused", "shutdown", ["resume", "shutdown"], "shutoff"),
        ("shutoff", "shutdown", [], "shutoff"),
        ("running", "paused", ["suspend"], "paused"),
        ("shutoff", "paused", ["start_paused"], "paused"),
        ("running", "destroyed", ["destroy"], "shutoff"),
        ("shutoff", "destroyed", [], "shutoff"),
        ("running", "present", [], "running"),
        ("crashed", "running", ["start"], "running"),
    ],
)
def test_plan(current, wanted, steps, final):
    result = plan(current, wanted)
    assert (result.steps, result.final) == (steps, final)


class FakeDom:
    """A guest that ignores the first ``ignore`` shutdown requests."""

    def __init__(self, ignore: int):
        self.ignore = ignore
        self.requests = 0
        self.running = True
        self.destroyed = False

    def name(self):
        return "fake"

    def state(self):
        return (1 if self.running else 5, 0)

    def shutdownFlags(self, flags):
        self.requests += 1
        if self.requests > self.ignore:
            self.running = False

    def destroy(self):
        self.running = False
        self.destroyed = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_shutdown_asks_again_and_waits():
    clock = Clock()
    dom = FakeDom(ignore=1)
    life = Lifecycle(dom, timeout=60, clock=clock, sleep=clock.sleep)
    life.shutdown()
    assert dom.requests == 2 and not dom.running and not dom.destroyed
    assert 5 <= clock.now < 10


def test_shutdown_times_out_without_force():
    clock = Clock()
    dom = FakeDom(ignore=1000)
    life = Lifecycle(dom, timeout=20, clock=clock, sleep=clock.sleep)
    with pytest.raises(KvmTimeoutError, match="set force true"):
        life.shutdown()
    assert dom.running and not dom.destroyed


def test_shutdown_forced_after_timeout():
    clock = Clock()
    dom = FakeDom(ignore=1000)
    life = Lifecycle(dom, timeout=20, force=True, clock=clock, sleep=clock.sleep)
    life.shutdown()
    assert dom.destroyed and life.forced


# --------------------------------------------------------------------------- disk formats
# A raw file whose first bytes are a qcow2 header naming a backing file (as a guest can
# write into its own disk): magic, version 3, backing file offset 0x200, length 11.
PLANTED = b"QFI\xfb\0\0\0\3" + (0x200).to_bytes(8, "big") + (11).to_bytes(4, "big")


def libvirt_error(code: int) -> libvirt.libvirtError:
    exc = libvirt.libvirtError("fake")
    exc.err = (code, libvirt.VIR_FROM_STORAGE, "fake", 2, None, None, None, 0, 0)
    return exc


def volume_xml(fmt: str | None, backing: str | None = None) -> str:
    target = f"<target><format type='{fmt}'/></target>" if fmt else "<target/>"
    store = f"<backingStore><path>{backing}</path></backingStore>" if backing else ""
    return f"<volume><name>v</name>{target}{store}</volume>"


class FakeVolume:
    def __init__(self, xml: str) -> None:
        self.xml = xml

    def XMLDesc(self, flags):
        return self.xml


class FakePool:
    def __init__(self, volumes: dict[str, str]) -> None:
        self.volumes = volumes

    def isActive(self):
        return 1

    def storageVolLookupByName(self, name):
        if name not in self.volumes:
            raise libvirt_error(libvirt.VIR_ERR_NO_STORAGE_VOL)
        return FakeVolume(self.volumes[name])


class FakeStorage:
    """Pools by name and volumes by path, as libvirt knows them; counts path look-ups."""

    def __init__(self, pools=None, paths=None) -> None:
        self.pools = pools or {}
        self.paths = paths or {}
        self.path_lookups: list[str] = []

    def storagePoolLookupByName(self, name):
        if name not in self.pools:
            raise libvirt_error(libvirt.VIR_ERR_NO_STORAGE_POOL)
        return FakePool(self.pools[name])

    def storageVolLookupByPath(self, path):
        self.path_lookups.append(path)
        if path not in self.paths:
            raise libvirt_error(libvirt.VIR_ERR_NO_STORAGE_VOL)
        return FakeVolume(self.paths[path])


def completed(conn, disks, *, actual=None, check_mode=False):
    wish = desired_from_params({"name": "g", "disks": disks})
    root = _xml.parse(actual, "domain XML") if actual else None
    HostChecks(conn, "qemu:///system", check_mode=check_mode).complete(wish, root)
    return [d.format for d in wish.fields["disks"].disks]


@pytest.fixture
def planted(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(PLANTED + b"\0" * (0x200 - len(PLANTED)) + b"/etc/shadow" + b"\0" * 4096)
    return str(path)


def test_a_planted_qcow2_header_is_not_read_the_format_is_asked_for(planted):
    conn = FakeStorage()
    with pytest.raises(KvmValidationError) as err:
        completed(conn, [{"path": planted}])
    msg = str(err.value)
    assert "set format" in msg
    assert f"disk vda ({planted})" in msg
    assert "not a volume of a running storage pool" in msg
    assert conn.path_lookups == [planted]


def test_a_given_format_is_kept_and_nothing_is_looked_up(planted):
    conn = FakeStorage()
    assert completed(conn, [{"path": planted, "format": "raw"}]) == ["raw"]
    assert conn.path_lookups == []


def test_a_pool_volume_takes_the_pools_format():
    conn = FakeStorage(pools={"p": {"a.qcow2": volume_xml("qcow2"), "b": volume_xml(None)}})
    disks = [{"pool": "p", "volume": "a.qcow2"}, {"pool": "p", "volume": "b"}]
    assert completed(conn, disks) == ["qcow2", "raw"]


def test_a_path_libvirt_knows_as_a_volume_takes_the_pools_format(tmp_path):
    path = tmp_path / "known.qcow2"
    path.write_bytes(b"\0" * 512)  # the bytes do not matter: the pool's word does
    conn = FakeStorage(paths={str(path): volume_xml("qcow2")})
    assert completed(conn, [{"path": str(path)}]) == ["qcow2"]


def test_a_volume_the_pool_reports_with_a_backing_file_needs_format():
    conn = FakeStorage(pools={"p": {"v.img": volume_xml("qcow2", backing="/etc/shadow")}})
    with pytest.raises(KvmValidationError, match=r"set format .* names /etc/shadow as backing"):
        completed(conn, [{"pool": "p", "volume": "v.img"}])
    assert completed(conn, [{"pool": "p", "volume": "v.img", "format": "qcow2"}]) == ["qcow2"]


def test_an_existing_disk_keeps_its_format_a_new_source_needs_one(planted, tmp_path):
    actual = (
        "<domain><name>g</name><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{planted}'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    conn = FakeStorage()
    assert completed(conn, [{"path": planted}], actual=actual) == [None]  # stays qcow2
    assert conn.path_lookups == []
    other = tmp_path / "other.img"
    other.write_bytes(b"\0" * 512)
    with pytest.raises(KvmValidationError, match=r"set format .* disk vda"):
        completed(conn, [{"path": str(other), "target": "vda"}], actual=actual)


def test_check_mode_leaves_the_format_of_what_is_not_there_yet_unknown(tmp_path):
    conn = FakeStorage(pools={"p": {}})
    disks = [{"pool": "p", "volume": "later.qcow2"}, {"path": str(tmp_path / "later.img")}]
    assert completed(conn, disks, check_mode=True) == [None, None]
    assert conn.path_lookups == []


def test_a_cdrom_needs_no_format(tmp_path):
    iso = tmp_path / "install.iso"
    iso.write_bytes(b"\0" * 4096)
    assert completed(FakeStorage(), [{"path": str(iso), "device": "cdrom"}]) == [None]
