"""Item 2: from nothing to N guests running from a cloud image and answering SSH.

Both sides start from the same Debian 12 cloud image (the lab's ``debian`` image: qcow2
with cloud-init NoCloud, booted with its own kernel and initrd, ``root=/dev/vda``), the same
empty directory storage pool made for the series, libvirt's ``default`` NAT network and the
same SSH key; each guest gets 1 GiB, 1 vCPU and an 8 GiB qcow2 overlay on the image.

- ours: the ``virtops.kvm.guest`` role (imports the base image into the pool once, makes
  each guest's overlay volume and NoCloud seed, defines and starts the guests, waits for an
  address and for SSH);
- peer: community.libvirt ``virt_install`` (virt-install with ``--import``, the image as
  backing store and ``--cloud-init``), then what a user of the peer has to write: wait for
  the DHCP lease (``virsh net-dhcp-leases``) and for SSH (``ansible.builtin.wait_for``).

The figure is the wall time of the whole ``ansible-playbook`` run. Guests, volumes and the
pool are removed after each run, also on failure. Counts 1, 5 and 10 (``--provision-n``):
about 45 minutes for both sides under TCG on 2 cores (N = 10 alone takes 30).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import libvirt

from ..common import ROOT, NotReady, Results, log, new_prefix, remove_domains, run_playbook

MEMORY_MIB = 1024
DISK_GIB = 8
WAIT_S = 600
# where the role leaves seed files when its guest_seed_dir is not taken (cleaned by prefix)
ROLE_SEED_DIR = Path("/var/lib/virtops-kvm/seeds")


def _role_landed() -> bool:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--error-unmatch", "roles/guest/tasks/main.yml"],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


def _ensure_virt_install() -> None:
    if shutil.which("virt-install"):
        return
    log("provision: installing Debian's virtinst (virt-install) for the peer's virt_install")
    subprocess.run(["apt-get", "install", "-y", "-q", "virtinst"], check=True, capture_output=True)


def ours_playbook(names, image, pool, pubkey, seed_dir) -> list[dict]:
    guests = [
        {
            "name": name,
            "memory": f"{MEMORY_MIB}MiB",
            "vcpus": 1,
            "disk_size": f"{DISK_GIB}GiB",
            "image": {
                "path": str(image.disk),
                "kernel": str(image.kernel),
                "initrd": str(image.initrd),
                "cmdline": image.cmdline,
            },
        }
        for name in names
    ]
    return [
        {
            "name": "provision with the guest role",
            "hosts": "localhost",
            "gather_facts": False,
            "roles": [
                {
                    "role": "virtops.kvm.guest",
                    "vars": {
                        "guest_list": guests,
                        "guest_pool": pool,
                        "guest_image_pool": pool,
                        "guest_virt_type": "qemu",
                        "guest_ssh_public_keys": [pubkey],
                        "guest_add_hosts": False,
                        "guest_wait_timeout": WAIT_S,
                    },
                }
            ],
        }
    ]


def peer_playbook(guests, image, pool, pubkey_file) -> list[dict]:
    loop = [{"name": n, "mac": m} for n, m in guests]
    return [
        {
            "name": "provision with community.libvirt",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "virt_install",
                    "community.libvirt.virt_install": {
                        "name": "{{ item.name }}",
                        "memory": MEMORY_MIB,
                        "vcpus": 1,
                        "virt_type": "qemu",
                        "import": True,
                        "osinfo": {"name": "debian11"},
                        "disks": [
                            {
                                "pool": pool,
                                "size": DISK_GIB,
                                "format": "qcow2",
                                "backing_store": str(image.disk),
                                "backing_format": "qcow2",
                            }
                        ],
                        "boot": f"kernel={image.kernel},initrd={image.initrd},"
                        f'kernel_args="{image.cmdline}"',
                        "cloud_init": {
                            "root_ssh_key": str(pubkey_file),
                            "clouduser_ssh_key": str(pubkey_file),
                        },
                        "networks": [{"network": "default", "mac": {"address": "{{ item.mac }}"}}],
                        "graphics": {"type": "none"},
                        "noreboot": False,
                    },
                    "loop": loop,
                },
                {
                    "name": "lease",
                    "ansible.builtin.command": {
                        "argv": [
                            "virsh",
                            "-q",
                            "net-dhcp-leases",
                            "default",
                            "--mac",
                            "{{ item.mac }}",
                        ],
                    },
                    "register": "leases",
                    "until": "leases.stdout | length > 0",
                    "retries": WAIT_S // 5,
                    "delay": 5,
                    "changed_when": False,
                    "loop": loop,
                },
                {
                    "name": "ssh",
                    "ansible.builtin.wait_for": {
                        "host": "{{ (item.stdout.split()[4]).split('/')[0] }}",
                        "port": 22,
                        "search_regex": "OpenSSH",
                        "timeout": WAIT_S,
                    },
                    "loop": "{{ leases.results }}",
                },
            ],
        }
    ]


def _pool(conn, name: str, path: Path):
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    xml = f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"
    pool = conn.storagePoolDefineXML(xml, 0)
    pool.create(0)
    return pool


def _drop_pool(conn, name: str, path: Path) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        pool = conn.storagePoolLookupByName(name)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    shutil.rmtree(path, ignore_errors=True)


def run(results: Results, *, counts: list[int], reps: int, workdir: Path) -> None:
    if not _role_landed():
        raise NotReady("roles/guest (the guest role) has not landed in the repository yet")
    _ensure_virt_install()
    from tests.lab.guests import new_mac  # noqa: PLC0415
    from tests.lab.images import build_debian  # noqa: PLC0415

    image = build_debian()
    conn = libvirt.open("qemu:///system")
    net = conn.networkLookupByName("default")
    if not net.isActive():
        net.create()
    with tempfile.TemporaryDirectory(prefix="vtb-prov-key-") as keydir:
        key = Path(keydir) / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        pub = key.with_suffix(".pub")
        try:
            for n in counts:
                for rep in range(reps):
                    for side in ("ours", "peer"):
                        prefix = new_prefix(f"prov{side[0]}")
                        pool_dir = workdir / prefix
                        _pool(conn, prefix, pool_dir)
                        try:
                            names = [f"{prefix}-{i}" for i in range(n)]
                            if side == "ours":
                                book = ours_playbook(
                                    names,
                                    image,
                                    prefix,
                                    pub.read_text().strip(),
                                    workdir / f"{prefix}-seeds",
                                )
                            else:
                                book = peer_playbook(
                                    [(x, new_mac()) for x in names], image, prefix, pub
                                )
                            play = run_playbook(side, book, timeout=WAIT_S * 2 + 600, check=False)
                            common = {
                                "series": "provision",
                                "case": "to SSH",
                                "side": side,
                                "n": n,
                                "rep": rep,
                                "load": play.load_before,
                            }
                            if play.rc != 0:
                                failed = [
                                    f"{t.task}: {t.results[:1]}" for t in play.tasks if t.failed
                                ]
                                detail = "; ".join(failed) or play.output_tail[-600:]
                                results.note(
                                    "provision",
                                    f"{side} n={n} failed after {play.wall_s:.0f} s: {detail}",
                                )
                                continue
                            results.add(
                                **common,
                                metric="seconds",
                                value=play.wall_s,
                                unit="s",
                                note=f"load at end {play.load_after[0]:.1f}",
                            )
                        finally:
                            remove_domains(conn, prefix)
                            _drop_pool(conn, prefix, pool_dir)
                            for seeds in (workdir / f"{prefix}-seeds", ROLE_SEED_DIR):
                                for path in seeds.glob(f"{prefix}*"):
                                    if path.is_dir():
                                        shutil.rmtree(path, ignore_errors=True)
                                    else:
                                        path.unlink(missing_ok=True)
                            shutil.rmtree(workdir / f"{prefix}-seeds", ignore_errors=True)
        finally:
            conn.close()
