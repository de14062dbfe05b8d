"""Unit tests of the typed devices beyond disks and NICs: parse, read, write, compare."""

from __future__ import annotations

import subprocess

import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_extra_devices as extra
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_model as model
from ansible_collections.virtops.kvm.plugins.module_utils import _xml
from ansible_collections.virtops.kvm.plugins.module_utils._domain_spec import desired_from_params
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError

# Inactive XML as libvirt 9.0 wrote it for a q35 guest with these devices (trimmed).
ACTUAL = """
<domain type='qemu'>
  <name>g1</name>
  <uuid>0be9e1af-960a-438e-99c2-c5273d7f8fd8</uuid>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu placement='static'>1</vcpu>
  <iothreads>1</iothreads>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>virtops</entry>
      <entry name='serial'>VT-1</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
    <smbios mode='sysinfo'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='scsi' index='0' model='virtio-scsi'>
      <driver queues='2' iothread='1'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'/>
    <controller type='pci' index='0' model='pcie-root'/>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/>
      <source dir='/srv/share'/>
      <target dir='share'/>
      <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>
    </filesystem>
    <input type='tablet' bus='usb'><address type='usb' bus='0' port='1'/></input>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
    <graphics type='vnc' port='-1' autoport='yes'/>
    <sound model='ich9'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1b' function='0x0'/>
    </sound>
    <audio id='1' type='none'/>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/>
    </video>
  </devices>
</domain>
"""


@pytest.fixture
def root():
    return etree.fromstring(ACTUAL.encode(), etree.XMLParser(remove_blank_text=True))


def wished(**params):
    params.setdefault("name", "g1")
    return desired_from_params(params).fields


def changes(root, fields):
    return [name for name, before, after in model.compare(root, fields) if before != after]


def test_reads_libvirt_definition(root):
    assert extra.read_controllers(root)[0] == {
        "type": "scsi",
        "index": 0,
        "model": "virtio-scsi",
        "queues": 2,
        "iothread": 1,
    }
    assert extra.read_tpm(root) == {"model": "tpm-crb", "version": "2.0", "persistent_state": False}
    assert extra.read_video(root) == {"model": "virtio", "heads": 1}
    assert extra.read_sound(root) == [{"model": "ich9"}]
    assert extra.read_inputs(root) == [{"type": "tablet", "bus": "usb"}]  # PS/2 left out
    assert extra.read_sysinfo(root) == {
        "system": {"manufacturer": "virtops", "serial": "VT-1"},
        "baseboard": {},
    }
    assert extra.read_filesystems(root) == [{"source": "/srv/share", "target": "share"}]


def test_the_same_wish_is_no_change(root):
    f = wished(
        controllers=[{"type": "scsi", "queues": 2, "iothread": 1}],
        tpm={"model": "tpm-crb"},
        video={"model": "virtio"},
        sound=[{"model": "ich9"}],
        inputs=[{"type": "tablet"}],
        sysinfo={"system": {"manufacturer": "virtops", "serial": "VT-1"}},
        filesystems=[{"source": "/srv/share/", "target": "share"}],
    )
    assert changes(root, f) == []


def test_each_change_is_seen_and_written(root):
    f = wished(
        controllers=[{"type": "scsi", "queues": 4}, {"type": "virtio-serial", "index": 0}],
        tpm={"model": "tpm-tis", "version": "1.2", "persistent_state": True},
        video={"model": "qxl", "heads": 2},
        sound=[{"model": "ac97"}, {"model": "ich9"}],
        inputs=[{"type": "keyboard", "bus": "virtio"}],
        sysinfo={"baseboard": {"asset": "A-1"}},
        filesystems=[{"source": "/srv/other", "target": "other"}],
    )
    assert changes(root, f) == [
        "controllers",
        "tpm",
        "video",
        "sound",
        "inputs",
        "sysinfo",
        "filesystems",
    ]
    scsi_address = _xml.to_string(root.find("devices/controller/address"))
    model.write(root, f, list(f))
    assert changes(root, f) == []
    # the controller kept its address, iothread (not given) and libvirt's other controllers
    scsi = root.find("devices/controller[@type='scsi']")
    assert _xml.to_string(scsi.find("address")) == scsi_address
    assert scsi.find("driver").attrib == {"queues": "4", "iothread": "1"}
    assert root.find("devices/controller[@type='pci']") is not None
    assert root.find("devices/tpm/backend").get("persistent_state") == "yes"
    assert [e.get("bus") for e in root.findall("devices/input")] == ["ps2", "ps2", "virtio"]
    assert root.find("sysinfo/system") is None
    assert root.find("sysinfo/baseBoard/entry").text == "A-1"
    assert root.find("memoryBacking/access").get("mode") == "shared"


def test_removals(root):
    f = wished(tpm={"model": "none"}, sound=[], inputs=[], sysinfo={}, filesystems=[])
    model.write(root, f, list(f))
    assert changes(root, f) == []
    for path in ("devices/tpm", "devices/sound", "sysinfo", "os/smbios", "devices/filesystem"):
        assert root.find(path) is None, path
    assert len(root.findall("devices/input")) == 2  # libvirt's PS/2 pair stays


def test_shared_memory_keeps_a_hugepage_source():
    root = model.skeleton("g", "qemu")
    backing = _xml.sub(root, "memoryBacking")
    _xml.sub(backing, "hugepages")
    extra.write_filesystems(root, [{"source": "/srv", "target": "srv"}])
    assert [c.tag for c in root.find("memoryBacking")] == ["hugepages", "source", "access"]
    assert extra.read_shared_memory(root)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tpm": {"model": "tpm-crb", "version": "1.2"}}, "needs version 2.0"),
        ({"tpm": {"model": "none", "persistent_state": True}}, "takes no persistent_state"),
        ({"controllers": [{"type": "usb", "queues": 2}]}, "are for scsi"),
        ({"controllers": [{"type": "scsi", "model": "lsilogic", "queues": 2}]}, "virtio-scsi"),
        ({"controllers": [{"type": "scsi", "queues": 0}]}, "at least 1"),
        ({"controllers": [{"type": "scsi"}, {"type": "scsi", "index": 0}]}, "given twice"),
        (
            {"tuning": {"iothreads": 1}, "controllers": [{"type": "scsi", "iothread": 3}]},
            "iothread 3 does not exist",
        ),
        ({"inputs": [{"type": "mouse", "bus": "ps2"}]}, "bus ps2"),
        ({"video": {"model": "none", "heads": 1}}, "takes no heads"),
        ({"video": {"model": "virtio", "heads": 17}}, "out of range"),
        ({"filesystems": [{"source": "srv", "target": "t"}]}, "not an absolute path"),
        ({"filesystems": [{"source": "/srv", "target": "t" * 37}]}, "1-36 characters"),
        (
            {"filesystems": [{"source": "/a", "target": "t"}, {"source": "/b", "target": "t"}]},
            "given twice",
        ),
        ({"sysinfo": {"system": {"serial": ""}}}, "non-empty string"),
    ],
)
def test_bad_input_fails(params, message):
    with pytest.raises(KvmValidationError, match=message):
        wished(**params)


def test_written_devices_pass_libvirt_schema(tmp_path):
    root = model.skeleton("g2", "qemu")
    f = wished(
        controllers=[{"type": "scsi", "queues": 2}],
        tpm={"model": "tpm-crb", "persistent_state": True},
        video={"model": "virtio"},
        sound=[{"model": "ich9"}],
        inputs=[{"type": "tablet"}],
        sysinfo={"system": {"manufacturer": "m"}, "baseboard": {"product": "p"}},
        filesystems=[{"source": "/srv", "target": "srv"}],
        boot=["hd"],
    )
    model.write(root, f, list(f))
    path = tmp_path / "d.xml"
    path.write_text(_xml.to_string(root))
    proc = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr + path.read_text()


HOSTDEVS = """
<domain type='qemu'>
  <name>g3</name>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/></source>
      <rom bar='off'/>
      <boot order='1'/>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </hostdev>
    <hostdev mode='subsystem' type='usb' managed='no'>
      <source><vendor id='0x046d'/><product id='0xc52b'/></source>
      <address type='usb' bus='0' port='2'/>
    </hostdev>
    <hostdev mode='subsystem' type='scsi'>
      <source><adapter name='scsi_host0'/><address bus='0' target='0' unit='0'/></source>
    </hostdev>
  </devices>
</domain>
"""


@pytest.fixture
def hostdev_root():
    return etree.fromstring(HOSTDEVS.encode(), etree.XMLParser(remove_blank_text=True))


def test_hostdevs_read_and_same_wish(hostdev_root):
    assert extra.read_hostdevs(hostdev_root) == [
        {"type": "pci", "address": "0000:00:1f.2", "managed": True, "rom": False, "boot_order": 1},
        {
            "type": "usb",
            "vendor": "0x046d",
            "product": "0xc52b",
            "managed": False,
            "boot_order": None,
        },
    ]
    f = wished(
        boot=[],
        hostdevs=[
            {"type": "usb", "vendor": "46D", "product": "0xC52B", "managed": False},
            {"address": "00:1f.2", "boot_order": 1},  # rom not given: not compared
        ],
    )
    assert [n for n, before, after in model.compare(hostdev_root, f) if before != after] == []


def test_hostdevs_change_keeps_the_rest(hostdev_root):
    pci_address = _xml.to_string(hostdev_root.find("devices/hostdev/address"))
    uuid = "c2177883-f1bb-47f0-914d-32a22e3a8804"
    f = wished(
        hostdevs=[
            {"type": "pci", "address": "0000:00:1f.2", "rom": True},
            {"type": "mdev", "uuid": uuid.upper()},
        ]
    )
    assert changes(hostdev_root, f) == ["hostdevs"]
    model.write(hostdev_root, f, list(f))
    assert changes(hostdev_root, f) == []
    pci = hostdev_root.find("devices/hostdev[@type='pci']")
    assert _xml.to_string(pci.find("address")) == pci_address  # kept its guest address
    assert pci.find("boot") is None and pci.find("rom").get("bar") == "on"
    assert hostdev_root.find("devices/hostdev[@type='usb']") is None
    assert hostdev_root.find("devices/hostdev[@type='scsi']") is not None  # not ours
    mdev = hostdev_root.find("devices/hostdev[@type='mdev']")
    assert (mdev.get("model"), mdev.find("source/address").get("uuid")) == ("vfio-pci", uuid)
    f = wished(hostdevs=[])
    model.write(hostdev_root, f, list(f))
    assert extra.read_hostdevs(hostdev_root) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"address": "0000:00:20.0"}, "not of the form"),
        ({"address": "1f.2"}, "not of the form"),
        ({"type": "pci"}, "needs its address"),
        ({"type": "usb", "vendor": "046d"}, "needs vendor and product"),
        ({"type": "usb", "vendor": "xyz", "product": "1"}, "not a USB id"),
        ({"type": "mdev", "uuid": "nope"}, "UUID of the mediated device"),
        ({"type": "usb", "vendor": "1", "product": "2", "rom": True}, "rom not for a usb"),
        ({"address": "00:02.0", "boot_order": 0}, "at least 1"),
    ],
)
def test_bad_hostdevs_fail(spec, message):
    with pytest.raises(KvmValidationError, match=message):
        wished(hostdevs=[spec])


def test_hostdevs_twice_fail():
    with pytest.raises(KvmValidationError, match="given twice"):
        wished(hostdevs=[{"address": "00:02.0"}, {"address": "0000:00:02.0"}])
    with pytest.raises(KvmValidationError, match="boot_order 1 is given twice"):
        wished(
            hostdevs=[
                {"address": "00:02.0", "boot_order": 1},
                {"address": "00:03.0", "boot_order": 1},
            ]
        )


def test_written_hostdevs_pass_libvirt_schema(tmp_path):
    root = model.skeleton("g4", "qemu")
    f = wished(
        hostdevs=[
            {"address": "00:02.0", "rom": False, "boot_order": 1},
            {"type": "usb", "vendor": "1d6b", "product": "0002"},
            {"type": "mdev", "uuid": "c2177883-f1bb-47f0-914d-32a22e3a8804"},
        ],
    )
    model.write(root, f, list(f))
    path = tmp_path / "d.xml"
    path.write_text(_xml.to_string(root))
    proc = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr + path.read_text()
