"""fs and logical pools on loop devices (sparse files), against the real libvirtd.

What this machine can and cannot do (measured): loop devices and ext4 mounts work, so an
``fs`` pool is tested end to end. LVM volume groups can be created, but the kernel has no
device-mapper, so a ``logical`` pool is built, started, measured and removed, while creating
a volume in it fails (that failure is asserted, and must leave nothing behind). The kernel
has no NFS client or server either (no ``nfs``/``nfsd`` in /proc/filesystems), so ``netfs``
is covered by schema validation only (test_storage.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import libvirt
import pytest

pytestmark = pytest.mark.integration


def _loop(tmp_path: Path, size: str = "256M") -> str:
    img = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", size, str(img)], check=True)
    return subprocess.run(
        ["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def loop_device(tmp_path, name_prefix):
    if not Path("/dev/loop-control").exists():
        pytest.skip(reason="no loop devices on this machine")
    dev = _loop(tmp_path)
    conn = libvirt.open("qemu:///system")
    yield conn, dev
    try:
        pool = conn.storagePoolLookupByName(f"{name_prefix}-dev")
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    except libvirt.libvirtError:
        pass
    subprocess.run(["umount", str(tmp_path / "mnt")], capture_output=True, check=False)
    vg = name_prefix.replace("-", "_")
    subprocess.run(["vgremove", "-f", vg], capture_output=True, check=False)
    subprocess.run(["pvremove", "-f", dev], capture_output=True, check=False)
    subprocess.run(["losetup", "-d", dev], check=False)
    conn.close()


def _four(playbook, tasks, first):
    for check, want in ((True, first), (False, first), (True, False), (False, False)):
        run = playbook(tasks, check=check)
        assert run.rc == 0, run.stdout
        assert any(r["result"]["changed"] for r in run.results) is want, run.stdout
    return run


def test_fs_pool_on_loop_device(playbook, loop_device, name_prefix, tmp_path):
    _conn, dev = loop_device
    name = f"{name_prefix}-dev"
    mnt = tmp_path / "mnt"
    pool = {
        "name": name,
        "type": "fs",
        "target": str(mnt),
        "source": {"devices": [dev], "format": "ext4"},
    }
    first = playbook([{"name": "p", "virtops.kvm.pool": pool}])
    assert first.rc == 0, first.stdout
    assert first.task("p")["actions"] == ["define", "build", "start"]  # mkfs, then mount
    _four(playbook, [{"name": "p", "virtops.kvm.pool": pool}], False)
    mounts = Path("/proc/mounts").read_text()
    assert f"{dev} {mnt} ext4" in mounts
    view = first.task("p")["pool"]
    assert 200 * 1024**2 < view["capacity"] < 256 * 1024**2

    vol = {"pool": name, "name": "v.qcow2", "format": "qcow2", "capacity": "64MiB"}
    _four(playbook, [{"name": "v", "virtops.kvm.volume": vol}], True)
    too_big = playbook(
        [
            {
                "name": "v",
                "virtops.kvm.volume": {
                    **vol,
                    "name": "big.raw",
                    "format": "raw",
                    "capacity": "1GiB",
                },
            }
        ]
    )
    assert too_big.rc != 0 and "allow_overcommit=true" in too_big.task("v")["msg"]

    # stop, start again: the existing file system is mounted, never formatted again
    _four(playbook, [{"name": "p", "virtops.kvm.pool": {**pool, "active": False}}], True)
    again = playbook([{"name": "p", "virtops.kvm.pool": pool}])
    assert again.task("p")["actions"] == ["start"]
    assert (mnt / "v.qcow2").exists()

    gone = _four(
        playbook,
        [
            {
                "name": "p",
                "virtops.kvm.pool": {"name": name, "state": "absent", "delete_storage": True},
            }
        ],
        True,
    )
    assert gone.task("p")["pool"] is None
    assert f" {mnt} " not in Path("/proc/mounts").read_text()


def test_logical_pool_on_loop_device(playbook, loop_device, name_prefix):
    if not shutil.which("vgcreate"):
        pytest.skip(reason="LVM2 is not installed (scripts/setup.sh installs lvm2)")
    conn, dev = loop_device
    name = f"{name_prefix}-dev"
    vg = name_prefix.replace("-", "_")
    pool = {"name": name, "type": "logical", "source": {"name": vg, "devices": [dev]}}
    first = playbook([{"name": "p", "virtops.kvm.pool": pool}])
    assert first.rc == 0, first.stdout
    assert first.task("p")["actions"] == ["define", "build", "start"]  # pvcreate + vgcreate
    view = first.task("p")["pool"]
    assert view["target"] == f"/dev/{vg}" and view["capacity"] > 200 * 1024**2
    _four(playbook, [{"name": "p", "virtops.kvm.pool": pool}], False)
    vgs = subprocess.run(
        ["vgs", "--noheadings", "-o", "vg_name"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert vg in vgs

    # no device-mapper in this kernel: lvcreate fails; the error is clear, nothing is left
    vol = playbook(
        [{"name": "v", "virtops.kvm.volume": {"pool": name, "name": "lv1", "capacity": "8MiB"}}]
    )
    if vol.rc == 0:  # a kernel with device-mapper: the volume works, remove it again
        res = playbook(
            [{"name": "v", "virtops.kvm.volume": {"pool": name, "name": "lv1", "state": "absent"}}]
        )
        assert res.rc == 0
    else:
        assert "Failed to create volume 'lv1'" in vol.task("v")["msg"]
    assert conn.storagePoolLookupByName(name).numOfVolumes() == 0

    _four(
        playbook,
        [
            {
                "name": "p",
                "virtops.kvm.pool": {"name": name, "state": "absent", "delete_storage": True},
            }
        ],
        True,
    )
    vgs = subprocess.run(
        ["vgs", "--noheadings", "-o", "vg_name"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert vg not in vgs
