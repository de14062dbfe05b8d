"""Storage with a booted tiny guest: a qcow2 overlay the guest reads its base through, and
growing a volume of a running guest (the guest sees the new size)."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from tests.helpers import four_times
from tests.lab.guests import TinyGuest, disk_xml, prepare_tiny_files, tiny_domain_xml
from tests.lab.images import lab_dir

pytestmark = pytest.mark.lab

MiB = 1024 * 1024


def test_overlay_boot_and_live_grow(playbook, lab_pool, tiny_image, name_prefix, tmp_path):
    conn, pool, target, made = lab_pool
    image = tiny_image

    # a base image whose ext4 holds a marker file
    content = tmp_path / "content"
    content.mkdir()
    (content / "base.txt").write_text(f"from the base {name_prefix}\n")
    raw = tmp_path / "base.raw"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(content), str(raw), "32M"], check=True)
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(base)], check=True)
    checksum = "sha256:" + hashlib.sha256(base.read_bytes()).hexdigest()

    tasks = [
        {"name": "pool", "virtops.kvm.pool": {"name": pool, "type": "dir", "target": str(target)}},
        {
            "name": "base",
            "virtops.kvm.volume": {
                "pool": pool,
                "name": "base.qcow2",
                "format": "qcow2",
                "source_path": str(base),
                "checksum": checksum,
            },
        },
        {
            "name": "overlay",
            "virtops.kvm.volume": {
                "pool": pool,
                "name": "guest.qcow2",
                "backing": {"volume": "base.qcow2"},
            },
        },
        {
            "name": "data",
            "virtops.kvm.volume": {
                "pool": pool,
                "name": "data.raw",
                "format": "raw",
                "capacity": "8MiB",
            },
        },
    ]
    run = playbook(tasks)
    assert run.rc == 0, run.stdout
    assert all(r["result"]["changed"] for r in run.results)
    overlay = run.task("overlay")["volume"]
    data = run.task("data")["volume"]
    target.chmod(0o755)

    files = prepare_tiny_files(name_prefix, image, base=lab_dir() / "guests", marker=False)
    xml = tiny_domain_xml(
        name_prefix,
        image,
        files,
        extra_devices=[
            disk_xml(overlay["path"], "vda", "qcow2"),
            disk_xml(data["path"], "vdb", "raw"),
        ],
    )
    dom = conn.defineXML(xml)
    made["domains"].append(name_prefix)
    dom.create()
    guest = TinyGuest(name_prefix, files, conn)
    guest.wait_heartbeat(timeout=120)

    # the guest reads the base's file through the overlay
    assert guest.read_marker("base.txt").strip() == f"from the base {name_prefix}"
    guest.write_marker("guest.txt", "written into the overlay")
    assert guest.check("cat /sys/block/vdb/size").strip() == str(8 * MiB // 512)

    # the same playbook again: nothing changes (base checksum verified, no re-import)
    again = playbook(tasks)
    assert again.rc == 0, again.stdout
    assert not any(r["result"]["changed"] for r in again.results), again.stdout
    assert again.task("base")["checksum_verified"] is True

    # grow the running guest's data disk: check -> apply -> check -> apply
    grow = [
        {
            "name": "grow",
            "virtops.kvm.volume": {"pool": pool, "name": "data.raw", "capacity": "24MiB"},
        }
    ]

    def after_each(index: int, run) -> None:
        if index < 2:  # the two that change
            assert run.task("grow")["resized_via"] == (
                f"blockResize of vdb in running guest {name_prefix}"
            )
        if index == 0:  # check mode: the guest still sees the old size
            assert guest.check("cat /sys/block/vdb/size").strip() == str(8 * MiB // 512)

    four_times(playbook, grow, diff=False, after_each=after_each)
    assert guest.check("cat /sys/block/vdb/size").strip() == str(24 * MiB // 512)

    # shrinking the running guest's disk is refused and nothing changes
    shrink = playbook(
        [
            {
                "name": "s",
                "virtops.kvm.volume": {"pool": pool, "name": "data.raw", "capacity": "8MiB"},
            }
        ]
    )
    assert shrink.rc != 0 and "Refusing to shrink" in shrink.task("s")["msg"]
    assert guest.check("cat /sys/block/vdb/size").strip() == str(24 * MiB // 512)

    # deleting a volume of a running guest is refused
    rm = playbook(
        [
            {
                "name": "rm",
                "virtops.kvm.volume": {"pool": pool, "name": "data.raw", "state": "absent"},
            }
        ]
    )
    assert rm.rc != 0
    assert f"guest {name_prefix} (running) disk vdb uses data.raw" in rm.task("rm")["msg"]
