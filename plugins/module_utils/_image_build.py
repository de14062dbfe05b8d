# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The steps that turn a Debian image recipe (:mod:`._image`) into files: debootstrap into a
directory, more packages with apt in a chroot, SELinux labels, ``mkfs.ext4 -d`` (no loop
device, no mount) and ``qemu-img convert``.

Every command's output is captured: a module must print nothing but its result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from ._errors import KvmError

Log = Callable[[str], None]

# Ansible may run a module with a PATH without the sbin directories (debootstrap, mkfs.ext4).
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_OUTPUT_TAIL = 3000  # characters of a failed command's output kept in the error
# The Debian package of each tool, for the error that names the missing ones.
TOOL_PACKAGES = {
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "mount": "mount",
    "umount": "mount",
}


def tool_path() -> str:
    """PATH for the build's commands: the caller's, plus the sbin directories."""
    parts = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(parts + [d for d in _SBIN if d not in parts])


def run(
    cmd: list[str],
    *,
    input: bytes | str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` with its output captured; a failure is a ``KvmError`` with the output's tail."""
    run_env = dict(env if env is not None else os.environ)
    run_env["PATH"] = tool_path()
    try:
        return subprocess.run(
            cmd, input=input, cwd=cwd, env=run_env, capture_output=True, text=text, check=True
        )
    except FileNotFoundError as exc:
        raise KvmError(f"Command not found: {cmd[0]}", command=cmd) from exc
    except subprocess.CalledProcessError as exc:
        output = exc.stderr or exc.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        what = f"{cmd[2]} in the new system" if cmd[0] == "chroot" else cmd[0]
        raise KvmError(
            f"Building the image failed: {what} exited with {exc.returncode}: "
            f"{output[-_OUTPUT_TAIL:].strip()}",
            command=cmd,
            rc=exc.returncode,
        ) from exc


def write_exec(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def required_tools(recipe: dict[str, Any]) -> list[str]:
    """The commands a build of ``recipe`` runs."""
    tools = ["debootstrap", "chroot", "mkfs.ext4"]
    if recipe.get("format", "qcow2") == "qcow2":
        tools.append("qemu-img")
    if "selinux" in recipe or recipe.get("extra_packages"):
        tools += ["mount", "umount"]
    if "selinux" in recipe:
        tools.append("debugfs")
    return tools


def check_build_host(
    recipe: dict[str, Any],
    *,
    which: Callable[..., str | None] = shutil.which,
    euid: int | None = None,
) -> None:
    """Fail before anything is made when this host cannot build ``recipe``."""
    search = tool_path()
    missing = [tool for tool in required_tools(recipe) if which(tool, path=search) is None]
    if missing:
        packages = sorted({TOOL_PACKAGES[tool] for tool in missing})
        raise KvmError(
            f"Building the image needs {', '.join(missing)}, not found on this host "
            f"(install the Debian packages {', '.join(packages)}); nothing was built",
            missing_tools=missing,
        )
    if (os.geteuid() if euid is None else euid) != 0:
        raise KvmError(
            "Building the image needs root (debootstrap and chroot): use become; nothing was built"
        )


def build_debian(out: Path, recipe: dict[str, Any], log: Log) -> None:
    """Fill the empty directory ``out`` with the image of ``recipe``: ``disk.qcow2`` (or
    ``disk.raw``), ``vmlinuz`` and ``initrd.img``."""
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as work_s:
        root = Path(work_s) / "root"
        log("debian: debootstrap (about 2-3 minutes)")
        _debootstrap(root, recipe)
        for rel, text in recipe["files"].items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        more = (
            recipe["selinux"]["packages"] if "selinux" in recipe else recipe.get("extra_packages")
        )
        if more:
            _install_in_chroot(root, more, log)
        run(["chroot", str(root), "/bin/sh", "-c", recipe["customize"]])
        if "selinux" in recipe:
            _label_selinux(root, recipe["selinux"], log)
        boot = root / "boot"
        (kernel,) = sorted(boot.glob("vmlinuz-*"))
        (initrd,) = sorted(boot.glob("initrd.img-*"))
        shutil.copy2(kernel, out / "vmlinuz")
        shutil.copy2(initrd, out / "initrd.img")
        raw = Path(work_s) / "disk.raw"
        log("debian: mkfs.ext4 -d")
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw), recipe["size"]])
        if "selinux" in recipe:
            _check_labels_kept(raw)
        if recipe.get("format", "qcow2") == "raw":
            os.rename(raw, out / "disk.raw")
        else:
            log("debian: qemu-img convert")
            run(["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(out / "disk.qcow2")])


def _debootstrap(root: Path, recipe: dict[str, Any]) -> None:
    cmd = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(recipe['packages'])}",
        recipe["suite"],
        str(root),
        recipe["mirror"],
    ]
    try:
        run(cmd)
    except KvmError as exc:
        # debootstrap says on stderr only that it failed; the reason is in its log.
        log_file = root / "debootstrap" / "debootstrap.log"
        if log_file.is_file():
            tail = log_file.read_text(errors="replace")[-_OUTPUT_TAIL:].strip()
            raise KvmError(f"{exc.msg}\ndebootstrap.log: {tail}", **exc.details) from exc
        raise


def _install_in_chroot(root: Path, packages: list[str], log: Log) -> None:
    """apt-get install ``packages`` in the debootstrapped ``root``; no service starts."""
    log(f"debian: installing {len(packages)} more packages in the chroot")
    policy = root / "usr/sbin/policy-rc.d"
    write_exec(policy, "#!/bin/sh\nexit 101\n")
    resolv = root / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    resolv.unlink(missing_ok=True)
    shutil.copy2("/etc/resolv.conf", resolv)
    run(["mount", "-t", "proc", "proc", str(root / "proc")])
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["chroot", str(root), "apt-get", "update", "-q"])
        run(
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
            env=env,
        )
    finally:
        run(["umount", str(root / "proc")])
        policy.unlink()
        resolv.unlink()
        if saved is not None:
            resolv.write_bytes(saved)


def _label_selinux(root: Path, selinux: dict[str, Any], log: Log) -> None:
    """Label every file of ``root`` by the policy's file contexts (setfiles in the chroot)."""
    log("debian: labelling the file system for SELinux")
    (root / "etc/selinux/config").write_text(selinux["config"])
    (root / "tmp/virtops_lab.cil").write_text(selinux["module"])
    for rel in selinux["dirs"]:  # made now so that they get their own type, not their parent's
        (root / rel).mkdir(mode=0o700, parents=True, exist_ok=True)
    contexts = f"/etc/selinux/{selinux['policy']}/contexts/files/file_contexts"
    # setfiles sets labels through /proc/self/fd: without /proc, ENOENT for every file
    run(["mount", "-t", "proc", "proc", str(root / "proc")])
    try:
        run(["chroot", str(root), "/bin/sh", "-ec", selinux["customize"]])
        run(["chroot", str(root), "setfiles", "-F", "-e", "/proc", "-e", "/sys", contexts, "/"])
    finally:
        run(["umount", str(root / "proc")])
    label = os.getxattr(root / "etc/shadow", "security.selinux").rstrip(b"\0").decode()
    if ":shadow_t:" not in label:
        raise KvmError(f"setfiles left /etc/shadow labelled {label!r}")


def _check_labels_kept(raw: Path) -> None:
    """mkfs.ext4 -d must have copied the security.selinux attributes into the image."""
    proc = run(["debugfs", "-R", "ea_get /etc/shadow security.selinux", str(raw)])
    if "shadow_t" not in proc.stdout:
        raise KvmError(f"the image lost the SELinux labels: {proc.stdout!r} {proc.stderr!r}")
