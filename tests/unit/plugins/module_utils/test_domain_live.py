"""Unit tests of _domain_live: what is applied to a running guest and what waits for a restart."""

from __future__ import annotations

import copy

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils._domain_devices import Disk, DiskWish
from ansible_collections.virtops.kvm.plugins.module_utils._domain_live import (
    LiveUpdater,
    pending_restart,
)

from .migrate_fakes import error

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE

GUEST = """<domain type='qemu'>
  <name>g</name>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/images/g.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/a.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:00:00:01'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"""


def root(xml: str = GUEST):
    return etree.fromstring(xml)


class RecordingDom:
    """The calls LiveUpdater makes on a virDomain; ``fail`` names calls that raise."""

    def __init__(self, *fail: str) -> None:
        self.calls: list[tuple] = []
        self.fail = set(fail)

    def __getattr__(self, method):
        def call(*args):
            self.calls.append((method, *args))
            if method in self.fail:
                raise error(libvirt.VIR_ERR_OPERATION_INVALID, f"{method} refused")
            return 0

        return call

    def named(self, method):
        return [c[1:] for c in self.calls if c[0] == method]


def edit(xml_root, path, **attrs):
    new = copy.deepcopy(xml_root)
    elem = new.find(path)
    for key, value in attrs.items():
        elem.set(key, value)
    return new


# -- scalars ---------------------------------------------------------------------------------


def test_memory_and_title_go_to_the_running_test_driver_guest():
    conn = libvirt.open("test:///default")
    dom = conn.lookupByName("test")  # 8 GiB maximum, 2 GiB now
    before_kib = dom.info()[2]
    try:
        live = root(dom.XMLDesc(0))
        result = LiveUpdater(dom, 2).apply(
            ["memory", "title"], {"memory": 1024, "title": "web"}, live, live
        )
        assert result.applied == ["memory", "title"]
        assert result.pending == [] and result.warnings == []
        assert dom.info()[2] == 1024 * 1024
        assert dom.metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None, LIVE) == "web"
    finally:  # the conftest reset does not bring back the driver guest's memory and title
        dom.setMemoryFlags(before_kib, LIVE)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None, None, None, LIVE)
        conn.close()


def test_fields_that_cannot_change_live_wait_for_a_restart_untouched():
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(
        ["machine", "max_memory"], {"machine": "q35", "max_memory": 4096}, root(), root()
    )
    assert result.pending == ["machine", "max_memory"]
    assert result.applied == [] and dom.calls == []


def test_memory_and_vcpus_above_the_live_maximum_wait_for_a_restart():
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(
        ["memory", "vcpus"], {"memory": 4096, "vcpus": 8}, root(), root()
    )
    assert result.pending == ["memory", "vcpus"]
    assert result.applied == []
    assert "above the running guest's maximum (2048 MiB)" in result.warnings[0]
    assert "above the running guest's maximum (4)" in result.warnings[1]
    assert dom.calls == []


def test_memory_and_vcpus_up_to_the_maximum_are_set_live_only():
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(
        ["memory", "vcpus"], {"memory": 2048, "vcpus": 4}, root(), root()
    )
    assert result.applied == ["memory", "vcpus"]
    assert dom.calls == [("setMemoryFlags", 2048 * 1024, LIVE), ("setVcpusFlags", 4, LIVE)]


def test_a_libvirt_refusal_makes_the_field_pending_with_libvirts_reason():
    dom = RecordingDom("setMetadata")
    result = LiveUpdater(dom, 4).apply(
        ["title", "vcpus"], {"title": "x", "vcpus": 3}, root(), root()
    )
    assert result.applied == ["vcpus"]
    assert result.pending == ["title"]
    assert result.warnings == [
        "Could not change title live (setMetadata refused); it applies at the next boot"
    ]


def test_empty_title_and_tags_remove_the_metadata():
    dom = RecordingDom()
    LiveUpdater(dom, 4).apply(["title", "tags"], {"title": "", "tags": []}, root(), root())
    assert dom.named("setMetadata")[0] == (
        libvirt.VIR_DOMAIN_METADATA_TITLE,
        None,
        None,
        None,
        LIVE,
    )
    assert dom.named("setMetadata")[1][1] is None


def test_tags_are_written_sorted_and_once():
    dom = RecordingDom()
    LiveUpdater(dom, 4).apply(["tags"], {"tags": ["web", "db", "web"]}, root(), root())
    (_kind, text, prefix, uri, flags) = dom.named("setMetadata")[0]
    assert etree.fromstring(text).xpath("tag/text()") == ["db", "web"]
    assert flags == LIVE and prefix and uri


@pytest.mark.parametrize(
    ("name", "value", "call"),
    [
        ("tuning.cpu_shares", None, ("setSchedulerParametersFlags", {"cpu_shares": 1024}, LIVE)),
        ("tuning.cpu_period", None, ("setSchedulerParametersFlags", {"vcpu_period": 100000}, LIVE)),
        ("tuning.cpu_quota", None, ("setSchedulerParametersFlags", {"vcpu_quota": -1}, LIVE)),
        ("tuning.cpu_quota", 5000, ("setSchedulerParametersFlags", {"vcpu_quota": 5000}, LIVE)),
        ("tuning.memory_hard_limit", 1024, ("setMemoryParameters", {"hard_limit": 1048576}, LIVE)),
        (
            "tuning.memory_soft_limit",
            512,
            ("setMemoryParameters", {"soft_limit": 512 * 1024}, LIVE),
        ),
        ("tuning.blkio_weight", None, ("setBlkioParameters", {"weight": 100}, LIVE)),
        ("tuning.emulator_pin", "1-2", ("pinEmulator", (False, True, True, False), LIVE)),
        ("tuning.emulator_pin", None, ("pinEmulator", (True, True, True, True), LIVE)),
    ],
)
def test_unset_tuning_goes_back_to_libvirts_default(name, value, call):
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply([name], {name: value}, root(), root())
    assert result.applied == [name]
    assert dom.calls == [call]


def test_vcpu_pins_change_only_online_vcpus_whose_pin_differs():
    live = root(
        GUEST.replace(
            "<os>",
            "<cputune><vcpupin vcpu='0' cpuset='0'/><vcpupin vcpu='1' cpuset='1'/></cputune><os>",
        )
    )
    dom = RecordingDom()
    pins = {0: "0", 1: "2-3", 3: "1"}  # vcpu 3 is not online (current=2)
    result = LiveUpdater(dom, 4).apply(["tuning.vcpu_pins"], {"tuning.vcpu_pins": pins}, live, live)
    assert result.applied == ["tuning.vcpu_pins"]
    assert dom.calls == [("pinVcpuFlags", 1, (False, False, True, True), LIVE)]


def test_a_removed_vcpu_pin_unpins_to_every_host_cpu():
    live = root(GUEST.replace("<os>", "<cputune><vcpupin vcpu='1' cpuset='1'/></cputune><os>"))
    dom = RecordingDom()
    LiveUpdater(dom, 3).apply(["tuning.vcpu_pins"], {"tuning.vcpu_pins": {}}, live, live)
    assert dom.calls == [("pinVcpuFlags", 1, (True, True, True), LIVE)]


def test_iothread_pins_only_for_threads_the_guest_has():
    live = root(GUEST.replace("<os>", "<iothreads>2</iothreads><os>"))
    dom = RecordingDom()
    pins = {1: "0", 2: "1", 3: "2"}
    LiveUpdater(dom, 4).apply(["tuning.iothread_pins"], {"tuning.iothread_pins": pins}, live, live)
    assert dom.named("pinIOThread") == [
        (1, (True, False, False, False), LIVE),
        (2, (False, True, False, False), LIVE),
    ]


# libvirt's VIR_DOMAIN_MEMORY_PARAM_UNLIMITED is a C #define (2**53 - 1, in KiB) that
# libvirt-python does not export.
UNLIMITED_KIB = 9007199254740991


@pytest.mark.parametrize("name", ["tuning.memory_hard_limit", "tuning.memory_soft_limit"])
def test_a_removed_memory_limit_is_lifted_live(name):
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply([name], {name: None}, root(), root())
    assert result.applied == [name]
    key = name.removeprefix("tuning.memory_")
    assert dom.calls == [("setMemoryParameters", {key: UNLIMITED_KIB}, LIVE)]


# -- disks -----------------------------------------------------------------------------------

NEW_DISK = """<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2'/>
  <source file='/images/data.qcow2'/>
  <target dev='vdb' bus='virtio'/>
  <alias name='virtio-disk1'/>
  <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
</disk>"""


def with_disk(xml_root, disk_xml: str):
    new = copy.deepcopy(xml_root)
    new.find("devices").append(etree.fromstring(disk_xml))
    return new


def disk_wish(xml_root, *, exclusive=False) -> DiskWish:
    return DiskWish([Disk.from_xml(e) for e in xml_root.findall("devices/disk")], exclusive)


def test_a_new_disk_is_attached_without_its_address_and_alias():
    live = root()
    new = with_disk(live, NEW_DISK)
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(["disks"], {"disks": disk_wish(new)}, live, new)
    assert result.applied == ["disks"]
    ((text, flags),) = dom.named("attachDeviceFlags")
    attached = etree.fromstring(text)
    assert attached.find("target").get("dev") == "vdb" and flags == LIVE
    assert attached.find("address") is None and attached.find("alias") is None
    assert dom.named("detachDeviceFlags") == []


def test_exclusive_disks_detach_what_the_definition_dropped():
    live = with_disk(root(), NEW_DISK)
    new = root()
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(
        ["disks"], {"disks": disk_wish(new, exclusive=True)}, live, new
    )
    assert result.applied == ["disks"]
    ((text, _flags),) = dom.named("detachDeviceFlags")
    assert etree.fromstring(text).find("target").get("dev") == "vdb"
    assert etree.fromstring(text).find("alias") is not None  # libvirt finds it by alias


def test_a_non_exclusive_wish_leaves_other_live_disks_attached():
    live = with_disk(root(), NEW_DISK)
    new = root()
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(["disks"], {"disks": disk_wish(new)}, live, new)
    assert result.applied == ["disks"]
    assert dom.calls == []


def test_a_cdrom_media_change_is_an_update():
    live = root()
    new = edit(live, "devices/disk[@device='cdrom']/source", file="/iso/b.iso")
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(["disks"], {"disks": disk_wish(new)}, live, new)
    assert result.applied == ["disks"]
    ((text, _flags),) = dom.named("updateDeviceFlags")
    assert etree.fromstring(text).find("source").get("file") == "/iso/b.iso"


def test_other_disk_changes_wait_for_a_restart():
    live = root()
    new = edit(live, "devices/disk[@device='disk']/target", bus="sata")
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(["disks"], {"disks": disk_wish(new)}, live, new)
    assert result.applied == []
    assert result.pending == ["disks"]
    assert result.warnings == [
        "Disk vda changed in ways libvirt cannot apply live; it applies at the next boot"
    ]
    assert dom.calls == []


def test_io_limits_are_set_live_with_every_key_and_zero_for_unset():
    live = root()
    new = copy.deepcopy(live)
    iotune = etree.SubElement(new.find("devices/disk"), "iotune")
    etree.SubElement(iotune, "read_iops_sec").text = "500"
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(["disks"], {"disks": disk_wish(new)}, live, new)
    assert result.applied == ["disks"]
    ((target, params, flags),) = dom.named("setBlockIoTune")
    assert target == "vda" and flags == LIVE
    assert params["read_iops_sec"] == 500 and params["total_bytes_sec"] == 0


def test_a_refused_attach_leaves_the_disks_pending():
    live = root()
    new = with_disk(live, NEW_DISK)
    dom = RecordingDom("attachDeviceFlags")
    result = LiveUpdater(dom, 4).apply(["disks"], {"disks": disk_wish(new)}, live, new)
    assert result.pending == ["disks"] and result.applied == []
    assert result.warnings == [
        "Could not attach disk vdb live (attachDeviceFlags refused); it applies at the next boot"
    ]


# -- NICs ------------------------------------------------------------------------------------


def test_nics_are_matched_by_mac_in_any_case():
    live = root()
    new = edit(live, "devices/interface/mac", address="52:54:00:00:00:01".upper())
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(["interfaces"], {"interfaces": None}, live, new)
    assert result.applied == ["interfaces"]
    assert dom.calls == []


def test_a_nic_with_a_new_mac_replaces_the_old_one_live():
    live = root()
    new = edit(live, "devices/interface/mac", address="52:54:00:00:00:02")
    dom = RecordingDom()
    result = LiveUpdater(dom, 4).apply(["interfaces"], {"interfaces": None}, live, new)
    assert result.applied == ["interfaces"]
    assert [c[0] for c in dom.calls] == ["detachDeviceFlags", "attachDeviceFlags"]
    assert "52:54:00:00:00:01" in dom.calls[0][1] and "52:54:00:00:00:02" in dom.calls[1][1]


def test_a_changed_nic_waits_for_a_restart():
    live = root()
    new = edit(live, "devices/interface/model", type="e1000")
    result = LiveUpdater(RecordingDom(), 4).apply(["interfaces"], {"interfaces": None}, live, new)
    assert result.pending == ["interfaces"]
    assert "NIC 52:54:00:00:00:01 changed" in result.warnings[0]


# -- pending_restart -------------------------------------------------------------------------


def test_nothing_is_pending_when_live_and_definition_agree():
    assert pending_restart(root(), root()) == []


def test_pending_restart_names_restart_fields_disks_and_nics():
    config = edit(root(), "vcpu")
    config.find("vcpu").text = "8"
    config = with_disk(config, NEW_DISK)
    config.find("devices/interface/mac").set("address", "52:54:00:00:00:09")
    assert pending_restart(root(), config) == ["max_vcpus", "disks", "interfaces"]


def test_cdrom_media_and_live_only_values_are_not_pending():
    config = edit(root(), "devices/disk[@device='cdrom']/source", file="/iso/b.iso")
    config.find("currentMemory").text = "524288"
    assert pending_restart(root(), config) == []
