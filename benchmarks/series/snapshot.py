"""Item 5: virtops.kvm.snapshot create and revert time against the disk's size.

For each size (sparse qcow2 of 1, 4, 16 GiB by default, made with ``qemu-img create``) a
shut-off guest with that one disk is defined. For each kind (internal, external) and
repetition one playbook runs: take the snapshot, write 4 MiB into the disk's current image
with ``qemu-io`` (so the guest has changed and the revert is real, not judged a no-op),
revert, then delete the snapshot. Each task is timed by the timing callback; the revert
must report ``changed``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import libvirt

from ..common import Results, guests_removed, log, new_prefix, run_playbook

GIB = 1024**3


def guest_xml(name: str, disk: Path) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        "<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>"
    )


def playbook(domain: str, snap: str, kind: str) -> list[dict]:
    snapshot = {"domain": domain, "name": snap, "kind": kind}
    return [
        {
            "name": "snapshot",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {"name": "create", "virtops.kvm.snapshot": {**snapshot, "state": "present"}},
                {"name": "where", "virtops.kvm.domain_info": {"name": domain}, "register": "info"},
                {
                    "name": "write",
                    "ansible.builtin.command": {
                        "argv": [
                            "qemu-io",
                            "-f",
                            "qcow2",
                            "-c",
                            "write -P 0x5a 0 4M",
                            "{{ info.guests[0].disks[0].path }}",
                        ]
                    },
                    "changed_when": True,
                },
                {"name": "revert", "virtops.kvm.snapshot": {**snapshot, "state": "reverted"}},
                {"name": "delete", "virtops.kvm.snapshot": {**snapshot, "state": "absent"}},
            ],
        }
    ]


def run(results: Results, *, sizes_gib: list[int], reps: int, workdir: Path) -> None:
    conn = libvirt.open("qemu:///system")
    prefix = new_prefix("snap")
    gdir = workdir / prefix
    gdir.mkdir(parents=True)
    gdir.chmod(0o755)
    try:
        with guests_removed(conn, prefix, dirs=[gdir]):
            for size in sizes_gib:
                name = f"{prefix}-{size}g"
                disk = gdir / f"{name}.qcow2"
                subprocess.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(size * GIB)],
                    check=True,
                )
                disk.chmod(0o644)
                conn.defineXML(guest_xml(name, disk))
                for rep in range(reps):
                    for kind in ("internal", "external"):
                        snap = f"bench-{kind}-{rep}"
                        play = run_playbook("ours", playbook(name, snap, kind))
                        reverted = play.task("revert")
                        note = "" if reverted.changed else "revert reported no change"
                        for step in ("create", "revert", "delete"):
                            results.add(
                                series="snapshot",
                                case=f"{kind} {step}",
                                side="ours",
                                n=size,
                                rep=rep,
                                metric="seconds",
                                value=play.task(step).seconds,
                                unit="s",
                                load=play.load_before,
                                note=note,
                            )
                        used = disk.stat().st_blocks * 512 / 1024**2
                        log(f"snapshot {size} GiB {kind}: image uses {used:.1f} MiB on disk")
    finally:
        conn.close()
