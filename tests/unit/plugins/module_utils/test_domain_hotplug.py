"""Unit tests of _domain_hotplug: which typed-device changes a running guest gets live (and
through which device calls), which wait for the next boot, and that check mode predicts the
same as the apply."""

from __future__ import annotations

import copy

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_hotplug as hot
from ansible_collections.virtops.kvm.plugins.module_utils._domain import DomainManager
from ansible_collections.virtops.kvm.plugins.module_utils._domain_devices import Disk, DiskWish
from ansible_collections.virtops.kvm.plugins.module_utils._domain_live import LiveUpdater
from ansible_collections.virtops.kvm.plugins.module_utils._domain_model import FIELDS_BY_NAME

from .domain_fakes import FakeKvm
from .test_domain_live import RecordingDom

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE

RUNNING = """<domain type='qemu'>
  <name>g</name>
  <memory unit='KiB'>262144</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <controller type='pci' index='0' model='pci-root'><alias name='pci.0'/></controller>
    <controller type='scsi' index='0' model='virtio-scsi'>
      <driver queues='2'/>
      <alias name='scsi0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </controller>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/>
      <source dir='/srv/a'/>
      <target dir='a'/>
      <alias name='fs0'/>
    </filesystem>
    <input type='mouse' bus='ps2'><alias name='input0'/></input>
    <input type='keyboard' bus='ps2'><alias name='input1'/></input>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source>
      <alias name='hostdev0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/>
    </hostdev>
  </devices>
</domain>"""


def running():
    return etree.fromstring(RUNNING)


def add(root, xml: str):
    new = copy.deepcopy(root)
    new.find("devices").append(etree.fromstring(xml))
    return new


def drop(root, path: str):
    new = copy.deepcopy(root)
    elem = new.find(path)
    elem.getparent().remove(elem)
    return new


def ops(plan):
    return [(op, what) for op, _elem, what in plan.ops]


def test_a_virtio_input_is_attached_and_detached_live_and_ps2_is_never_touched():
    live = running()
    new = add(live, "<input type='keyboard' bus='virtio'/>")
    plan = hot.plan_inputs(live, new)
    assert ops(plan) == [("attach", "attach input keyboard (bus virtio)")]
    assert plan.waits == []
    plan = hot.plan_inputs(new, live)
    assert ops(plan) == [("detach", "detach input keyboard (bus virtio)")]


def test_a_usb_input_waits_for_the_next_boot():
    live = running()
    plan = hot.plan_inputs(live, add(live, "<input type='tablet' bus='usb'/>"))
    assert plan.ops == []
    assert plan.waits == ["Cannot attach input tablet (bus usb) live (only virtio inputs are)"]


def test_a_new_scsi_controller_is_attached_a_changed_or_other_one_waits():
    live = running()
    new = add(live, "<controller type='scsi' index='1' model='virtio-scsi'/>")
    plan = hot.plan_controllers(live, new, [{"type": "scsi", "index": 1}])
    assert ops(plan) == [("attach", "attach controller scsi 1")] and plan.waits == []
    new = add(live, "<controller type='usb' index='0' model='qemu-xhci'/>")
    plan = hot.plan_controllers(live, new, [{"type": "usb", "index": 0}])
    assert plan.ops == [] and "usb is not hot-pluggable" in plan.waits[0]
    new = copy.deepcopy(live)
    new.find("devices/controller[@type='scsi']/driver").set("queues", "4")
    plan = hot.plan_controllers(live, new, [{"type": "scsi", "index": 0, "queues": 4}])
    assert plan.ops == [] and plan.waits == ["Cannot change controller scsi 0 live"]


def test_controllers_pending_ignores_where_a_hot_plugged_one_stands():
    live = add(running(), "<controller type='scsi' index='1' model='virtio-scsi'/>")
    inactive = copy.deepcopy(live)
    devices = inactive.find("devices")
    second = devices.find("controller[@index='1']")
    devices.remove(second)
    devices.insert(0, second)
    assert not hot.controllers_pending(live, inactive)
    assert hot.controllers_pending(running(), inactive)


def test_host_devices_go_through_the_device_calls_a_changed_one_waits():
    live = running()
    usb = (
        "<hostdev mode='subsystem' type='usb' managed='yes'><source>"
        "<vendor id='0x0781'/><product id='0x5567'/></source></hostdev>"
    )
    new = add(drop(live, "devices/hostdev"), usb)
    plan = hot.plan_hostdevs(live, new)
    assert ops(plan) == [
        ("detach", "detach host device pci 0000:03:00.1"),
        ("attach", "attach host device usb 0x0781:0x5567"),
    ]
    changed = copy.deepcopy(live)
    changed.find("devices/hostdev").set("managed", "no")
    plan = hot.plan_hostdevs(live, changed)
    assert plan.ops == [] and plan.waits == ["Cannot change host device pci 0000:03:00.1 live"]


def test_a_virtiofs_folder_is_live_only_on_a_guest_with_shared_memory():
    live = running()
    fs = (
        "<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>"
        "<source dir='/srv/b'/><target dir='b'/></filesystem>"
    )
    plan = hot.plan_filesystems(live, add(live, fs))
    assert ops(plan) == [("attach", "attach virtiofs folder b")]
    assert ops(hot.plan_filesystems(live, drop(live, "devices/filesystem"))) == [
        ("detach", "detach virtiofs folder a")
    ]
    unshared = drop(live, "memoryBacking")
    plan = hot.plan_filesystems(unshared, add(unshared, fs))
    assert plan.ops == [] and "memory is not shared" in plan.waits[0]


def test_live_updater_attaches_a_controller_before_the_disk_on_it_without_addresses():
    live = running()
    new = add(live, "<controller type='scsi' index='1' model='virtio-scsi'/>")
    new = add(
        new,
        "<disk type='file' device='disk'><source file='/d.qcow2'/>"
        "<target dev='sdh' bus='scsi'/>"
        "<address type='drive' controller='1' bus='0' target='0' unit='0'/></disk>",
    )
    dom = RecordingDom()
    wish = {
        "disks": DiskWish([Disk(target="sdh", bus="scsi", path="/d.qcow2")], False),
        "controllers": [{"type": "scsi", "index": 1, "model": "virtio-scsi"}],
    }
    outcome = LiveUpdater(dom, 2).apply(["disks", "controllers"], wish, live, new)
    assert outcome.applied == ["controllers", "disks"] and outcome.pending == []
    first, second = (etree.fromstring(c[0]) for c in dom.named("attachDeviceFlags"))
    assert (first.tag, second.tag) == ("controller", "disk")
    assert first.find("address") is None and second.find("address") is None
    assert all(flags == LIVE for _xml, flags in dom.named("attachDeviceFlags"))


def test_a_failed_hot_plug_is_a_warning_and_waits_for_the_next_boot():
    live = running()
    new = drop(live, "devices/hostdev")
    dom = RecordingDom("detachDeviceFlags")
    outcome = LiveUpdater(dom, 2).apply(["hostdevs"], {"hostdevs": []}, live, new)
    assert outcome.applied == [] and outcome.pending == ["hostdevs"]
    assert outcome.warnings == [
        "Could not detach host device pci 0000:03:00.1 live (detachDeviceFlags refused); "
        "it applies at the next boot"
    ]
    [(text, flags)] = dom.named("detachDeviceFlags")
    assert flags == LIVE and etree.fromstring(text).get("type") == "pci"


def test_a_usb_input_waits_and_a_virtio_input_does_not_in_the_prediction():
    live = running()
    usb = add(live, "<input type='tablet' bus='usb'/>")
    virtio = add(live, "<input type='keyboard' bus='virtio'/>")
    inputs = FIELDS_BY_NAME["inputs"]
    assert inputs.restart_predicted(live, usb, None) is True
    assert inputs.restart_predicted(live, virtio, None) is False
    assert FIELDS_BY_NAME["tpm"].restart_predicted(live, live, None) is True
    # the apply agrees: the USB one is reported, nothing is called for it
    dom = RecordingDom()
    outcome = LiveUpdater(dom, 1).apply(["inputs"], {"inputs": None}, live, usb)
    assert outcome.pending == ["inputs"] and dom.calls == []
    assert "it applies at the next boot" in outcome.warnings[0]


@pytest.fixture
def conn():
    c = libvirt.open("test:///default")
    yield c
    c.close()


def test_check_mode_on_a_running_guest_predicts_the_restart_of_next_boot_devices(conn):
    def run(check, **params):
        params = {"name": "g1", "virt_type": "qemu", "memory": 256, "state": "running", **params}
        return DomainManager(FakeKvm(conn, params, check_mode=check)).run()

    run(False)
    virtio = run(True, inputs=[{"type": "keyboard", "bus": "virtio"}])
    assert virtio["changed"] and virtio["restart_required"] == []
    usb = run(True, inputs=[{"type": "tablet", "bus": "usb"}])
    assert usb["restart_required"] == ["inputs"]
    # the test driver has no device hotplug: the live attach fails, is said, and waits
    kvm = FakeKvm(
        conn,
        {
            "name": "g1",
            "virt_type": "qemu",
            "state": "running",
            "inputs": [{"type": "keyboard", "bus": "virtio"}],
        },
    )
    applied = DomainManager(kvm).run()
    assert applied["changed"] and applied["restart_required"] == ["inputs"]
    assert any("Could not attach input keyboard (bus virtio) live" in w for w in kvm.warnings)
    xml = conn.lookupByName("g1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "bus='virtio'" in xml and "type='keyboard'" in xml
