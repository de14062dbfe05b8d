"""The domain module's typed devices inside a booted tiny guest (issue 17): a TPM 2.0 the
guest sees as /dev/tpm0, a virtiofs folder it mounts and reads a file the host wrote, a disk
on a virtio-scsi controller it sees as sd* with the controller's queues, SMBIOS it reads.
Then, on the same running guest, the hot-pluggable ones live: a virtio input, a second
virtio-scsi controller with a disk on it and a second virtiofs folder attached (the guest
sees them, nothing waits for a restart, a second run changes nothing) and detached again,
and a live attach libvirt refuses reported as waiting for the next boot."""

from __future__ import annotations

import copy
import secrets
import subprocess
import time

import pytest
from lxml import etree

from tests.helpers import inactive_xml, run_playbook

pytestmark = pytest.mark.lab


def test_typed_devices_in_a_booted_guest(tiny_guest, tmp_path):
    guest = tiny_guest(start=False)
    share = guest.files.dir / "share"
    share.mkdir()
    share.chmod(0o755)
    token = secrets.token_hex(8)
    (share / "from-host.txt").write_text(token)
    scsi_disk = guest.files.dir / "scsi.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(scsi_disk), "8M"], check=True)
    serial = f"VT-{token[:6]}"
    spec = {
        "name": guest.name,
        "vcpus": 2,  # Linux gives virtio-scsi at most one queue per CPU
        "tuning": {"iothreads": 1},
        "controllers": [{"type": "scsi", "queues": 2, "iothread": 1}],
        "disks": [
            {"path": str(guest.files.marker_disk), "format": "qcow2"},
            {"path": str(scsi_disk), "format": "qcow2", "bus": "scsi"},
        ],
        "tpm": {"model": "tpm-crb", "version": "2.0"},
        "filesystems": [{"source": str(share), "target": "share"}],
        "sysinfo": {"system": {"manufacturer": "virtops", "serial": serial}},
        "state": "running",
    }
    run = run_playbook(tmp_path, [{"name": "devices", "virtops.kvm.domain": spec}])
    assert run.rc == 0, run.stdout[-4000:]
    guest.wait_heartbeat(0, timeout=300)

    assert guest.check("cat /sys/class/tpm/tpm0/tpm_version_major; ls /dev/tpm0").split() == [
        "2",
        "/dev/tpm0",
    ]
    guest.check("mkdir -p /mnt/share && mount -t virtiofs share /mnt/share")
    assert guest.check("cat /mnt/share/from-host.txt") == token
    guest.check("echo from-guest > /mnt/share/from-guest.txt && sync")
    assert (share / "from-guest.txt").read_text().strip() == "from-guest"
    disks = guest.check("ls /sys/block").split()
    assert "sda" in disks, disks
    # blk-mq: one hardware queue per virtio-scsi request queue
    assert guest.check("ls /sys/block/sda/mq").split() == ["0", "1"]
    assert guest.check("cat /sys/class/dmi/id/product_serial").strip() == serial
    assert guest.check("cat /sys/class/dmi/id/sys_vendor").strip() == "virtops"

    hotplug_on_the_running_guest(guest, spec, tmp_path)


VIRTIO_INPUT = "0x0012"  # the virtio device ids of an input device and of a virtiofs folder
VIRTIO_FS = "0x001a"


def until(guest, cmd: str, wanted, what: str, timeout: float = 60) -> str:
    """The output of ``cmd`` in the guest once ``wanted(output)`` (hotplug is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        output = guest.check(cmd)
        if wanted(output):
            return output
        assert time.monotonic() < deadline, f"{what}: still {output!r} after {timeout} s"
        time.sleep(0.5)


def hotplug_on_the_running_guest(guest, spec: dict, tmp_path) -> None:
    virtio_ids = "cat /sys/bus/virtio/devices/*/device"
    hosts = "ls /sys/class/scsi_host"
    hosts_before = guest.check(hosts).split()
    assert VIRTIO_INPUT not in guest.check(virtio_ids).split()
    share2 = guest.files.dir / "share2"
    share2.mkdir()
    share2.chmod(0o755)
    (share2 / "live.txt").write_text("hot")
    data = guest.files.dir / "live-scsi.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), "8M"], check=True)

    plugged = copy.deepcopy(spec)
    plugged["inputs"] = [{"type": "keyboard", "bus": "virtio"}]
    plugged["controllers"].append({"type": "scsi", "index": 1})
    # sdh: libvirt puts the 8th SCSI disk on controller 1 (7 units per controller)
    plugged["disks"].append({"path": str(data), "format": "qcow2", "bus": "scsi", "target": "sdh"})
    plugged["filesystems"].append({"source": str(share2), "target": "share2"})
    started = time.monotonic()
    run = run_playbook(
        tmp_path,
        [
            {"name": "predict", "virtops.kvm.domain": plugged, "check_mode": True},
            {"name": "plug", "virtops.kvm.domain": plugged},
            {"name": "again", "virtops.kvm.domain": plugged},
        ],
    )
    assert run.rc == 0, run.stdout[-4000:]
    predicted, plug, again = (run.task(n) for n in ("predict", "plug", "again"))
    wanted = {"inputs", "controllers", "disks", "filesystems"}
    assert predicted["changed"] and set(predicted["changes"]) == wanted, predicted
    assert predicted["restart_required"] == [], predicted
    assert plug["changed"] and set(plug["live_applied"]) == wanted, plug
    assert plug["restart_required"] == [], plug
    assert not again["changed"] and again["restart_required"] == [], again
    root = etree.fromstring(inactive_xml(guest.conn, guest.name).encode())
    [sdh] = [d for d in root.findall("devices/disk") if d.find("target").get("dev") == "sdh"]
    assert sdh.find("address").get("controller") == "1"
    # the guest sees them
    until(guest, virtio_ids, lambda out: VIRTIO_INPUT in out.split(), "virtio input")
    until(guest, hosts, lambda out: len(out.split()) == len(hosts_before) + 1, "SCSI host")
    until(guest, "ls /sys/block", lambda out: "sdb" in out.split(), "disk on controller 1")
    until(guest, virtio_ids, lambda out: out.split().count(VIRTIO_FS) == 2, "virtiofs folder")
    guest.check("mkdir -p /mnt/share2 && mount -t virtiofs share2 /mnt/share2")
    assert guest.check("cat /mnt/share2/live.txt") == "hot"
    guest.check("umount /mnt/share2")

    # and live out again (the module keeps controllers: it never removes one)
    unplugged = dict(spec, inputs=[])
    run = run_playbook(
        tmp_path,
        [
            {"name": "predict", "virtops.kvm.domain": unplugged, "check_mode": True},
            {"name": "unplug", "virtops.kvm.domain": unplugged},
            {"name": "again", "virtops.kvm.domain": unplugged},
        ],
    )
    assert run.rc == 0, run.stdout[-4000:]
    predicted, unplug, again = (run.task(n) for n in ("predict", "unplug", "again"))
    assert predicted["restart_required"] == [], predicted
    assert set(unplug["live_applied"]) == {"inputs", "disks", "filesystems"}, unplug
    assert unplug["restart_required"] == [], unplug
    assert not again["changed"] and again["restart_required"] == [], again
    until(guest, virtio_ids, lambda out: VIRTIO_INPUT not in out.split(), "virtio input gone")
    until(guest, "ls /sys/block", lambda out: "sdb" not in out.split(), "disk gone")
    until(guest, virtio_ids, lambda out: out.split().count(VIRTIO_FS) == 1, "folder gone")

    # a live attach libvirt refuses: the controller's I/O thread is only in the definition
    # (I/O threads are added at the next boot), so it waits for the restart, said so
    late = copy.deepcopy(spec)
    late["tuning"] = {"iothreads": 2}
    late["controllers"].append({"type": "scsi", "index": 2, "iothread": 2})
    run = run_playbook(tmp_path, [{"name": "late", "virtops.kvm.domain": late}])
    assert run.rc == 0, run.stdout[-4000:]
    result = run.task("late")
    assert result["changed"], result
    assert set(result["restart_required"]) == {"controllers", "tuning.iothreads"}, result
    assert "controllers" not in result["live_applied"], result
    assert any("attach controller scsi 2 live" in w for w in result.get("warnings", [])), result
    root = etree.fromstring(inactive_xml(guest.conn, guest.name).encode())
    assert root.find("devices/controller[@type='scsi'][@index='2']") is not None
    print(f"hotplug part: {time.monotonic() - started:.1f} s")
