"""The domain module's typed devices inside a booted tiny guest (issue 17): a TPM 2.0 the
guest sees as /dev/tpm0, a virtiofs folder it mounts and reads a file the host wrote, a disk
on a virtio-scsi controller it sees as sd* with the controller's queues, SMBIOS it reads."""

from __future__ import annotations

import secrets
import subprocess

import pytest

from tests.helpers import run_playbook

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
    run = run_playbook(
        tmp_path,
        [
            {
                "name": "devices",
                "virtops.kvm.domain": {
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
                },
            }
        ],
    )
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
