"""Guest images of the test lab, built locally from Debian's archive and cached by recipe.

Two images:

``tiny``
    Debian's kernel plus a busybox initramfs (direct kernel boot). Its init prints
    ``HEARTBEAT n`` on ttyS0 every second (counter in guest memory), mounts the first
    virtio disk at /mnt/marker, runs a command shell on ttyS1, powers off on the ACPI power
    button and asks for DHCP on every NIC. Boots to its first heartbeat in a few seconds
    under TCG.
``debian``
    Debian 12 (debootstrap) as a qcow2 root disk with systemd, openssh-server, python3,
    cloud-init (NoCloud only) and qemu-guest-agent; kernel and initrd copied out for direct
    kernel boot with ``root=/dev/vda``.
``debian_selinux``
    The ``debian`` recipe plus SELinux (``selinux-policy-default``, enforcing), the host
    role's Debian packages (libvirt, QEMU) and every file labelled at build time, so that it
    boots enforcing without a relabel (``security=selinux selinux=1 enforcing=1``).

An image lives in ``$VIRTOPS_LAB_CACHE/<kind>-<sha256 of its recipe, short>``: a changed
recipe (script text, package list, kernel version, ...) builds a new one, an unchanged one
is reused. Builds happen in a temporary directory renamed into place, under a file lock, so
concurrent test processes build once.

CLI: ``python -m tests.lab.images build tiny|debian|debian_selinux`` prints the artifact paths
as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

DEFAULT_CACHE = "/var/cache/virtops-kvm/images"
DEFAULT_LAB_DIR = "/var/tmp/virtops-lab"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
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


def _run(cmd: list[str], *, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=check, **kwargs)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr if isinstance(exc.stderr, str) else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({exc.returncode}): {detail}") from exc


def _log(msg: str) -> None:
    print(f"[virtops-lab] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def recipe_digest(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def cached_build(
    kind: str, recipe: dict, builder: Callable[[Path], None], cache: Path | None = None
) -> Path:
    """Return the directory of the image made by ``recipe``; build it first when missing.

    ``builder(tmpdir)`` fills a temporary directory that is then renamed into place.
    """
    cache = cache or cache_dir()
    final = cache / f"{kind}-{recipe_digest(recipe)}"
    if final.is_dir():
        _touch(final)
        return final
    with _locked(cache / f".{final.name}.lock"):
        if final.is_dir():  # built by another process while we waited for the lock
            return final
        for stale in cache.glob(f".{final.name}.tmp-*"):  # a crashed build of ours
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache / f".{final.name}.tmp-{os.getpid()}"
        tmp.mkdir(mode=0o755)
        try:
            started = time.monotonic()
            builder(tmp)
            elapsed = time.monotonic() - started
            (tmp / "recipe.json").write_text(
                json.dumps({"recipe": recipe, "build_seconds": round(elapsed, 1)}, indent=2)
            )
            for path in [tmp, *tmp.rglob("*")]:
                if path.is_symlink():
                    continue
                path.chmod(0o755 if path.is_dir() else 0o644)
            os.rename(tmp, final)
            _log(f"built {final} in {elapsed:.1f} s")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _prune(cache, kind, keep=final)
    return final


def _touch(image_dir: Path) -> None:
    """Mark an image as used now (recipe.json's mtime), for pruning."""
    with contextlib.suppress(OSError):
        os.utime(image_dir / "recipe.json")


def _prune(cache: Path, kind: str, keep: Path) -> None:
    """Remove images of ``kind`` made by other recipes and unused for PRUNE_DAYS."""
    limit = time.time() - PRUNE_DAYS * 86400
    for other in cache.glob(f"{kind}-*"):
        if other == keep or not other.is_dir():
            continue
        try:
            unused = (other / "recipe.json").stat().st_mtime < limit
        except FileNotFoundError:
            continue
        if unused:
            _log(f"removing {other}, unused for {PRUNE_DAYS} days")
            shutil.rmtree(other, ignore_errors=True)
            (cache / f".{other.name}.lock").unlink(missing_ok=True)


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
            _run(["apt-get", "update", "-q"], capture_output=True, text=True)
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
            _run(["apt-get", "update", "-q"], capture_output=True, text=True)
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


def _write_exec(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def _build_tiny(out: Path, recipe: dict) -> None:
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as work_s:
        work = Path(work_s)
        _log(f"tiny: downloading {recipe['kernel_package']} {recipe['kernel_version']}")
        deb = _apt_download(recipe["kernel_package"], recipe["kernel_version"], work)
        kroot = work / "kroot"
        _run(["dpkg-deb", "-x", str(deb), str(kroot)])
        (kver,) = [p.name for p in (kroot / "lib/modules").iterdir()]
        moddir = kroot / "lib/modules" / kver
        if not (moddir / "modules.dep").exists():  # Debian runs depmod in postinst
            _run(["busybox", "depmod", "-b", str(kroot), kver])
        mods = _module_closure(moddir, recipe["modules"])

        tree = work / "initramfs"
        for sub in ("bin", "dev", "proc", "sys", "tmp", "run", "etc", "lib/modules", "mnt"):
            (tree / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", tree / "bin/busybox")
        applets = _run(["busybox", "--list"], capture_output=True, text=True).stdout.split()
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
                dest.write_bytes(_run(["xz", "-dc", str(src)], capture_output=True).stdout)
            elif src.suffix == ".zst":
                dest.write_bytes(_run(["zstd", "-dc", str(src)], capture_output=True).stdout)
            elif src.suffix == ".gz":
                dest.write_bytes(_run(["gzip", "-dc", str(src)], capture_output=True).stdout)
            else:
                shutil.copy2(src, dest)
            loaded.append(dest.name)
        (tree / "etc/modules.load").write_text("\n".join(loaded) + "\n")
        _write_exec(tree / "init", recipe["init"])
        _write_exec(tree / "etc/cmdshell", recipe["cmdshell"])
        _write_exec(tree / "etc/udhcpc.script", recipe["udhcpc"])
        _write_exec(tree / "etc/acpi/PWRF/00000080", recipe["poweroff"])

        files = _run(["find", ".", "-print0"], cwd=tree, capture_output=True).stdout.split(b"\0")
        listing = b"\0".join(sorted(f for f in files if f)) + b"\0"
        cpio = _run(
            ["cpio", "--null", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
            cwd=tree,
            input=listing,
            capture_output=True,
        ).stdout
        (out / "initrd.img").write_bytes(
            _run(["gzip", "-n", "-6"], input=cpio, capture_output=True).stdout
        )
        shutil.copy2(kroot / "boot" / f"vmlinuz-{kver}", out / "vmlinuz")
        (out / "modules.txt").write_text("\n".join(mods) + "\n")

    raw = out / "marker-template.raw"
    _run(
        ["mkfs.ext4", "-q", "-F", "-L", "marker", str(raw), recipe["marker_size"]],
        capture_output=True,
        text=True,
    )
    _run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(out / "marker-template.qcow2")])


def build_tiny(cache: Path | None = None) -> TinyImage:
    """The tiny image (built or reused)."""
    recipe = tiny_recipe()
    path = cached_build("tiny", recipe, lambda tmp: _build_tiny(tmp, recipe), cache)
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

DEBIAN_RECIPE_REVISION = 2
DEBIAN_SIZE = "6G"
DEBIAN_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
# python3-cffi-backend must be named, or cloud-init's dependencies fail to configure.
DEBIAN_PACKAGES = [
    "systemd-sysv",
    "udev",
    "openssh-server",
    "python3",
    "python3-cffi-backend",
    "python3-apt",
    "cloud-init",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "netbase",
    "qemu-guest-agent",
    "sudo",
    "linux-image-amd64",
]
DEBIAN_FILES = {
    "etc/fstab": "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n",
    "etc/hostname": "debian\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 debian\n::1 localhost ip6-localhost\n",
    # cloud-init writes interfaces.d/50-cloud-init; ifupdown must read it.
    "etc/network/interfaces": "auto lo\niface lo inet loopback\n\n"
    "source /etc/network/interfaces.d/*\n",
    # NoCloud only: no probing of metadata services on the network. Under TCG, generating SSH
    # host keys and printing their fingerprints took minutes: clones keep the image's keys.
    "etc/cloud/cloud.cfg.d/90-virtops-lab.cfg": "datasource_list: [NoCloud, None]\n"
    "ssh_deletekeys: false\nssh_genkeytypes: []\nno_ssh_fingerprints: true\n"
    "grub_dpkg: {enabled: false}\nlocale: C.UTF-8\n",
    "etc/apt/sources.list": f"deb {MIRROR} {SUITE} main\n",
}
DEBIAN_CUSTOMIZE = r"""set -e
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
        fstrim.timer dpkg-db-backup.timer systemd-binfmt.service getty-static.service; do
    systemctl mask "$unit" >/dev/null 2>&1 || true
done
apt-get clean
rm -rf /var/lib/apt/lists/*
"""


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
    return {
        "revision": DEBIAN_RECIPE_REVISION,
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": DEBIAN_PACKAGES,
        "files": DEBIAN_FILES,
        "customize": DEBIAN_CUSTOMIZE,
        "size": DEBIAN_SIZE,
        "cmdline": DEBIAN_CMDLINE,
    }


def _build_debian(out: Path, recipe: dict) -> None:
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as work_s:
        root = Path(work_s) / "root"
        _log("debian: debootstrap (about 2-3 minutes)")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(recipe['packages'])}",
                recipe["suite"],
                str(root),
                recipe["mirror"],
            ],
            capture_output=True,
            text=True,
        )
        for rel, text in recipe["files"].items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        if "selinux" in recipe:
            _install_in_chroot(root, recipe["selinux"]["packages"])
        _run(["chroot", str(root), "/bin/sh", "-c", recipe["customize"]])
        if "selinux" in recipe:
            _label_selinux(root, recipe["selinux"])
        boot = root / "boot"
        (kernel,) = sorted(boot.glob("vmlinuz-*"))
        (initrd,) = sorted(boot.glob("initrd.img-*"))
        shutil.copy2(kernel, out / "vmlinuz")
        shutil.copy2(initrd, out / "initrd.img")
        raw = Path(work_s) / "disk.raw"
        _log("debian: mkfs.ext4 -d and qemu-img convert")
        _run(
            ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw), recipe["size"]],
            capture_output=True,
            text=True,
        )
        if "selinux" in recipe:
            _check_labels_kept(raw)
        _run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(out / "disk.qcow2")])


def _install_in_chroot(root: Path, packages: list[str]) -> None:
    """apt-get install ``packages`` in the debootstrapped ``root``; no service starts."""
    _log(f"debian: installing {len(packages)} more packages in the chroot")
    policy = root / "usr/sbin/policy-rc.d"
    _write_exec(policy, "#!/bin/sh\nexit 101\n")
    resolv = root / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    resolv.unlink(missing_ok=True)
    shutil.copy2("/etc/resolv.conf", resolv)
    _run(["mount", "-t", "proc", "proc", str(root / "proc")])
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["chroot", str(root), "apt-get", "update", "-q"], capture_output=True, text=True)
        _run(
            [
                "chroot",
                str(root),
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                *packages,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
    finally:
        _run(["umount", str(root / "proc")])
        policy.unlink()
        resolv.unlink()
        if saved is not None:
            resolv.write_bytes(saved)


def _label_selinux(root: Path, selinux: dict) -> None:
    """Label every file of ``root`` by the policy's file contexts (setfiles in the chroot)."""
    _log("debian: labelling the file system for SELinux")
    (root / "etc/selinux/config").write_text(selinux["config"])
    (root / "tmp/virtops_lab.cil").write_text(selinux["module"])
    for rel in selinux["dirs"]:  # made now so that they get their own type, not their parent's
        (root / rel).mkdir(mode=0o700, parents=True, exist_ok=True)
    contexts = f"/etc/selinux/{selinux['policy']}/contexts/files/file_contexts"
    # setfiles sets labels through /proc/self/fd: without /proc, ENOENT for every file
    _run(["mount", "-t", "proc", "proc", str(root / "proc")])
    try:
        _run(["chroot", str(root), "/bin/sh", "-ec", selinux["customize"]])
        _run(
            ["chroot", str(root), "setfiles", "-F", "-e", "/proc", "-e", "/sys", contexts, "/"],
            capture_output=True,
            text=True,
        )
    finally:
        _run(["umount", str(root / "proc")])
    label = os.getxattr(root / "etc/shadow", "security.selinux").rstrip(b"\0").decode()
    if ":shadow_t:" not in label:
        raise RuntimeError(f"setfiles left /etc/shadow labelled {label!r}")


def _check_labels_kept(raw: Path) -> None:
    """mkfs.ext4 -d must have copied the security.selinux attributes into the image."""
    proc = _run(
        ["debugfs", "-R", "ea_get /etc/shadow security.selinux", str(raw)],
        capture_output=True,
        text=True,
    )
    if "shadow_t" not in proc.stdout:
        raise RuntimeError(f"the image lost the SELinux labels: {proc.stdout!r} {proc.stderr!r}")


def build_debian(cache: Path | None = None) -> DebianImage:
    """The debian image (built or reused)."""
    return _debian_image("debian", debian_recipe(), cache)


# The policy Debian ships with the virt (sVirt) module, its tools, the Python bindings Ansible's
# SELinux facts and modules need, and the host role's Debian packages (vars/Debian.yml),
# installed here so that a host role scenario does not spend its time on the package install
# under TCG (the default scenario tests that install); dpkg would label them itself.
DEBIAN_SELINUX = {
    "revision": 3,
    "packages": [
        "selinux-basics",
        "selinux-policy-default",
        "policycoreutils",
        "policycoreutils-python-utils",
        "selinux-utils",
        "python3-selinux",
        "python3-semanage",
        "qemu-system-x86",
        "qemu-utils",
        "qemu-block-extra",
        "libvirt-daemon-system",
        "libvirt-clients",
        "dnsmasq-base",
        "iptables",
        "netcat-openbsd",
        "openssl",
        "ca-certificates",
        "ovmf",
        "python3-libvirt",
        "python3-lxml",
    ],
    "policy": "default",
    "config": "SELINUX=enforcing\nSELINUXTYPE=default\n",
    # Debian's policy has no cloud-init module. Its systemd generator runs ds-identify as
    # systemd_generator_t, which may not create /run/cloud-init: ds-identify fails and the
    # generator disables cloud-init; without ds-identify it enables it (datasource_list is
    # NoCloud). cloud-init (initrc_t) mounts the seed ISO on /run/cloud-init/tmp/*
    # (initrc_runtime_t), where mount_t may not mount: the module below allows that alone.
    "customize": "chmod a-x /usr/lib/cloud-init/ds-identify\n"
    "semodule -i /tmp/virtops_lab.cil\nrm /tmp/virtops_lab.cil\n",
    "module": "(allow mount_t initrc_runtime_t (dir (mounton)))\n",
    # cloud-init writes root's authorized_keys into /root/.ssh: ssh_home_t only if it exists
    "dirs": ["root/.ssh"],
}
DEBIAN_SELINUX_CMDLINE_EXTRA = "security=selinux selinux=1 enforcing=1"


def debian_selinux_recipe() -> dict:
    recipe = debian_recipe()
    recipe["selinux"] = DEBIAN_SELINUX
    recipe["cmdline"] = f"{recipe['cmdline']} {DEBIAN_SELINUX_CMDLINE_EXTRA}"
    return recipe


def build_debian_selinux(cache: Path | None = None) -> DebianImage:
    """The debian image with SELinux enforcing and libvirt installed (built or reused)."""
    return _debian_image("debian_selinux", debian_selinux_recipe(), cache)


def _debian_image(kind: str, recipe: dict, cache: Path | None) -> DebianImage:
    path = cached_build(kind, recipe, lambda tmp: _build_debian(tmp, recipe), cache)
    return DebianImage(
        dir=path,
        disk=path / "disk.qcow2",
        kernel=path / "vmlinuz",
        initrd=path / "initrd.img",
        cmdline=f"{recipe['cmdline']} {BOOT_EXTRA}",
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
        _run(
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
            capture_output=True,
            text=True,
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
