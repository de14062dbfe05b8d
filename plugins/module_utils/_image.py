# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Debian cloud images built with debootstrap, cached by recipe (``virtops.kvm.image``).

A recipe is everything that decides an image's content (suite, mirror, packages, files,
scripts, size, format, SELinux). An image lives in ``CACHE/<name>-<sha256 of the recipe,
12 hex digits>``: the same recipe finds its image, a changed one builds a new directory. A
build fills a temporary directory that is renamed into place under a file lock, so a failed
build leaves nothing and concurrent runs build once. The test lab (tests/lab/images.py)
builds its images through this file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import _image_build
from ._errors import KvmError, KvmValidationError
from ._units import parse_size

DEFAULT_CACHE = "/var/cache/virtops-kvm/images"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
DEFAULT_SIZE = "6G"
GIB = 1024**3
MIB = 1024**2
MIN_SIZE = GIB  # the base packages with a kernel take ~800 MB

# Raising it rebuilds every image (what an unchanged recipe text cannot say: a builder fix).
RECIPE_REVISION = 2
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
# python3-cffi-backend must be named, or cloud-init's dependencies fail to configure.
BASE_PACKAGES = [
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
# NoCloud only: no probing of metadata services on the network. Under TCG, generating SSH
# host keys and printing their fingerprints took minutes: clones keep the image's keys.
CLOUD_CFG = (
    "datasource_list: [NoCloud, None]\n"
    "ssh_deletekeys: false\nssh_genkeytypes: []\nno_ssh_fingerprints: true\n"
    "grub_dpkg: {enabled: false}\nlocale: C.UTF-8\n"
)
CUSTOMIZE = r"""set -e
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
        fstrim.timer dpkg-db-backup.timer systemd-binfmt.service getty-static.service; do
    systemctl mask "$unit" >/dev/null 2>&1 || true
done
apt-get clean
rm -rf /var/lib/apt/lists/*
"""

# SELinux enforcing: Debian's policy with the virt (sVirt) module, its tools and the Python
# bindings Ansible's SELinux facts and modules need; every file is labelled at build time,
# so the image boots enforcing without a relabel.
SELINUX_REVISION = 3
SELINUX_PACKAGES = [
    "selinux-basics",
    "selinux-policy-default",
    "policycoreutils",
    "policycoreutils-python-utils",
    "selinux-utils",
    "python3-selinux",
    "python3-semanage",
]
SELINUX_CMDLINE = "security=selinux selinux=1 enforcing=1"
# Debian's policy has no cloud-init module. Its systemd generator runs ds-identify as
# systemd_generator_t, which may not create /run/cloud-init: ds-identify fails and the
# generator disables cloud-init; without ds-identify it enables it (datasource_list is
# NoCloud). cloud-init (initrc_t) mounts the seed ISO on /run/cloud-init/tmp/*
# (initrc_runtime_t), where mount_t may not mount: the module below allows that alone.
SELINUX_CUSTOMIZE = (
    "chmod a-x /usr/lib/cloud-init/ds-identify\n"
    "semodule -i /tmp/virtops_lab.cil\nrm /tmp/virtops_lab.cil\n"
)
SELINUX_MODULE = "(allow mount_t initrc_runtime_t (dir (mounton)))\n"

_SUITE_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MIRROR_RE = re.compile(r"^(https?|file)://\S+$")

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class ImageSpec:
    """What the user asked for, checked (:func:`image_spec`)."""

    name: str = "debian"
    suite: str = DEFAULT_SUITE
    mirror: str = DEFAULT_MIRROR
    extra_packages: tuple[str, ...] = ()
    size: str = DEFAULT_SIZE  # mke2fs's binary units: 6G, 1536M
    format: str = "qcow2"
    selinux: bool = False


def image_spec(
    *,
    name: str | None = None,
    suite: str = DEFAULT_SUITE,
    mirror: str = DEFAULT_MIRROR,
    extra_packages: list[str] | tuple[str, ...] = (),
    size: str | int = DEFAULT_SIZE,
    format: str = "qcow2",
    selinux: bool = False,
) -> ImageSpec:
    """An :class:`ImageSpec` from options; ``KvmValidationError`` for anything unusable."""
    if not _SUITE_RE.match(suite):
        raise KvmValidationError(f"suite: {suite!r} is not a Debian suite name such as bookworm")
    if not _MIRROR_RE.match(mirror):
        raise KvmValidationError(
            f"mirror: {mirror!r} is not an http://, https:// or file:// URL of a Debian archive"
        )
    bad = [p for p in extra_packages if not _PACKAGE_RE.match(p)]
    if bad:
        raise KvmValidationError(f"extra_packages: not Debian package names: {', '.join(bad)}")
    if name is None:
        name = "debian_selinux" if selinux else "debian"
    if not _NAME_RE.match(name):
        raise KvmValidationError(
            f"name: {name!r} may hold letters, digits, '_', '.' and '-' only (no '/')"
        )
    if format not in ("qcow2", "raw"):
        raise KvmValidationError(f"format: {format!r} is neither qcow2 nor raw")
    return ImageSpec(
        name=name,
        suite=suite,
        mirror=mirror,
        extra_packages=tuple(extra_packages),
        size=mkfs_size(size),
        format=format,
        selinux=selinux,
    )


def mkfs_size(value: str | int) -> str:
    """``value`` (``6GiB``, ``6G``, ``6144MiB``, bytes) as mke2fs writes it: ``6G``, ``1536M``.

    One size has one spelling, so that it has one recipe hash.
    """
    size = parse_size(value, what="size")
    if size < MIN_SIZE:
        raise KvmValidationError(
            f"size: {value!r} is less than 1GiB, too small for Debian with a kernel"
        )
    if size % MIB:
        raise KvmValidationError(f"size: {value!r} is not a whole number of MiB")
    return f"{size // GIB}G" if size % GIB == 0 else f"{size // MIB}M"


def recipe(spec: ImageSpec) -> dict[str, Any]:
    """The recipe of ``spec``: everything that decides the image's content.

    Keys appear only when they differ from the first recipe's defaults, so the images the
    test lab built before these options existed keep their hash.
    """
    out: dict[str, Any] = {
        "revision": RECIPE_REVISION,
        "suite": spec.suite,
        "mirror": spec.mirror,
        "packages": list(BASE_PACKAGES),
        "files": _files(spec),
        "customize": CUSTOMIZE,
        "size": spec.size,
        "cmdline": CMDLINE,
    }
    if spec.format != "qcow2":
        out["format"] = spec.format
    if spec.selinux:
        out["selinux"] = {
            "revision": SELINUX_REVISION,
            # one apt-get install after debootstrap, like extra_packages without SELinux
            "packages": SELINUX_PACKAGES + list(spec.extra_packages),
            "policy": "default",
            "config": "SELINUX=enforcing\nSELINUXTYPE=default\n",
            "customize": SELINUX_CUSTOMIZE,
            "module": SELINUX_MODULE,
            # cloud-init writes root's authorized_keys into /root/.ssh: ssh_home_t only if it
            # exists
            "dirs": ["root/.ssh"],
        }
        out["cmdline"] = f"{CMDLINE} {SELINUX_CMDLINE}"
    elif spec.extra_packages:
        # apt-get in the chroot, not debootstrap --include: apt resolves dependencies fully
        out["extra_packages"] = list(spec.extra_packages)
    return out


def _files(spec: ImageSpec) -> dict[str, str]:
    return {
        "etc/fstab": "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n",
        "etc/hostname": "debian\n",
        "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 debian\n::1 localhost ip6-localhost\n",
        # cloud-init writes interfaces.d/50-cloud-init; ifupdown must read it.
        "etc/network/interfaces": "auto lo\niface lo inet loopback\n\n"
        "source /etc/network/interfaces.d/*\n",
        "etc/cloud/cloud.cfg.d/90-virtops-lab.cfg": CLOUD_CFG,
        "etc/apt/sources.list": f"deb {spec.mirror} {spec.suite} main\n",
    }


def recipe_digest(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ImagePlan:
    """Where the image of a spec is (or would be) and whether it is there."""

    name: str
    recipe: dict[str, Any] = field(repr=False)
    digest: str
    dir: Path
    format: str
    cmdline: str
    exists: bool

    @property
    def disk(self) -> Path:
        return self.dir / f"disk.{self.format}"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    def result(self, *, changed: bool, build_seconds: float | None = None) -> dict[str, Any]:
        """The module's return values."""
        image = {
            "path": str(self.disk),
            "format": self.format,
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "cmdline": self.cmdline,
        }
        out: dict[str, Any] = {
            "changed": changed,
            "name": self.name,
            "recipe_hash": self.digest,
            "dir": str(self.dir),
            "disk": str(self.disk),
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "cmdline": self.cmdline,
            "format": self.format,
            "image": image,
        }
        if build_seconds is not None:
            out["build_seconds"] = build_seconds
        return out


def plan_image(spec: ImageSpec, cache: Path) -> ImagePlan:
    """Read-only: the image directory of ``spec`` in ``cache`` and whether it is built."""
    rec = recipe(spec)
    digest = recipe_digest(rec)
    path = cache / f"{spec.name}-{digest}"
    return ImagePlan(
        name=spec.name,
        recipe=rec,
        digest=digest,
        dir=path,
        format=spec.format,
        cmdline=rec["cmdline"],
        exists=(path / f"disk.{spec.format}").is_file(),
    )


def ensure_image(
    spec: ImageSpec,
    cache: Path,
    *,
    check_mode: bool = False,
    log: Log = _quiet,
    prune_days: int | None = None,
) -> dict[str, Any]:
    """Build the image of ``spec`` unless ``cache`` has it; the module's result.

    Check mode says whether a build would happen and fails as the build would when this
    host lacks a tool or root; it builds nothing and creates no directory.
    """
    plan = plan_image(spec, cache)
    if plan.exists:
        if not check_mode:
            touch(plan.dir)
        return plan.result(changed=False)
    if plan.dir.exists():
        raise KvmError(
            f"{plan.dir} has no {plan.disk.name}: remove the directory to build the image again",
            dir=str(plan.dir),
        )
    _image_build.check_build_host(plan.recipe)
    if check_mode:
        return plan.result(changed=True)
    _path, seconds = cached_build(
        plan.name,
        plan.recipe,
        lambda tmp: _image_build.build_debian(tmp, plan.recipe, log),
        cache,
        log=log,
        prune_days=prune_days,
    )
    # None: another run built it while this one waited for the lock
    return plan.result(changed=seconds is not None, build_seconds=seconds)


# --- the cache --------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_build(
    kind: str,
    recipe: dict[str, Any],
    builder: Callable[[Path], None],
    cache: Path,
    *,
    log: Log = _quiet,
    prune_days: int | None = None,
) -> tuple[Path, float | None]:
    """The directory of the image made by ``recipe`` and the seconds its build took (``None``
    when it was there); built first when missing.

    ``builder(tmpdir)`` fills a temporary directory that is then renamed into place. With
    ``prune_days``, images of ``kind`` made by other recipes and unused that long are removed
    after a build.
    """
    final = cache / f"{kind}-{recipe_digest(recipe)}"
    if final.is_dir():
        touch(final)
        return final, None
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    with _locked(cache / f".{final.name}.lock"):
        if final.is_dir():  # built by another process while we waited for the lock
            return final, None
        for stale in cache.glob(f".{final.name}.tmp-*"):  # a crashed build of ours
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache / f".{final.name}.tmp-{os.getpid()}"
        tmp.mkdir(mode=0o755)
        try:
            started = time.monotonic()
            builder(tmp)
            elapsed = round(time.monotonic() - started, 1)
            (tmp / "recipe.json").write_text(
                json.dumps({"recipe": recipe, "build_seconds": elapsed}, indent=2)
            )
            for path in [tmp, *tmp.rglob("*")]:
                if path.is_symlink():
                    continue
                path.chmod(0o755 if path.is_dir() else 0o644)
            os.rename(tmp, final)
            log(f"built {final} in {elapsed:.1f} s")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if prune_days is not None:
        _prune(cache, kind, final, prune_days, log)
    return final, elapsed


def touch(image_dir: Path) -> None:
    """Mark an image as used now (recipe.json's mtime), for pruning."""
    with contextlib.suppress(OSError):
        os.utime(image_dir / "recipe.json")


def _prune(cache: Path, kind: str, keep: Path, days: int, log: Log) -> None:
    """Remove images of ``kind`` made by other recipes and unused for ``days``."""
    limit = time.time() - days * 86400
    for other in cache.glob(f"{kind}-*"):
        if other == keep or not other.is_dir():
            continue
        try:
            unused = (other / "recipe.json").stat().st_mtime < limit
        except FileNotFoundError:
            continue
        if unused:
            log(f"removing {other}, unused for {days} days")
            shutil.rmtree(other, ignore_errors=True)
            (cache / f".{other.name}.lock").unlink(missing_ok=True)
