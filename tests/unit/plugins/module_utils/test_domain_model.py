"""Unit tests of the typed domain model: read, project, write, merge, targets."""

from __future__ import annotations

import copy
import shutil
import subprocess

import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_devices as dev
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_merge as xmlopt
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_model as model
from ansible_collections.virtops.kvm.plugins.module_utils import _xml
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError

# Inactive XML as libvirt 9.0 wrote it for a q35 guest (trimmed to what matters).
ACTUAL = """
<domain type='qemu'>
  <name>g1</name>
  <uuid>0be9e1af-960a-438e-99c2-c5273d7f8fd8</uuid>
  <metadata>
    <virtops:tags xmlns:virtops="https://virtops.dev/xmlns/kvm/1.0">
      <virtops:tag>web</virtops:tag>
    </virtops:tags>
  </metadata>
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <cputune>
    <shares>512</shares>
    <vcpupin vcpu='0' cpuset='0'/>
  </cputune>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <firmware><feature enabled='yes' name='secure-boot'/></firmware>
    <boot dev='hd'/>
  </os>
  <features><acpi/><smm state='on'/></features>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='allow'>qemu64</model>
    <topology sockets='1' dies='1' cores='2' threads='1'/>
  </cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native' discard='unmap'/>
      <source file='/img/a.img'/>
      <target dev='vda' bus='virtio'/>
      <iotune><total_bytes_sec>1000000</total_bytes_sec></iotune>
      <serial>abc</serial>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/img/a.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <controller type='sata' index='0'/>
    <interface type='network'>
      <mac address='52:54:00:32:1f:ec'/>
      <source network='default'/>
      <model type='virtio'/>
      <mtu size='1400'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </interface>
    <serial type='file'>
      <source path='/tmp/s.log'/>
      <target type='isa-serial' port='0'><model name='isa-serial'/></target>
    </serial>
    <console type='file'>
      <source path='/tmp/s.log'/>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <watchdog model='i6300esb' action='reset'/>
  </devices>
</domain>
"""


@pytest.fixture
def root():
    return etree.fromstring(ACTUAL.encode(), etree.XMLParser(remove_blank_text=True))


def fields(root):
    return {f.name: f.read(root) for f in model.FIELDS}


def test_reads_libvirt_definition(root):
    got = fields(root)
    assert got["memory"] == 256
    assert got["max_memory"] == 512
    assert (got["vcpus"], got["max_vcpus"]) == (1, 2)
    assert got["machine"] == "pc-q35-7.2"
    assert (got["firmware"], got["secure_boot"]) == ("uefi", True)
    assert got["tags"] == ["web"]
    assert got["cpu"] == {
        "mode": "custom",
        "model": "qemu64",
        "sockets": 1,
        "cores": 2,
        "threads": 1,
    }
    assert got["tuning.vcpu_pins"] == {0: "0"}
    assert got["tuning.cpu_shares"] == 512
    assert got["guest_agent"] is True
    assert got["graphics"] == {
        "type": "vnc",
        "listen": "127.0.0.1",
        "port": None,
        "password": None,
    }
    assert got["serials"] == [{"port": 0, "type": "file", "path": "/tmp/s.log"}]
    disk = got["disks"][0]
    assert (disk.target, disk.format, disk.cache, disk.iotune) == (
        "vda",
        "raw",
        "none",
        {"total_bytes_sec": 1000000},
    )
    nic = got["interfaces"][0]
    assert (nic.type, nic.source, nic.mac, nic.mtu) == (
        "network",
        "default",
        "52:54:00:32:1f:ec",
        1400,
    )


def test_compare_only_what_is_specified(root):
    wish = {
        "memory": 256,
        "disks": dev.DiskWish([dev.Disk(target="vda", bus="virtio", cache="none")], False),
        "interfaces": [dev.Interface(type="network", source="default", model="virtio")],
        "cpu": {"model": "qemu64"},
    }
    for name, before, after in model.compare(root, wish):
        assert before == after, name


def test_mac_not_given_is_not_a_change(root):
    wish = {"interfaces": [dev.Interface(type="network", source="default")]}
    [(_name, before, after)] = model.compare(root, wish)
    assert before == after


def test_exclusive_disks_report_extra_disk(root):
    wish = {"disks": dev.DiskWish([dev.Disk(target="vda", bus="virtio")], True)}
    [(_name, before, after)] = model.compare(root, wish)
    assert before != after
    assert before[1]["target"] == "sda"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("memory", 384),
        ("max_memory", 1024),
        ("vcpus", 2),
        ("max_vcpus", 4),
        ("tags", ["a", "b"]),
        ("title", "T"),
        ("machine", "pc-q35-7.1"),
        ("firmware", "bios"),
        ("boot", ["cdrom", "hd"]),
        ("kernel", "/boot/vmlinuz"),
        ("cmdline", "console=ttyS0"),
        ("cpu", {"mode": "host-model"}),
        ("graphics", {"type": "spice", "listen": "0.0.0.0"}),
        ("graphics", {"type": "none"}),
        ("graphics", {"type": "vnc", "port": 5905, "password": "secret"}),
        (
            "serials",
            [
                {"port": 0, "type": "pty"},
                {"port": 1, "type": "unix", "path": "/tmp/x", "mode": "bind"},
            ],
        ),
        ("guest_agent", False),
        ("rng", True),
        ("watchdog", {"model": "none"}),
        ("tuning.vcpu_pins", {0: "1", 1: "0-1"}),
        ("tuning.emulator_pin", "0-1"),
        ("tuning.iothreads", 2),
        ("tuning.cpu_quota", 50000),
        ("tuning.numa_memory", {"mode": "interleave", "nodeset": "0"}),
        ("tuning.hugepages", {"enabled": True, "size": 2048}),
        ("tuning.memory_locked", True),
        ("tuning.memory_hard_limit", 2048),
        ("tuning.blkio_weight", 300),
        (
            "tuning.cachetune",
            [{"vcpus": "0-1", "cache_id": 0, "level": 3, "type": "both", "size": 2048}],
        ),
    ],
)
def test_write_then_read_back(root, name, value):
    """Every writer produces what its reader reads, and touches nothing it does not own."""
    others = {k: v for k, v in fields(root).items() if k != name}
    model.write(root, {name: value}, [name])
    [(_name, before, after)] = model.compare(root, {name: value})
    assert before == after
    after_others = {k: v for k, v in fields(root).items() if k != name}
    related = {"memory", "max_memory", "vcpus", "max_vcpus", "firmware", "secure_boot"}
    for key, old in others.items():
        if key not in related:
            assert after_others[key] == old, key
    # libvirt-generated parts are kept
    assert _xml.text(root, "uuid") == "0be9e1af-960a-438e-99c2-c5273d7f8fd8"
    assert root.find("devices/disk/address") is not None


def test_disk_patch_keeps_address_and_changes_source(root):
    wish = {
        "disks": dev.DiskWish(
            [dev.Disk(target="vda", bus="virtio", path="/img/b.qcow2", format="qcow2", iotune={})],
            False,
        )
    }
    model.write(root, wish, ["disks"])
    disk = root.find("devices/disk")
    assert disk.find("source").get("file") == "/img/b.qcow2"
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("iotune") is None
    assert disk[-1].tag == "address"


def test_new_nic_and_removed_nic(root):
    wish = [dev.Interface(type="bridge", source="br0", model="virtio", mac="52:54:00:00:00:01")]
    model.write(root, {"interfaces": wish}, ["interfaces"])
    nics = root.findall("devices/interface")
    assert len(nics) == 1
    assert nics[0].get("type") == "bridge"
    assert nics[0].find("source").get("bridge") == "br0"


def test_serials_drop_derived_console(root):
    model.write(root, {"serials": [{"port": 0, "type": "pty"}]}, ["serials"])
    assert root.find("devices/console") is None
    assert root.find("devices/serial").get("type") == "pty"


def test_next_target():
    assert dev.next_target("virtio", {"vda", "vdb"}) == "vdc"
    assert dev.next_target("sata", {"sda"}) == "sdb"
    assert dev.next_target("virtio", {f"vd{chr(c)}" for c in range(97, 123)}) == "vdaa"


def test_xml_fragment_contains_and_merge(root):
    frag = xmlopt.parse_fragment("<features><pae/></features>")
    assert not xmlopt.contains(root, frag)
    merged = copy.deepcopy(root)
    xmlopt.merge(merged, frag)
    assert xmlopt.contains(merged, frag)
    assert merged.find("features/acpi") is not None  # merged into, not replaced
    assert xmlopt.contains(merged, xmlopt.parse_fragment("<features><acpi/></features>"))


def test_xml_fragment_devices_are_appended(root):
    frag = xmlopt.parse_fragment(
        "<devices><video><model type='virtio' heads='1'/></video></devices>"
    )
    xmlopt.merge(root, frag)
    assert root.find("devices/video/model").get("type") == "virtio"
    count = len(root.find("devices"))
    xmlopt.merge(root, frag)  # already there: nothing appended
    assert len(root.find("devices")) == count


def test_malformed_fragment():
    with pytest.raises(KvmValidationError, match="Malformed xml option"):
        xmlopt.parse_fragment("<features><pae></features>")


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs libvirt-clients")
def test_skeleton_with_everything_passes_libvirt_schema(tmp_path, root):
    new = model.skeleton("g2", "qemu")
    values = dict(fields(root))
    values["tuning.hugepages"] = {"enabled": True, "size": 2048}
    values["tuning.memory_locked"] = True
    values["tuning.iothreads"] = 1
    values["tuning.iothread_pins"] = {1: "0"}
    values["tuning.emulator_pin"] = "0"
    values["tuning.numa_memory"] = {"mode": "strict", "nodeset": "0"}
    values["tuning.memory_hard_limit"] = 1024
    values["tuning.memory_soft_limit"] = 512
    values["tuning.blkio_weight"] = 500
    values["tuning.cpu_quota"] = 50000
    values["tuning.cpu_period"] = 100000
    values["tuning.cachetune"] = [
        {"vcpus": "0", "cache_id": 0, "level": 3, "type": "both", "size": 1024}
    ]
    values["kernel"], values["initrd"], values["cmdline"] = "/k", "/i", "console=ttyS0"
    values["rng"] = True
    values["disks"] = dev.DiskWish(values["disks"], True)
    values["cpu"] = {k: v for k, v in values["cpu"].items() if v is not None}
    model.write(new, values, list(values))
    path = tmp_path / "d.xml"
    path.write_text(_xml.to_string(new))
    proc = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr + path.read_text()


# -- the field table: what is said of each field -------------------------------------------
# Settings a running guest takes live (all others need a restart), and those whose live XML
# shows the running value (so a change written earlier shows as waiting for a restart).
LIVE = {
    "title",
    "description",
    "tags",
    "memory",
    "vcpus",
    "disks",
    "interfaces",
    # the typed devices libvirt hot-plugs (only some changes of them: _domain_hotplug)
    "controllers",
    "inputs",
    "filesystems",
    "hostdevs",
    "tuning.vcpu_pins",
    "tuning.emulator_pin",
    "tuning.iothread_pins",
    "tuning.cpu_shares",
    "tuning.cpu_period",
    "tuning.cpu_quota",
    "tuning.memory_hard_limit",
    "tuning.memory_soft_limit",
    "tuning.blkio_weight",
}
SHOWN_LIVE = {
    "virt_type",
    "max_memory",
    "max_vcpus",
    "machine",
    "boot",
    "kernel",
    "initrd",
    "cmdline",
    "disks",
    "interfaces",
    "serials",
    "guest_agent",
    "rng",
    "watchdog",
    "controllers",
    "tpm",
    "video",
    "sound",
    "inputs",
    "sysinfo",
    "filesystems",
    "hostdevs",
    "tuning.iothreads",
    "tuning.numa_memory",
    "tuning.hugepages",
    "tuning.memory_locked",
}


def test_each_field_is_declared_once():
    names = [f.name for f in model.FIELDS]
    assert len(names) == len(set(names)) == len(model.FIELDS_BY_NAME) == 45


def test_live_and_restart_come_from_the_table():
    assert {f.name for f in model.FIELDS if not f.needs_restart} == LIVE
    assert {f.name for f in model.FIELDS if f.pending} == SHOWN_LIVE


def test_a_field_waits_for_a_restart_only_where_the_live_xml_differs(root):
    live = copy.deepcopy(root)
    assert [f.name for f in model.FIELDS if f.waits_for_restart(live, root)] == []
    live.find("vcpu").text = "4"  # the running guest has another maximum
    live.find("cputune/shares").text = "2048"  # not visible: applied live, never pending
    waiting = [f.name for f in model.FIELDS if f.waits_for_restart(live, root)]
    assert waiting == ["max_vcpus"]


def test_pins_show_with_string_keys_in_number_order(root):
    want = {"tuning.vcpu_pins": {1: "1", 0: "0-1"}}
    [(_name, before, after)] = model.compare(root, want)
    assert list(after.items()) == [("0", "0-1"), ("1", "1")]
    assert isinstance(before, dict) and all(isinstance(k, str) for k in before)
    assert model.summarize(root)["tuning"]["vcpu_pins"] == before


def test_devices_show_as_plain_dicts(root):
    summary = model.summarize(root)
    assert all(isinstance(d, dict) for d in summary["disks"] + summary["interfaces"])
    wish = {"disks": dev.DiskWish([dev.Disk(target="vdb", bus="virtio", path="/x")], False)}
    [(_name, before, after)] = model.compare(root, wish)
    assert before == [None]
    assert after == [{"target": "vdb", "bus": "virtio", "path": "/x"}]
