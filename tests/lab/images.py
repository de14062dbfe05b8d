"""Guest images of the test lab, built locally from Debian's archive and cached by recipe.

Three images:

``tiny``
    Debian's kernel plus a busybox initramfs (direct kernel boot). Its init prints
    ``HEARTBEAT n`` on ttyS0 every second (counter in guest memory), mounts the first
    virtio disk at /mnt/marker, runs a command shell on ttyS1, powers off on the ACPI power
    button and asks for DHCP on every NIC. Boots to its first heartbeat in a few seconds
    under TCG.
``debian``
    Debian 12 as the collection's module virtops.kvm.image builds it by default (the one
    builder: plugins/module_utils/_image.py): debootstrap, a qcow2 root disk with systemd,
    openssh-server, python3, cloud-init (NoCloud only) and qemu-guest-agent; kernel and
    initrd copied out for direct kernel boot with ``root=/dev/vda``.
``debian_selinux``
    virtops.kvm.image with ``selinux: true`` and the host role's Debian packages (libvirt,
    QEMU): the ``debian`` recipe plus SELinux (``selinux-policy-default``, enforcing) and
    every file labelled at build time, so that it boots enforcing without a relabel
    (``security=selinux selinux=1 enforcing=1``).

An image lives in ``$VIRTOPS_LAB_CACHE/<kind>-<sha256 of its recipe, short>``: a changed
recipe (script text, package list, kernel version, ...) builds a new one, an unchanged one
is reused. Builds happen in a temporary directory renamed into place, under a file lock, so
concurrent test processes build once.

CLI: ``python -m tests.lab.images build tiny|debian|debian_selinux`` prints the artifact paths
as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import ansible_collections.virtops.kvm  # noqa: F401  # pylint: disable=unused-import
except ImportError:  # python -m tests.lab.images: the link scripts/setup.sh makes, as pytest.ini
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".venv" / "collections"))

from ansible_collections.virtops.kvm.plugins.module_utils import _image
from ansible_collections.virtops.kvm.plugins.module_utils._image import cached_build
from ansible_collections.virtops.kvm.plugins.module_utils._image_build import (
    run,
    write_exec,
)

DEFAULT_CACHE = _image.DEFAULT_CACHE
DEFAULT_LAB_DIR = "/var/tmp/virtops-lab"
PRUNE_DAYS = 14  # images of an older recipe unused this long are removed after a build
# Boot options for this machine, not for the image (so not part of a recipe): under TCG on a
# loaded host the kernel's IO-APIC timer check can fail and panic ("IO-APIC + timer doesn't
# work!"); no_timer_check skips it.
BOOT_EXTRA = "no_timer_check"


def cache_dir() -> Path:
    """The image cache (``$VIRTOPS_LAB_CACHE``), created readable for libvirt-qemu."""
    path = Path(os.environ.get("VIRTOPS_LAB_CACHE", DEFAULT_CACHE))
    _make_traversable(path)
    return path


def lab_dir() -> Path:
    """Per-run files of the lab (``$VIRTOPS_LAB_DIR``): guest disks, sockets, console logs.

    Outside the private mounts of the lab hosts, so every lab host sees the same files.
    """
    path = Path(os.environ.get("VIRTOPS_LAB_DIR", DEFAULT_LAB_DIR))
    _make_traversable(path)
    return path


def _make_traversable(path: Path) -> None:
    """Create ``path`` and give it and its parents the x bit QEMU (libvirt-qemu) needs."""
    path.mkdir(parents=True, exist_ok=True)
    for part in [path, *path.parents]:
        if part == Path("/"):
            break
        mode = part.stat().st_mode
        if mode & 0o005 != 0o005:
            part.chmod(mode | 0o005)


def _log(msg: str) -> None:
    print(f"[virtops-lab] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Debian archive helpers


def _apt_show(package: str) -> dict[str, str]:
    """Fields of the candidate version of ``package`` (apt-get update once if unknown)."""
    for attempt in range(2):
        proc = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            fields: dict[str, str] = {}
            for line in proc.stdout.splitlines():
                key, sep, value = line.partition(": ")
                if sep and not line.startswith(" "):
                    fields[key] = value
            return fields
        if attempt == 0:
            run(["apt-get", "update", "-q"])
    raise RuntimeError(f"apt-cache knows no package {package}")


def resolve_kernel() -> tuple[str, str]:
    """(package, version) of the kernel image that ``linux-image-amd64`` depends on."""
    meta = _apt_show("linux-image-amd64")
    match = re.search(r"(linux-image-6\.1\.[\w.+-]*-amd64)", meta.get("Depends", ""))
    if not match:
        raise RuntimeError(f"unexpected linux-image-amd64 Depends: {meta.get('Depends')!r}")
    package = match.group(1)
    return package, _apt_show(package)["Version"]


def _apt_download(package: str, version: str, dest: Path) -> Path:
    for attempt in range(2):
        proc = subprocess.run(
            ["apt-get", "download", "-q", f"{package}={version}"],
            cwd=dest,
            capture_output=True,
            text=True,
            check=False,
        )
        debs = list(dest.glob(f"{package}_*.deb"))
        if proc.returncode == 0 and debs:
            return debs[0]
        if attempt == 0:  # stale package lists: the archive moved on
            run(["apt-get", "update", "-q"])
    raise RuntimeError(f"apt-get download {package}={version} failed: {proc.stderr}")


# ----------------------------------------------------------------------------------------
# tiny: busybox initramfs

TINY_RECIPE_REVISION = 1
TINY_CMDLINE = "console=ttyS0 quiet"
# Debian builds these as modules; their dependencies are added from modules.dep.
TINY_MODULES = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_balloon",
    "crc32c_generic",
    "ext4",
    "button",
    "evdev",
    # the domain module's typed devices, proven in the guest: a disk on a virtio-scsi
    # controller (sd*) and a virtiofs shared folder (the CRB TPM driver is built in)
    "virtio_scsi",
    "sd_mod",
    "virtiofs",
]
MARKER_SIZE = "32M"

TINY_INIT = r"""#!/bin/sh
# PID 1 of the virtops tiny guest. Console lines on ttyS0 start with TINY or HEARTBEAT.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /var/log /mnt/marker
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
exec 3>/dev/ttyS0
say() { echo "$*" >&3; }
say "TINY INIT $(cut -d' ' -f1 /proc/uptime)"
hostname tiny

while read -r mod; do
    insmod "/lib/modules/$mod" 2>/dev/null || say "TINY MODULE FAILED $mod"
done < /etc/modules.load

# The marker disk: the first virtio disk, ext4; a blank one is formatted.
if grep -qx 0x0002 /sys/bus/virtio/devices/*/device 2>/dev/null; then
    n=0
    while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do usleep 100000; n=$((n+1)); done
fi
if [ -b /dev/vda ] && ! mount -t ext4 /dev/vda /mnt/marker 2>/dev/null; then
    if [ "$(dd if=/dev/vda bs=65536 count=16 2>/dev/null | tr -d '\000' | wc -c)" = 0 ]; then
        say "TINY MARKER FORMAT /dev/vda"
        mke2fs -q -L marker /dev/vda && mount -t ext4 /dev/vda /mnt/marker
    fi
fi
if grep -q ' /mnt/marker ' /proc/mounts; then
    say "TINY MARKER MOUNTED"
else
    say "TINY MARKER NONE"
fi

ip link set lo up
for dev in /sys/class/net/*; do
    ifc=${dev##*/}
    [ "$ifc" = lo ] && continue
    ip link set "$ifc" up
    udhcpc -f -i "$ifc" -s /etc/udhcpc.script -t 5 -T 1 -A 1 >/dev/null 2>&1 &
done

acpid -c /etc/acpi -l /tmp/acpid.log
/etc/cmdshell &

say "TINY READY $(cut -d' ' -f1 /proc/uptime)"
n=0
while :; do
    n=$((n+1))
    say "HEARTBEAT $n"
    sleep 1
done
"""

# Protocol of the command channel (ttyS1), ready once "TINY CMD READY" is on the console: the
# host sends "<token> <base64 of a script>\n"; the guest runs the script with sh and answers
# with its output then "\n@@END <token> <rc>@@\n".
TINY_CMDSHELL = r"""#!/bin/sh
stty -F /dev/ttyS1 raw -echo 115200 2>/dev/null
exec </dev/ttyS1 >/dev/ttyS1 2>&1
echo "TINY CMD READY" > /dev/ttyS0
while :; do
    read -r tok b64 || { sleep 1; continue; }
    [ -n "$b64" ] || continue
    echo "$b64" | base64 -d > /tmp/cmd.sh
    sh /tmp/cmd.sh </dev/null
    rc=$?
    printf '\n@@END %s %s@@\n' "$tok" "$rc"
done
"""

TINY_UDHCPC = r"""#!/bin/sh
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "TINY DHCP $interface $(cat /sys/class/net/$interface/address) $ip" > /dev/ttyS0
    ;;
esac
exit 0
"""

# busybox acpid runs /etc/acpi/PWRF/00000080 on the power button (event "PWRF").
TINY_POWEROFF = r"""#!/bin/sh
echo "TINY POWEROFF" > /dev/ttyS0
sync
umount /mnt/marker 2>/dev/null
poweroff -f
"""


@dataclass(frozen=True)
class TinyImage:
    dir: Path
    kernel: Path
    initrd: Path
    marker_template: Path  # blank ext4, qcow2
    marker_template_raw: Path
    cmdline: str
    kernel_package: str
    kernel_version: str

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def tiny_recipe() -> dict:
    package, version = resolve_kernel()
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    return {
        "revision": TINY_RECIPE_REVISION,
        "kernel_package": package,
        "kernel_version": version,
        "busybox_sha256": hashlib.sha256(busybox.read_bytes()).hexdigest(),
        "modules": TINY_MODULES,
        "init": TINY_INIT,
        "cmdshell": TINY_CMDSHELL,
        "udhcpc": TINY_UDHCPC,
        "poweroff": TINY_POWEROFF,
        "cmdline": TINY_CMDLINE,
        "marker_size": MARKER_SIZE,
    }


def _module_closure(moddir: Path, wanted: list[str]) -> list[str]:
    """Paths (relative to ``moddir``) of ``wanted`` and their dependencies, in load order."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        name = re.sub(r"\.ko(\.\w+)?$", "", Path(path).name).replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise RuntimeError(f"kernel module {name} not found in {moddir}/modules.dep")
        visit(by_name[name])
    return order


def _build_tiny(out: Path, recipe: dict) -> None:
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as work_s:
        work = Path(work_s)
        _log(f"tiny: downloading {recipe['kernel_package']} {recipe['kernel_version']}")
        deb = _apt_download(recipe["kernel_package"], recipe["kernel_version"], work)
        kroot = work / "kroot"
        run(["dpkg-deb", "-x", str(deb), str(kroot)])
        (kver,) = [p.name for p in (kroot / "lib/modules").iterdir()]
        moddir = kroot / "lib/modules" / kver
        if not (moddir / "modules.dep").exists():  # Debian runs depmod in postinst
            run(["busybox", "depmod", "-b", str(kroot), kver])
        mods = _module_closure(moddir, recipe["modules"])

        tree = work / "initramfs"
        for sub in ("bin", "dev", "proc", "sys", "tmp", "run", "etc", "lib/modules", "mnt"):
            (tree / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", tree / "bin/busybox")
        applets = run(["busybox", "--list"]).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (tree / "bin" / applet).symlink_to("busybox")
        (tree / "sbin").symlink_to("bin")
        loaded = []
        for rel in mods:
            src = moddir / rel
            name = re.sub(r"\.ko(\.\w+)?$", "", src.name)
            dest = tree / "lib/modules" / f"{name}.ko"
            if src.suffix == ".xz":
                dest.write_bytes(run(["xz", "-dc", str(src)], text=False).stdout)
            elif src.suffix == ".zst":
                dest.write_bytes(run(["zstd", "-dc", str(src)], text=False).stdout)
            elif src.suffix == ".gz":
                dest.write_bytes(run(["gzip", "-dc", str(src)], text=False).stdout)
            else:
                shutil.copy2(src, dest)
            loaded.append(dest.name)
        (tree / "etc/modules.load").write_text("\n".join(loaded) + "\n")
        write_exec(tree / "init", recipe["init"])
        write_exec(tree / "etc/cmdshell", recipe["cmdshell"])
        write_exec(tree / "etc/udhcpc.script", recipe["udhcpc"])
        write_exec(tree / "etc/acpi/PWRF/00000080", recipe["poweroff"])

        files = run(["find", ".", "-print0"], cwd=tree, text=False).stdout.split(b"\0")
        listing = b"\0".join(sorted(f for f in files if f)) + b"\0"
        cpio = run(
            ["cpio", "--null", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
            cwd=tree,
            input=listing,
            text=False,
        ).stdout
        (out / "initrd.img").write_bytes(run(["gzip", "-n", "-6"], input=cpio, text=False).stdout)
        shutil.copy2(kroot / "boot" / f"vmlinuz-{kver}", out / "vmlinuz")
        (out / "modules.txt").write_text("\n".join(mods) + "\n")

    raw = out / "marker-template.raw"
    run(
        ["mkfs.ext4", "-q", "-F", "-L", "marker", str(raw), recipe["marker_size"]],
    )
    run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(out / "marker-template.qcow2")])


def build_tiny(cache: Path | None = None) -> TinyImage:
    """The tiny image (built or reused)."""
    recipe = tiny_recipe()
    path, _seconds = cached_build(
        "tiny",
        recipe,
        lambda tmp: _build_tiny(tmp, recipe),
        cache or cache_dir(),
        log=_log,
        prune_days=PRUNE_DAYS,
    )
    return TinyImage(
        dir=path,
        kernel=path / "vmlinuz",
        initrd=path / "initrd.img",
        marker_template=path / "marker-template.qcow2",
        marker_template_raw=path / "marker-template.raw",
        cmdline=f"{recipe['cmdline']} {BOOT_EXTRA}",
        kernel_package=recipe["kernel_package"],
        kernel_version=recipe["kernel_version"],
    )


# ----------------------------------------------------------------------------------------
# debian: debootstrap image

# The lab's Debian images as options of virtops.kvm.image, one definition shared with the host
# role's Molecule scenarios (their create.yml builds the image a platform names).
LAB_IMAGES_FILE = Path(__file__).resolve().parents[2] / "roles/host/molecule/shared/vars/lab.yml"
DEBIAN_KINDS = ("debian", "debian_selinux")


def debian_spec(kind: str) -> _image.ImageSpec:
    import yaml  # noqa: PLC0415 - the tiny image needs no YAML

    options = yaml.safe_load(LAB_IMAGES_FILE.read_text())["host_lab_images"][kind]
    return _image.image_spec(name=kind, **options)


@dataclass(frozen=True)
class DebianImage:
    dir: Path
    disk: Path  # qcow2 base image: use it as a backing file, never boot it directly
    kernel: Path
    initrd: Path
    cmdline: str

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def debian_recipe() -> dict:
    return _image.recipe(debian_spec("debian"))


def debian_selinux_recipe() -> dict:
    return _image.recipe(debian_spec("debian_selinux"))


def build_debian(cache: Path | None = None) -> DebianImage:
    """The debian image (built or reused), by the collection's builder (virtops.kvm.image)."""
    return _debian_image("debian", cache)


def build_debian_selinux(cache: Path | None = None) -> DebianImage:
    """The debian image with SELinux enforcing and libvirt installed (built or reused)."""
    return _debian_image("debian_selinux", cache)


def _debian_image(kind: str, cache: Path | None) -> DebianImage:
    result = _image.ensure_image(
        debian_spec(kind), cache or cache_dir(), log=_log, prune_days=PRUNE_DAYS
    )
    return DebianImage(
        dir=Path(result["dir"]),
        disk=Path(result["disk"]),
        kernel=Path(result["kernel"]),
        initrd=Path(result["initrd"]),
        cmdline=f"{result['cmdline']} {BOOT_EXTRA}",
    )


def make_seed_iso(
    path: Path,
    *,
    instance_id: str,
    hostname: str,
    ssh_public_key: str,
    mac: str | None = None,
    user: str = "virtops",
    extra_user_data: dict | None = None,
) -> Path:
    """Write a NoCloud seed ISO (volume id ``cidata``) to ``path``.

    user-data makes ``user`` (passwordless sudo) and lets root in, both with the key;
    network-config (v1) asks for DHCP on the NIC with ``mac`` (when given).
    """
    import yaml  # noqa: PLC0415 - only the seed needs it

    user_data = {
        "hostname": hostname,
        "disable_root": False,
        "ssh_pwauth": False,
        "ssh_authorized_keys": [ssh_public_key.strip()],
        "users": [
            {
                "name": user,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "ssh_authorized_keys": [ssh_public_key.strip()],
            }
        ],
    }
    user_data.update(extra_user_data or {})
    with tempfile.TemporaryDirectory(prefix="seed-") as work_s:
        work = Path(work_s)
        (work / "user-data").write_text("#cloud-config\n" + yaml.safe_dump(user_data))
        (work / "meta-data").write_text(
            yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname})
        )
        names = ["user-data", "meta-data"]
        if mac:
            network = {
                "version": 1,
                "config": [
                    {
                        "type": "physical",
                        "name": "eth0",
                        "mac_address": mac,
                        "subnets": [{"type": "dhcp"}],
                    }
                ],
            }
            (work / "network-config").write_text(yaml.safe_dump(network))
            names.append("network-config")
        run(
            [
                "genisoimage",
                "-quiet",
                "-output",
                str(path),
                "-volid",
                "cidata",
                "-joliet",
                "-rock",
                *names,
            ],
            cwd=work,
        )
    path.chmod(0o644)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.images", description=__doc__.split("\n", maxsplit=1)[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) an image and print its paths as JSON")
    builders = {"tiny": build_tiny, "debian": build_debian, "debian_selinux": build_debian_selinux}
    build.add_argument("kind", choices=list(builders))
    args = parser.parse_args(argv)
    image = builders[args.kind]()
    print(json.dumps(image.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
