"""Backups of a running guest: virtops.kvm.backup against virtnbdbackup and a plain copy.

Two running guests (no OS: SeaBIOS finds nothing to boot and waits, which is enough for
libvirt's backup jobs) with identical qcow2 disks - ``size`` GiB virtual, ``data`` GiB of
pattern data written by ``qemu-io`` before they start. Guest A is backed up by
virtops.kvm.backup (push mode, ansible-playbook; the time is the task's, from the timing
callback), guest B by virtnbdbackup (Debian package, pull mode over NBD; wall time of the
command). For each repetition:

1. full backup of each (fresh directories; ours ``mode: full``, virtnbdbackup ``-l full``);
2. the floor: ``qemu-img convert -U -O qcow2`` of A's disk to a new file (wall time);
3. ``write_mib`` MiB written into both disks through QEMU's monitor (HMP ``qemu-io``, the
   same offset and pattern), then an incremental backup of each: time and size of what was
   written (our incremental qcow2 image; virtnbdbackup's ``.inc`` data file).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import libvirt
import libvirt_qemu

from ..common import Results, guests_removed, log, new_prefix, run_playbook
from .snapshot import guest_xml  # the same one-disk guest

GIB = 1024**3
MIB = 1024**2


def write_through_monitor(dom, offset_mib: int, mib: int, pattern: int) -> None:
    """Write into the running guest's vda through QEMU's monitor (HMP ``qemu-io`` on the
    virtio device's block backend; the format node itself is write-locked by the device)."""
    backend = "/machine/peripheral/virtio-disk0/virtio-backend"
    cmd = f'qemu-io -d {backend} "write -P {pattern} {offset_mib}M {mib}M"'
    out = libvirt_qemu.qemuMonitorCommand(
        dom, cmd, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
    )
    if "rror" in out or "onflict" in out:
        raise RuntimeError(f"qemu-io in the monitor: {out!r}")


def timed(cmd: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.monotonic() - started


def ours(name: str, dest: Path, mode: str) -> list[dict]:
    task = {"name": "backup", "virtops.kvm.backup": {"name": name, "dest": str(dest), "mode": mode}}
    return [{"name": "backup", "hosts": "localhost", "gather_facts": False, "tasks": [task]}]


def run(
    results: Results, *, size_gib: int, data_gib: int, write_mib: int, reps: int, workdir: Path
) -> None:
    if shutil.which("virtnbdbackup") is None:
        results.note("backup", "not measured: virtnbdbackup is not installed (scripts/setup.sh)")
        return
    conn = libvirt.open("qemu:///system")
    prefix = new_prefix("bkp")
    gdir = workdir / prefix
    gdir.mkdir(parents=True)
    gdir.chmod(0o755)
    n = size_gib
    try:
        with guests_removed(conn, prefix, dirs=[gdir]):
            doms = {}
            for side in ("ours", "virtnbdbackup"):
                disk = gdir / f"{side}.qcow2"
                subprocess.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(size_gib * GIB)],
                    check=True,
                )
                writes = []  # qemu-io takes requests below 2 GiB: one per GiB
                for gib in range(data_gib):
                    writes += ["-c", f"write -P 0x5a {gib}G 1G"]
                subprocess.run(
                    ["qemu-io", "-f", "qcow2", *writes, str(disk)], check=True, capture_output=True
                )
                disk.chmod(0o644)
                dom = conn.defineXML(guest_xml(f"{prefix}-{side}", disk))
                dom.create()
                doms[side] = (dom, disk)
            results.note(
                "backup",
                f"disk {size_gib} GiB virtual with {data_gib} GiB data; {write_mib} MiB written"
                " between the full and the incremental backup",
            )
            for rep in range(reps):
                out = gdir / f"rep{rep}"
                out.mkdir()
                out.chmod(0o755)
                dom_a, disk_a = doms["ours"]
                dom_b, _disk_b = doms["virtnbdbackup"]
                dest = gdir / "ours"  # one directory: each full backup drops the older checkpoint
                dest.mkdir(exist_ok=True)
                dest.chmod(0o755)
                play = run_playbook("ours", ours(dom_a.name(), dest, "full"))
                full_ours = play.task("backup").seconds
                vnb = out / "vnb"
                full_vnb = timed(
                    ["virtnbdbackup", "-d", dom_b.name(), "-l", "full", "-o", str(vnb)]
                )
                floor = timed(
                    [
                        "qemu-img",
                        "convert",
                        "-U",
                        "-O",
                        "qcow2",
                        str(disk_a),
                        str(out / "copy.qcow2"),
                    ]
                )
                (out / "copy.qcow2").unlink()
                offset = 128 + rep * (write_mib + 16)
                for dom, _disk in doms.values():
                    write_through_monitor(dom, offset, write_mib, 0x30 + rep)
                play = run_playbook("ours", ours(dom_a.name(), dest, "incremental"))
                inc_ours = play.task("backup").seconds
                inc_image = sorted((dest / dom_a.name()).glob("*-inc/vda.qcow2"))[-1]
                inc_vnb = timed(["virtnbdbackup", "-d", dom_b.name(), "-l", "inc", "-o", str(vnb)])
                [inc_data] = vnb.glob("vda.inc.*.data")
                full_image = sorted((dest / dom_a.name()).glob("*-full/vda.qcow2"))[-1]
                figures = [
                    ("full backup", "ours", "seconds", full_ours, "s"),
                    ("full backup", "virtnbdbackup", "seconds", full_vnb, "s"),
                    ("full backup", "qemu-img convert", "seconds", floor, "s"),
                    ("full backup", "ours", "size_mib", full_image.stat().st_size / MIB, "MiB"),
                    (
                        "full backup",
                        "virtnbdbackup",
                        "size_mib",
                        sum(p.stat().st_size for p in vnb.glob("vda.full.data")) / MIB,
                        "MiB",
                    ),
                    ("incremental", "ours", "seconds", inc_ours, "s"),
                    ("incremental", "virtnbdbackup", "seconds", inc_vnb, "s"),
                    ("incremental", "ours", "size_mib", inc_image.stat().st_size / MIB, "MiB"),
                    (
                        "incremental",
                        "virtnbdbackup",
                        "size_mib",
                        inc_data.stat().st_size / MIB,
                        "MiB",
                    ),
                ]
                for case, side, metric, value, unit in figures:
                    results.add(
                        series="backup",
                        case=case,
                        side=side,
                        n=n,
                        rep=rep,
                        metric=metric,
                        value=value,
                        unit=unit,
                    )
                shutil.rmtree(out)
                log(
                    f"backup rep {rep}: full/incremental ours {full_ours:.2f}/{inc_ours:.2f} s,"
                    f" virtnbdbackup {full_vnb:.2f}/{inc_vnb:.2f} s, copy {floor:.2f} s"
                )
    finally:
        conn.close()
