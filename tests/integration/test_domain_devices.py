"""Integration tests of the domain module's typed devices (controllers, TPM, video, sound,
inputs, SMBIOS, virtiofs, host devices) against the real libvirtd: defined, not booted
(issue 17)."""

from __future__ import annotations

import subprocess

import libvirt
import pytest
import yaml
from lxml import etree

from ansible_collections.virtops.kvm.plugins.modules import domain as domain_module
from ansible_collections.virtops.kvm.plugins.modules import domain_info
from tests.helpers import domain_task, failed, four_results, inactive_xml, validate_xml

# make test runs these beside the main suite (side_stream): they share none of its guests
pytestmark = pytest.mark.side_stream


def devices_spec(name: str, files, share) -> dict:
    return {
        "name": name,
        "memory": 256,
        "machine": "q35",
        "tuning": {"iothreads": 1},
        "controllers": [{"type": "scsi", "model": "virtio-scsi", "queues": 2, "iothread": 1}],
        "disks": [
            {"path": str(files / "a.img"), "format": "raw"},
            {"path": str(files / "b.qcow2"), "format": "qcow2", "bus": "scsi"},
        ],
        "tpm": {"model": "tpm-crb", "version": "2.0"},
        "video": {"model": "virtio"},
        "graphics": {"type": "vnc", "listen": "127.0.0.1"},
        "sound": [{"model": "ich9"}],
        "inputs": [{"type": "tablet", "bus": "usb"}, {"type": "keyboard", "bus": "virtio"}],
        "sysinfo": {
            "system": {"manufacturer": "virtops", "product": "lab", "serial": "VT-0001"},
            "baseboard": {"manufacturer": "virtops", "asset": "A-17"},
        },
        "filesystems": [{"source": str(share), "target": "share"}],
    }


@pytest.mark.integration
def test_typed_devices_converge(playbook, conn, name_prefix, files, tmp_path):
    name = f"{name_prefix}-dev"
    share = files / "share"
    share.mkdir()
    spec = devices_spec(name, files, share)
    steps = four_results(playbook, domain_task("guest", spec))
    assert set(steps[1]["changes"]) >= {
        "controllers",
        "tpm",
        "video",
        "sound",
        "inputs",
        "sysinfo",
        "filesystems",
    }
    assert steps[3]["changes"] == []
    xml = inactive_xml(conn, name)
    validate_xml(xml, "domain", tmp_path)
    root = etree.fromstring(xml.encode())
    [scsi] = root.findall("devices/controller[@type='scsi']")
    assert (scsi.get("model"), scsi.find("driver").get("queues")) == ("virtio-scsi", "2")
    assert scsi.find("driver").get("iothread") == "1"
    assert root.find("devices/disk/target[@bus='scsi']").get("dev").startswith("sd")
    tpm = root.find("devices/tpm")
    assert (tpm.get("model"), tpm.find("backend").get("version")) == ("tpm-crb", "2.0")
    assert root.find("devices/video/model").get("type") == "virtio"
    assert [s.get("model") for s in root.findall("devices/sound")] == ["ich9"]
    assert root.find("os/smbios").get("mode") == "sysinfo"
    entries = {e.get("name"): e.text for e in root.findall("sysinfo/system/entry")}
    assert entries == {"manufacturer": "virtops", "product": "lab", "serial": "VT-0001"}
    fs = root.find("devices/filesystem")
    assert fs.find("driver").get("type") == "virtiofs"
    assert fs.find("source").get("dir") == str(share)
    assert root.find("memoryBacking/access").get("mode") == "shared"
    assert root.find("memoryBacking/source").get("type") == "memfd"

    # changes, removals: check, apply, check, apply again
    edited = dict(
        spec,
        controllers=[{"type": "scsi", "queues": 4, "iothread": 1}],
        tpm={"model": "none"},
        video={"model": "vga"},
        sound=[],
        inputs=[{"type": "tablet", "bus": "usb"}],
        sysinfo={},
        filesystems=[],
    )
    steps = four_results(playbook, domain_task("edit", edited))
    assert sorted(steps[1]["changes"]) == sorted(
        ["controllers", "tpm", "video", "sound", "inputs", "sysinfo", "filesystems"]
    )
    assert steps[3]["changes"] == []
    root = etree.fromstring(inactive_xml(conn, name).encode())
    assert root.find("devices/controller[@type='scsi']/driver").get("queues") == "4"
    assert root.find("devices/tpm") is None
    assert root.find("devices/sound") is None
    assert root.find("devices/filesystem") is None
    assert root.find("os/smbios") is None
    assert root.find("sysinfo") is None
    assert [(i.get("type"), i.get("bus")) for i in root.findall("devices/input")] == [
        ("tablet", "usb"),
        ("mouse", "ps2"),
        ("keyboard", "ps2"),
    ]


@pytest.mark.integration
def test_bad_devices_fail_before_any_change(playbook, conn, name_prefix, files):
    name = f"{name_prefix}-bad"
    base = {"name": name, "memory": 128}
    cases = {
        "nodir": dict(base, filesystems=[{"source": str(files / "missing"), "target": "t"}]),
        "tpm12crb": dict(base, tpm={"model": "tpm-crb", "version": "1.2"}),
        "queues": dict(base, controllers=[{"type": "usb", "queues": 2}]),
        "iothread": dict(
            base,
            tuning={"iothreads": 1},
            controllers=[{"type": "scsi", "iothread": 2}],
        ),
        "nopci": dict(base, hostdevs=[{"address": "0000:fe:1f.7"}]),
        "bootlist": dict(
            base, boot=["hd"], hostdevs=[{"address": host_pci(conn), "boot_order": 1}]
        ),
    }
    tasks = [domain_task(k, v, ignore_errors=True) for k, v in cases.items()]
    run = playbook(tasks)
    assert f"directory {files / 'missing'} does not exist" in failed(run, "nodir")["msg"]
    assert "needs version 2.0" in failed(run, "tpm12crb")["msg"]
    assert "virtio-scsi" in failed(run, "queues")["msg"]
    assert "iothread 2 does not exist" in failed(run, "iothread")["msg"]
    assert "this host has no PCI device 0000:fe:1f.7" in failed(run, "nopci")["msg"]
    assert "cannot be used with the guest's boot list" in failed(run, "bootlist")["msg"]
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(name)


def host_pci(conn) -> str:
    """The address of a PCI device this host has (defining a guest with it touches nothing)."""
    devices = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)
    assert devices, "no PCI device on this host"
    caps = etree.fromstring(devices[-1].XMLDesc(0).encode()).find("capability")
    parts = [int(caps.find(k).text) for k in ("domain", "bus", "slot", "function")]
    return "{:04x}:{:02x}:{:02x}.{:x}".format(*parts)


@pytest.mark.integration
def test_host_devices_converge(playbook, conn, name_prefix, cleanup):
    """PCI by address, USB by vendor and product, mdev by UUID: check, apply, check, apply on a
    defined guest (no device is detached from the host until the guest starts)."""
    name = f"{name_prefix}-hostdev"
    address = host_pci(conn)
    mdev = "c2177883-f1bb-47f0-914d-32a22e3a8804"
    spec = {
        "name": name,
        "memory": 128,
        "machine": "q35",
        "boot": [],
        "hostdevs": [
            {"type": "pci", "address": address, "rom": False, "boot_order": 1},
            {"type": "usb", "vendor": "0x1d6b", "product": "0x0002", "managed": False},
            {"type": "mdev", "uuid": mdev},
        ],
    }
    steps = four_results(playbook, domain_task("guest", spec))
    assert "hostdevs" in steps[0]["changes"]
    root = etree.fromstring(inactive_xml(conn, name).encode())
    pci = root.find("devices/hostdev[@type='pci']")
    assert (pci.get("managed"), pci.find("rom").get("bar")) == ("yes", "off")
    assert pci.find("boot").get("order") == "1"
    source = pci.find("source/address")
    got = "{:04x}:{:02x}:{:02x}.{:x}".format(
        *(int(source.get(k), 16) for k in ("domain", "bus", "slot", "function"))
    )
    assert got == address
    usb = root.find("devices/hostdev[@type='usb']")
    assert usb.get("managed") == "no"
    assert usb.find("source/vendor").get("id") == "0x1d6b"
    assert root.find("devices/hostdev[@type='mdev']/source/address").get("uuid") == mdev

    # without a per-device boot order libvirt gives the guest <boot dev="hd"/> again
    edited = dict(spec, hostdevs=[{"type": "pci", "address": address}])
    del edited["boot"]
    steps = four_results(playbook, domain_task("edit", edited))
    assert steps[1]["changes"] == ["hostdevs"]
    assert steps[0]["diff"]["before"]["hostdevs"] != steps[0]["diff"]["after"]["hostdevs"]
    root = etree.fromstring(inactive_xml(conn, name).encode())
    [pci] = root.findall("devices/hostdev")
    assert pci.get("type") == "pci" and pci.find("boot") is None


def _examples(module, *titles: str) -> list[dict]:
    """The tasks of ``module``'s EXAMPLES with these titles, in this order."""
    tasks = {task["name"]: task for task in yaml.safe_load(module.EXAMPLES)}
    return [tasks[title] for title in titles]


@pytest.mark.integration
def test_the_device_examples_run(playbook, conn, name_prefix, files):
    """domain's EXAMPLES of typed devices and host devices, which edit an existing web1: here a
    guest of this test defined first with only its memory, the examples' disks and share in
    ``files`` and a PCI address this host has; neither example starts the guest (no state
    given: it stays defined, shut off). Then all of domain_info's EXAMPLES with this
    guest as web1: its guest agent, off, does not answer and says why."""
    name = f"{name_prefix}-ex"
    (files / "share").mkdir()
    for disk in ("web1.qcow2", "web1-data.qcow2"):
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(files / disk), "16M"], check=True
        )
    tasks = _examples(
        domain_module,
        "A virtio-scsi disk with 2 queues, a TPM 2.0 and a shared folder",
        "A PCI device (an SR-IOV virtual function) and a USB stick, booting from the VF",
    )
    devices, hostdevs = (task["virtops.kvm.domain"] for task in tasks)
    assert devices["name"] == hostdevs["name"] == "web1"
    devices["name"] = hostdevs["name"] = name
    for disk in devices["disks"]:
        disk["path"] = disk["path"].replace("/var/lib/libvirt/images/", f"{files}/")
    [share] = devices["filesystems"]
    share["source"] = str(files / "share")
    assert hostdevs["hostdevs"][0]["address"] == "0000:3b:02.1"
    hostdevs["hostdevs"][0]["address"] = host_pci(conn)
    info = yaml.safe_load(domain_info.EXAMPLES.replace("name: web1", f"name: {name}"))
    run = playbook([domain_task("web1", {"name": name, "memory": 256}), *tasks, *info])
    assert run.rc == 0, run.stdout[-4000:]
    assert all(run.task(task["name"])["changed"] for task in tasks)
    root = etree.fromstring(inactive_xml(conn, name).encode())
    assert conn.lookupByName(name).isActive() == 0
    assert root.find("devices/controller[@type='scsi']/driver").get("queues") == "2"
    assert root.find("devices/tpm/backend").get("version") == "2.0"
    assert root.find("devices/filesystem/target").get("dir") == "share"
    assert root.find("sysinfo/system/entry[@name='serial']").text == "WEB-0001"
    assert root.find("os/boot") is None
    assert root.find("devices/hostdev[@type='pci']/boot").get("order") == "1"
    assert root.find("devices/hostdev[@type='usb']/source/vendor").get("id") == "0x0781"
    # the debug example shows why the agent of a guest that is off does not answer
    [guest] = run.task("What the guest agent of web1 reports")["guests"]
    assert guest["name"] == name and guest["guest_agent"]["answering"] is False
    assert (
        run.task("Its OS, or why the agent does not answer")["msg"]
        == guest["guest_agent"]["reason"]
    )
