# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""What a libvirt host offers, and whether KVM really works on it.

``kvm_verdict(conn)`` judges KVM the way users need it: libvirt advertising domain type
``kvm`` (it does whenever ``/dev/kvm`` exists) is not enough, the CPU must also have
hardware virtualization (vmx/svm) or KVM guests hang. ``resolve_virt_type(conn, requested)``
turns ``auto``/``kvm``/``qemu`` into the domain type to use. ``host_summary(conn)`` gathers
the read-only view of ``virtops.kvm.host_info`` from small section functions.

Facts read from the local machine (``/proc/cpuinfo``, ``/dev/kvm``, sysfs) go through
``LocalHost`` so tests can point them at other files; they are only read when the
connection is local (a URI without a host part, such as ``qemu:///system``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _xml
from ._domain_model import parse_cpuset
from ._errors import KvmValidationError, from_libvirt
from ._libvirt import DOMAIN_STATES, is_this_machine, libvirt, state_name

VIRT_TYPES = ("auto", "kvm", "qemu")
X86_ARCHES = ("x86_64", "i686", "i386")
HW_VIRT_FLAGS = ("vmx", "svm")

SECTIONS = (
    "versions",
    "cpu",
    "memory",
    "hugepages",
    "kvm",
    "machines",
    "firmware",
    "resctrl",
    "storage_pools",
    "networks",
    "guests",
)

POOL_STATES = ("inactive", "building", "running", "degraded", "inaccessible")

_UNIT_FACTORS = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}


# --- the local machine ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalHost:
    """Where facts of the local machine are read; tests point these at other files."""

    cpuinfo_path: str = "/proc/cpuinfo"
    dev_kvm_path: str = "/dev/kvm"
    hugepages_path: str = "/sys/kernel/mm/hugepages"
    node_path: str = "/sys/devices/system/node"
    resctrl_path: str = "/sys/fs/resctrl"

    def cpuinfo(self) -> str | None:
        return _read(self.cpuinfo_path)

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


# --- capabilities ---------------------------------------------------------------------------


def capabilities(conn):
    """The host's parsed capabilities XML."""
    return _xml.parse(_call(conn.getCapabilities, "read the host capabilities"), "capabilities")


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
    if local_host is None and is_this_machine(_call(conn.getURI, "read the connection URI")):
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


# --- host summary sections ------------------------------------------------------------------


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


def _call(func: Callable[..., Any], action: str, *args: Any, optional: bool = False) -> Any:
    """Call libvirt; errors become ``KvmLibvirtError`` (``Unsupported`` when ``optional``)."""
    try:
        return func(*args)
    except libvirt.libvirtError as exc:
        if optional and exc.get_error_code() in _unsupported_codes():
            raise Unsupported(f"cannot {action}: {exc.get_error_message()}") from exc
        raise from_libvirt(exc, action) from exc


def _gone(exc: Exception) -> bool:
    """The object vanished between listing it and reading it (another client removed it)."""
    names = ("VIR_ERR_NO_STORAGE_POOL", "VIR_ERR_NO_NETWORK", "VIR_ERR_NO_DOMAIN")
    codes = {getattr(libvirt, n) for n in names if hasattr(libvirt, n)}
    return isinstance(exc, libvirt.libvirtError) and exc.get_error_code() in codes


def version_string(number: int) -> str:
    """libvirt's packed version (major * 1,000,000 + minor * 1,000 + release) as ``9.0.0``."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def to_bytes(value: str | int | None, unit: str | None = "KiB") -> int | None:
    if value is None or value == "":
        return None
    return int(value) * _UNIT_FACTORS[(unit or "b").lower()]


def cpu_list(text: str | None) -> list[int]:
    """``0-3,^2,8`` -> ``[0, 1, 3, 8]`` (the one cpuset parser, ``parse_cpuset``)."""
    return sorted(parse_cpuset(text, "CPU list")) if text and text.strip() else []


def versions(conn) -> dict[str, Any]:
    return {
        "libvirt_library": version_string(libvirt.getVersion()),
        "libvirt_daemon": version_string(_call(conn.getLibVersion, "read libvirt's version")),
        "hypervisor_type": _call(conn.getType, "read the hypervisor type"),
        "hypervisor": version_string(_call(conn.getVersion, "read the hypervisor version")),
    }


def identity(conn, caps) -> dict[str, Any]:
    return {
        "hostname": _call(conn.getHostname, "read the host name"),
        "uuid": _xml.text(caps, "host/uuid"),
        "uri": _call(conn.getURI, "read the connection URI"),
    }


def cpu_info(conn, caps) -> dict[str, Any]:
    info = _call(conn.getInfo, "read the node information")
    topo = caps.find("host/cpu/topology")
    topology = {
        key: int(topo.get(key)) if topo is not None and topo.get(key) else None
        for key in ("sockets", "dies", "cores", "threads")
    }
    return {
        "arch": host_arch(caps) or info[0],
        "model": _xml.text(caps, "host/cpu/model"),
        "vendor": _xml.text(caps, "host/cpu/vendor"),
        "count": info[2],
        "mhz": info[3],
        "topology": topology,
        "numa_cells": numa_cells(conn, caps),
    }


def numa_cells(conn, caps) -> list[dict[str, Any]]:
    cells = caps.findall("host/topology/cells/cell")
    free: list[int] = []
    if cells:
        try:
            free = _call(
                conn.getCellsFreeMemory, "read free memory per cell", 0, len(cells), optional=True
            )
        except Unsupported:
            free = []
    result = []
    for index, cell in enumerate(cells):
        mem = cell.find("memory")
        result.append(
            {
                "id": int(cell.get("id")),
                "cpus": [int(c.get("id")) for c in cell.findall("cpus/cpu")],
                "memory_bytes": to_bytes(mem.text, mem.get("unit")) if mem is not None else None,
                "free_memory_bytes": free[index] if index < len(free) else None,
            }
        )
    return result


def memory_info(conn) -> dict[str, Any]:
    """Total and free memory of the whole host (bytes)."""
    try:
        stats = _call(
            conn.getMemoryStats,
            "read the host memory statistics",
            libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS,
            optional=True,
        )
    except Unsupported:
        stats = None
    if stats and "total" in stats:
        return {
            "total_bytes": stats["total"] * 1024,
            "free_bytes": stats.get("free", 0) * 1024,
            "buffers_bytes": stats["buffers"] * 1024 if "buffers" in stats else None,
            "cached_bytes": stats["cached"] * 1024 if "cached" in stats else None,
        }
    info = _call(conn.getInfo, "read the node information")
    return {
        "total_bytes": info[1] * 1024**2,
        "free_bytes": _call(conn.getFreeMemory, "read the free memory"),
        "buffers_bytes": None,
        "cached_bytes": None,
    }


def hugepage_pools(conn, caps, local_host: LocalHost | None = None) -> list[dict[str, Any]]:
    """Hugepage pools by size: pages in the pool and free, in total and per NUMA cell.

    libvirt gives the sizes (capabilities), pool sizes per cell (capabilities topology) and
    free pages per cell (``getFreePages``); on a local host sysfs, read now, is preferred.
    """
    sizes = sorted(
        {
            int(p.get("size")) * _UNIT_FACTORS[p.get("unit", "KiB").lower()] // 1024
            for p in caps.findall("host/cpu/pages")
        }
    )
    base = sizes[0] if sizes else 4
    huge = [s for s in sizes if s != base]
    cells = caps.findall("host/topology/cells/cell")
    cell_ids = [int(c.get("id")) for c in cells]
    totals: dict[int, dict[int, int]] = {s: {} for s in huge}
    for cell in cells:
        for pages in cell.findall("pages"):
            size = int(pages.get("size")) * _UNIT_FACTORS[pages.get("unit", "KiB").lower()] // 1024
            if size in totals and pages.text:
                totals[size][int(cell.get("id"))] = int(pages.text)
    free: dict[int, dict[int, int]] = {}
    if huge and cell_ids:
        try:
            free = _call(
                conn.getFreePages,
                "read free hugepages",
                huge,
                min(cell_ids),
                len(cell_ids),
                optional=True,
            )
        except Unsupported:
            free = {}
    sysfs = local_host.hugepages() if local_host is not None else {}
    pools = []
    for size in sorted(set(huge) | set(sysfs)):
        if size in sysfs:
            found = sysfs[size]
            per_cell = [
                {"id": cid, "total": c["total"], "free": c["free"]}
                for cid, c in sorted(found["cells"].items())
            ]
            total, free_pages, source = found["total"], found["free"], "sysfs"
        else:
            per_cell = [
                {
                    "id": cid,
                    "total": totals[size].get(cid),
                    "free": (free.get(cid) or {}).get(size),
                }
                for cid in cell_ids
            ]
            total = _sum(c["total"] for c in per_cell)
            free_pages = _sum(c["free"] for c in per_cell)
            source = "libvirt"
        pools.append(
            {
                "size_kib": size,
                "size_bytes": size * 1024,
                "total": total,
                "free": free_pages,
                "cells": per_cell,
                "source": source,
            }
        )
    return pools


def _sum(values) -> int | None:
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return sum(values)


def domain_capabilities(conn, arch: str, virt_type: str, machine: str | None = None):
    text = _call(
        conn.getDomainCapabilities,
        f"read the domain capabilities of {virt_type} {arch} guests",
        None,
        arch,
        machine,
        virt_type,
        0,
        optional=True,
    )
    return _xml.parse(text, "domain capabilities")


def machine_types(conn, caps, arch: str, virt_type: str) -> dict[str, Any]:
    """Machine types of ``arch`` for domain type ``virt_type``, and libvirt's default."""
    machines: list[dict[str, Any]] = []
    for guest in caps.findall("guest"):
        if _xml.text(guest, "os_type") != "hvm":
            continue
        arch_elem = next((a for a in guest.findall("arch") if a.get("name") == arch), None)
        if arch_elem is None:
            continue
        dom = next((d for d in arch_elem.findall("domain") if d.get("type") == virt_type), None)
        # A domain type lists its own machines only where they differ from the arch's.
        elems = dom.findall("machine") if dom is not None and dom.findall("machine") else None
        for machine in elems if elems is not None else arch_elem.findall("machine"):
            machines.append(
                {
                    "name": machine.text.strip(),
                    "canonical": machine.get("canonical"),
                    "max_cpus": int(machine.get("maxCpus")) if machine.get("maxCpus") else None,
                    "deprecated": machine.get("deprecated") == "yes",
                }
            )
    machines.sort(key=lambda m: m["name"])
    domcaps = domain_capabilities(conn, arch, virt_type)
    vcpu = domcaps.find("vcpu")
    return {
        "arch": arch,
        "domain_type": virt_type,
        "emulator": _xml.text(domcaps, "path"),
        "default": _xml.text(domcaps, "machine"),
        "max_vcpus": int(vcpu.get("max")) if vcpu is not None and vcpu.get("max") else None,
        "types": machines,
    }


def firmware_info(conn, arch: str, virt_type: str, machines: list[str]) -> dict[str, Any]:
    """UEFI and secure boot as libvirt's domain capabilities offer them.

    Secure boot needs SMM, which on x86 only q35 has: each machine in ``machines`` (the
    default when empty) is asked.
    """
    uefi = False
    secure_machines: list[str] = []
    loaders: list[str] = []
    firmware: list[str] = []
    checked: list[str] = []
    for machine in machines or [None]:
        domcaps = domain_capabilities(conn, arch, virt_type, machine)
        name = _xml.text(domcaps, "machine") or machine
        checked.append(name)
        os_elem = domcaps.find("os")
        if os_elem is None or os_elem.get("supported") != "yes":
            continue
        values = [v.text for v in os_elem.findall("enum[@name='firmware']/value") if v.text]
        loader = os_elem.find("loader")
        paths = []
        secure = []
        if loader is not None and loader.get("supported") == "yes":
            paths = [v.text for v in loader.findall("value") if v.text]
            secure = [v.text for v in loader.findall("enum[@name='secure']/value")]
        firmware.extend(v for v in values if v not in firmware)
        loaders.extend(p for p in paths if p not in loaders)
        if "efi" in values or paths:
            uefi = True
            if "yes" in secure:
                secure_machines.append(name)
    return {
        "uefi": uefi,
        "secure_boot": bool(secure_machines),
        "secure_boot_machines": secure_machines,
        "firmware_types": firmware,
        "loaders": loaders,
        "machines_checked": checked,
    }


def firmware_machines(arch: str, machine_list: list[dict[str, Any]]) -> list[str]:
    """The machines worth asking about firmware: the default, and q35 on x86."""
    names = [None]
    if arch in X86_ARCHES and any(m["name"] == "q35" for m in machine_list):
        names.append("q35")
    return names


def resctrl_info(caps, local_host: LocalHost | None = None) -> dict[str, Any]:
    """Cache allocation (resctrl): usable by ``<cachetune>`` when a cache bank has controls."""
    banks = []
    for bank in caps.findall("host/cache/bank"):
        banks.append(
            {
                "id": int(bank.get("id")),
                "level": int(bank.get("level")),
                "type": bank.get("type"),
                "size_bytes": to_bytes(bank.get("size"), bank.get("unit")),
                "cpus": cpu_list(bank.get("cpus")),
                "allocation": bool(bank.findall("control")),
            }
        )
    allocation = any(b["allocation"] for b in banks)
    mounted = local_host.resctrl_mounted() if local_host is not None else None
    if allocation:
        reason = "libvirt reports cache allocation controls"
    elif mounted:
        reason = "resctrl is mounted but libvirt reports no cache allocation controls"
    elif mounted is False:
        reason = f"resctrl is not mounted ({local_host.resctrl_path}/info missing)"
    else:
        reason = "libvirt reports no cache allocation controls"
    return {
        "available": allocation,
        "reason": reason,
        "mounted": mounted,
        "memory_bandwidth": caps.find("host/memory_bandwidth") is not None,
        "cache_banks": banks,
    }


def storage_pools(conn) -> list[dict[str, Any]]:
    pools = []
    for pool in _call(conn.listAllStoragePools, "list storage pools", 0):
        try:
            state, capacity, allocation, available = pool.info()
            xml = _xml.parse(pool.XMLDesc(0), "storage pool XML")
            pools.append(
                {
                    "name": pool.name(),
                    "uuid": pool.UUIDString(),
                    "type": xml.get("type"),
                    "state": _name(POOL_STATES, state),
                    "active": bool(pool.isActive()),
                    "autostart": bool(pool.autostart()),
                    "persistent": bool(pool.isPersistent()),
                    "capacity_bytes": capacity,
                    "allocation_bytes": allocation,
                    "available_bytes": available,
                    "path": _xml.text(xml, "target/path"),
                }
            )
        except libvirt.libvirtError as exc:
            if not _gone(exc):
                raise from_libvirt(exc, f"read storage pool {pool.name()}") from exc
    return sorted(pools, key=lambda p: p["name"])


def networks(conn) -> list[dict[str, Any]]:
    nets = []
    for net in _call(conn.listAllNetworks, "list networks", 0):
        try:
            xml = _xml.parse(net.XMLDesc(0), "network XML")
            active = bool(net.isActive())
            nets.append(
                {
                    "name": net.name(),
                    "uuid": net.UUIDString(),
                    "state": "active" if active else "inactive",
                    "active": active,
                    "autostart": bool(net.autostart()),
                    "persistent": bool(net.isPersistent()),
                    "bridge": _xml.attr(xml, "bridge", "name"),
                    "forward_mode": _xml.attr(xml, "forward", "mode")
                    or ("nat" if xml.find("forward") is not None else "isolated"),
                }
            )
        except libvirt.libvirtError as exc:
            if not _gone(exc):
                raise from_libvirt(exc, f"read network {net.name()}") from exc
    return sorted(nets, key=lambda n: n["name"])


def guest_counts(conn) -> dict[str, Any]:
    """Guests by state from ONE bulk call (the ``state`` group of ``getAllDomainStats``).

    Drivers without bulk stats get a fixed number of flag-filtered listings instead of one
    round trip per guest.
    """
    counts = dict.fromkeys(DOMAIN_STATES, 0)
    try:
        stats = _call(
            conn.getAllDomainStats,
            "read guest states",
            libvirt.VIR_DOMAIN_STATS_STATE,
            0,
            optional=True,
        )
    except Unsupported:
        return _guest_counts_by_listing(conn)
    for _dom, values in stats:
        counts[state_name(values.get("state.state", 0))] += 1
    active = sum(counts[s] for s in DOMAIN_STATES if s not in ("shutoff", "nostate"))
    return {
        "total": len(stats),
        "active": active,
        "inactive": len(stats) - active,
        "by_state": counts,
    }


def _guest_counts_by_listing(conn) -> dict[str, Any]:
    counts = dict.fromkeys(DOMAIN_STATES, 0)
    flags = {
        "running": libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING,
        "paused": libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED,
        "shutoff": libvirt.VIR_CONNECT_LIST_DOMAINS_SHUTOFF,
        "nostate": libvirt.VIR_CONNECT_LIST_DOMAINS_OTHER,
    }
    for state, flag in flags.items():
        counts[state] = len(_call(conn.listAllDomains, f"list {state} guests", flag))
    active = len(
        _call(conn.listAllDomains, "list active guests", libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    )
    total = sum(counts.values())
    return {"total": total, "active": active, "inactive": total - active, "by_state": counts}


def _name(names: tuple[str, ...], index: int) -> str:
    return names[index] if 0 <= index < len(names) else f"unknown({index})"


# --- everything -----------------------------------------------------------------------------


def host_summary(
    conn, *, gather: list[str] | None = None, local_host: LocalHost | None = None
) -> dict[str, Any]:
    """The host as ``virtops.kvm.host_info`` returns it: ``gather`` names the sections.

    Sections the connection's driver cannot provide are left out and named, with the
    reason, in ``unavailable``.
    """
    wanted = list(SECTIONS) if not gather or "all" in gather else list(gather)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise KvmValidationError(f"Unknown sections {unknown}: choose from {list(SECTIONS)}")
    caps = capabilities(conn)
    if local_host is None and is_this_machine(_call(conn.getURI, "read the connection URI")):
        local_host = LocalHost()
    arch = host_arch(caps) or _call(conn.getInfo, "read the node information")[0]
    summary: dict[str, Any] = identity(conn, caps)
    summary["local"] = local_host is not None
    verdict = kvm_verdict(conn, local_host=local_host, caps=caps)
    virt_type = resolve_virt_type(conn, "auto", verdict=verdict)
    if "kvm" in wanted:
        summary.update(
            kvm_usable=verdict.usable,
            kvm_reasons=verdict.reasons,
            kvm_checks=verdict.checks,
            recommended_virt_type=virt_type,
        )

    machines: dict[str, Any] = {}

    def machine_list() -> dict[str, Any]:
        if "value" not in machines:
            machines["value"] = machine_types(conn, caps, arch, virt_type)
        return machines["value"]

    builders: dict[str, Callable[[], Any]] = {
        "versions": lambda: versions(conn),
        "cpu": lambda: cpu_info(conn, caps),
        "memory": lambda: memory_info(conn),
        "hugepages": lambda: hugepage_pools(conn, caps, local_host),
        "machines": machine_list,
        "firmware": lambda: firmware_info(
            conn, arch, virt_type, firmware_machines(arch, machine_list()["types"])
        ),
        "resctrl": lambda: resctrl_info(caps, local_host),
        "storage_pools": lambda: storage_pools(conn),
        "networks": lambda: networks(conn),
        "guests": lambda: guest_counts(conn),
    }
    unavailable: dict[str, str] = {}
    for section in wanted:
        if section == "kvm":
            continue
        try:
            summary[section] = builders[section]()
        except Unsupported as exc:
            unavailable[section] = str(exc)
    summary["unavailable"] = unavailable
    return summary
