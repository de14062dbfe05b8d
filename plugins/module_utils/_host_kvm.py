# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Whether KVM really works on a libvirt host, and the domain type to use.

``kvm_verdict(conn)`` judges KVM the way users need it: libvirt advertising domain type
``kvm`` (it does whenever ``/dev/kvm`` exists) is not enough, the CPU must also have
hardware virtualization (vmx/svm) or KVM guests hang. ``resolve_virt_type(conn, requested)``
turns ``auto``/``kvm``/``qemu`` into the domain type to use; ``qemu`` needs no look at the
host at all.

This is the part of the host's description that ``virtops.kvm.domain`` needs (only when it
creates a guest); the rest of ``virtops.kvm.host_info``'s view is in ``_host``. Facts read
from the local machine (``/proc/cpuinfo``, ``/dev/kvm``, sysfs) go through ``LocalHost`` so
tests can point them at other files; they are only read when the connection is local (a URI
without a host part, such as ``qemu:///system``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _xml
from ._errors import KvmValidationError, from_libvirt
from ._libvirt import is_this_machine, libvirt

VIRT_TYPES = ("auto", "kvm", "qemu")
X86_ARCHES = ("x86_64", "i686", "i386")
HW_VIRT_FLAGS = ("vmx", "svm")


# --- the local machine ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalHost:
    """Where facts of the local machine are read; tests point these at other files."""

    cpuinfo_path: str = "/proc/cpuinfo"
    dev_kvm_path: str = "/dev/kvm"
    hugepages_path: str = "/sys/kernel/mm/hugepages"
    node_path: str = "/sys/devices/system/node"
    resctrl_path: str = "/sys/fs/resctrl"
    loadavg_path: str = "/proc/loadavg"

    def cpuinfo(self) -> str | None:
        return _read(self.cpuinfo_path)

    def loadavg(self) -> list[float] | None:
        """The 1, 5 and 15 minute load averages, or None if unreadable."""
        try:
            return [float(v) for v in (_read(self.loadavg_path) or "").split()[:3]] or None
        except ValueError:
            return None

    def dev_kvm(self) -> str:
        """``char`` (a character device), ``missing`` or ``not a character device``."""
        try:
            mode = os.stat(self.dev_kvm_path).st_mode
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable ({exc.strerror})"
        return "char" if stat.S_ISCHR(mode) else "not a character device"

    def hugepages(self) -> dict[int, dict[str, Any]]:
        """Pools by page size (KiB): ``total``, ``free`` and per NUMA node ``cells``."""
        pools: dict[int, dict[str, Any]] = {}
        for size, counts in _sysfs_pools(self.hugepages_path).items():
            pools[size] = {**counts, "cells": {}}
        for node in _listdir(self.node_path):
            if not (node.startswith("node") and node[4:].isdigit()):
                continue
            node_pools = _sysfs_pools(os.path.join(self.node_path, node, "hugepages"))
            for size, counts in node_pools.items():
                pool = pools.setdefault(size, {"total": 0, "free": 0, "cells": {}})
                pool["cells"][int(node[4:])] = counts
        return pools

    def resctrl_mounted(self) -> bool:
        # The directory exists whenever the kernel supports resctrl; info/ only once mounted.
        return os.path.isdir(os.path.join(self.resctrl_path, "info"))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _sysfs_pools(path: str) -> dict[int, dict[str, int]]:
    pools: dict[int, dict[str, int]] = {}
    for entry in _listdir(path):
        if not (entry.startswith("hugepages-") and entry.endswith("kB")):
            continue
        size = entry[len("hugepages-") : -len("kB")]
        total = _read(os.path.join(path, entry, "nr_hugepages"))
        free = _read(os.path.join(path, entry, "free_hugepages"))
        if size.isdigit() and total is not None and free is not None:
            pools[int(size)] = {"total": int(total), "free": int(free)}
    return pools


def cpuinfo_flags(text: str | None) -> set[str] | None:
    """CPU flags from ``/proc/cpuinfo`` text (x86 ``flags`` lines), None when there are none."""
    if not text:
        return None
    flags: set[str] = set()
    found = False
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            found = True
            flags.update(value.split())
    return flags if found else None


# --- libvirt calls --------------------------------------------------------------------------


class Unsupported(Exception):
    """A libvirt call the connection's driver does not implement (or does not allow)."""


def _unsupported_codes() -> set[int]:
    names = (
        "VIR_ERR_NO_SUPPORT",
        "VIR_ERR_ARGUMENT_UNSUPPORTED",
        "VIR_ERR_OPERATION_UNSUPPORTED",
        "VIR_ERR_OPERATION_DENIED",  # e.g. domain capabilities on a read-only connection
    )
    return {getattr(libvirt, n) for n in names if hasattr(libvirt, n)}


def call(func: Callable[..., Any], action: str, *args: Any, optional: bool = False) -> Any:
    """Call libvirt; errors become ``KvmLibvirtError`` (``Unsupported`` when ``optional``)."""
    try:
        return func(*args)
    except libvirt.libvirtError as exc:
        if optional and exc.get_error_code() in _unsupported_codes():
            raise Unsupported(f"cannot {action}: {exc.get_error_message()}") from exc
        raise from_libvirt(exc, action) from exc


# --- capabilities ---------------------------------------------------------------------------


def capabilities(conn):
    """The host's parsed capabilities XML."""
    return _xml.parse(call(conn.getCapabilities, "read the host capabilities"), "capabilities")


def host_arch(caps) -> str | None:
    return _xml.text(caps, "host/cpu/arch")


def advertised_domain_types(caps, arch: str | None) -> list[str]:
    """Domain types libvirt offers for ``hvm`` guests of ``arch``."""
    types: list[str] = []
    for guest in caps.findall("guest"):
        if _xml.text(guest, "os_type") != "hvm":
            continue
        for arch_elem in guest.findall("arch"):
            if arch_elem.get("name") != arch:
                continue
            for dom in arch_elem.findall("domain"):
                if dom.get("type") and dom.get("type") not in types:
                    types.append(dom.get("type"))
    return types


def caps_cpu_features(caps) -> set[str]:
    cpu = caps.find("host/cpu")
    if cpu is None:
        return set()
    names = {f.get("name") for f in cpu.findall("feature") if f.get("name")}
    names.update(child.tag for child in cpu.findall("features/*") if isinstance(child.tag, str))
    return names


# --- the KVM verdict ------------------------------------------------------------------------


@dataclass
class KvmVerdict:
    """Whether KVM guests can run; ``reasons`` say why (or why not) in words."""

    usable: bool
    reasons: list[str] = field(default_factory=list)
    # Each check's outcome: True passed, False failed, None not applicable (e.g. remote host).
    checks: dict[str, bool | None] = field(default_factory=dict)


def kvm_verdict(conn, *, local_host: LocalHost | None = None, caps=None) -> KvmVerdict:
    """Judge whether KVM guests really work on the host of ``conn``.

    ``local_host`` is where local facts are read; by default the real machine when the
    connection is local, nothing otherwise. ``caps`` reuses already parsed capabilities.
    """
    if caps is None:
        caps = capabilities(conn)
    if local_host is None and is_this_machine(call(conn.getURI, "read the connection URI")):
        local_host = LocalHost()
    cpuinfo = local_host.cpuinfo() if local_host is not None else None
    dev_kvm = local_host.dev_kvm() if local_host is not None else None
    return judge_kvm(caps, cpuinfo=cpuinfo, dev_kvm=dev_kvm, local=local_host is not None)


def judge_kvm(caps, *, cpuinfo: str | None, dev_kvm: str | None, local: bool) -> KvmVerdict:
    """The verdict from its evidence: capabilities, and for a local host cpuinfo and /dev/kvm."""
    arch = host_arch(caps) or "unknown"
    checks: dict[str, bool | None] = {}
    passed: list[str] = []
    failed: list[str] = []

    def record(name: str, ok: bool | None, yes: str, no: str) -> None:
        checks[name] = ok
        if ok is True:
            passed.append(yes)
        elif ok is False:
            failed.append(no)

    record(
        "capabilities_kvm_domain",
        "kvm" in advertised_domain_types(caps, arch),
        f"libvirt advertises domain type 'kvm' for {arch}",
        f"libvirt does not advertise domain type 'kvm' for {arch} guests",
    )

    caps_flags: bool | None = None
    cpuinfo_virt: bool | None = None
    if arch in X86_ARCHES:
        features = caps_cpu_features(caps)
        caps_flags = any(flag in features for flag in HW_VIRT_FLAGS)
        if local:
            flags = cpuinfo_flags(cpuinfo)
            cpuinfo_virt = None if flags is None else any(f in flags for f in HW_VIRT_FLAGS)
    # What makes the host look KVM-capable although it is not: say it, it is the surprise.
    looks = [
        text
        for ok, text in (
            (dev_kvm == "char", "/dev/kvm exists"),
            (checks["capabilities_kvm_domain"], "libvirt offers domain type 'kvm'"),
        )
        if ok
    ]
    although = f": KVM guests would hang although {' and '.join(looks)}" if looks else ""
    record(
        "cpu_virt_flag_capabilities",
        caps_flags,
        "the host CPU in libvirt's capabilities has hardware virtualization (vmx/svm)",
        "the host CPU in libvirt's capabilities has no vmx/svm flag (no hardware "
        f"virtualization){although}",
    )
    record(
        "cpu_virt_flag_cpuinfo",
        cpuinfo_virt,
        "/proc/cpuinfo lists vmx/svm",
        "/proc/cpuinfo lists no vmx/svm flag: the kernel sees no hardware virtualization",
    )
    record(
        "dev_kvm",
        None if dev_kvm is None else dev_kvm == "char",
        "/dev/kvm is a character device",
        f"/dev/kvm is {dev_kvm}",
    )
    usable = not failed
    return KvmVerdict(usable=usable, reasons=passed if usable else failed, checks=checks)


def resolve_virt_type(
    conn, requested: str, *, local_host: LocalHost | None = None, verdict: KvmVerdict | None = None
) -> str:
    """The domain type to use for ``requested`` (``auto``, ``kvm`` or ``qemu``).

    ``auto`` is ``kvm`` when KVM is usable, else ``qemu``; ``kvm`` on a host where it is not
    usable raises ``KvmValidationError`` with the reasons; ``qemu`` is always possible.
    """
    if requested not in VIRT_TYPES:
        raise KvmValidationError(
            f"Unknown virt type {requested!r}: expected one of {', '.join(VIRT_TYPES)}"
        )
    if requested == "qemu":
        return "qemu"
    if verdict is None:
        verdict = kvm_verdict(conn, local_host=local_host)
    if verdict.usable:
        return "kvm"
    if requested == "auto":
        return "qemu"
    raise KvmValidationError(
        "Virt type 'kvm' was requested but KVM is not usable on this host: "
        + "; ".join(verdict.reasons)
        + ". Use virt type 'qemu' (or 'auto').",
        kvm_reasons=verdict.reasons,
        kvm_checks=verdict.checks,
    )
