# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""What a libvirt host offers: the read-only view of ``virtops.kvm.host_info``.

``host_summary(conn)`` gathers it from small section functions (versions, CPU, memory,
hugepages, machine types, firmware, cache allocation, pools, networks, guests, CPU load).
Whether KVM works and which domain type to use are in ``_host_kvm``, which
``virtops.kvm.domain`` imports without this file.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from . import _xml
from ._cpuset import parse_cpuset
from ._errors import KvmValidationError, from_libvirt
from ._host_kvm import (
    X86_ARCHES,
    LocalHost,
    Unsupported,
    call,
    capabilities,
    host_arch,
    kvm_verdict,
    resolve_virt_type,
)
from ._libvirt import DOMAIN_STATES, is_this_machine, libvirt, pool_state_name, state_name
from ._units import unit_factor

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
    "load",
)
# how long the host's CPU times are sampled for the load section
LOAD_SAMPLE_SECONDS = 0.5

# --- host summary sections ------------------------------------------------------------------


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
    return int(value) * unit_factor(unit or "B")


def cpu_list(text: str | None) -> list[int]:
    """``0-3,^2,8`` -> ``[0, 1, 3, 8]`` (the one cpuset parser, ``parse_cpuset``)."""
    return sorted(parse_cpuset(text, "CPU list")) if text and text.strip() else []


def versions(conn) -> dict[str, Any]:
    return {
        "libvirt_library": version_string(libvirt.getVersion()),
        "libvirt_daemon": version_string(call(conn.getLibVersion, "read libvirt's version")),
        "hypervisor_type": call(conn.getType, "read the hypervisor type"),
        "hypervisor": version_string(call(conn.getVersion, "read the hypervisor version")),
    }


def identity(conn, caps) -> dict[str, Any]:
    return {
        "hostname": call(conn.getHostname, "read the host name"),
        "uuid": _xml.text(caps, "host/uuid"),
        "uri": call(conn.getURI, "read the connection URI"),
    }


def cpu_info(conn, caps) -> dict[str, Any]:
    info = call(conn.getInfo, "read the node information")
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
            free = call(
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
        stats = call(
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
    info = call(conn.getInfo, "read the node information")
    return {
        "total_bytes": info[1] * 1024**2,
        "free_bytes": call(conn.getFreeMemory, "read the free memory"),
        "buffers_bytes": None,
        "cached_bytes": None,
    }


def cpu_load(
    conn, local_host: LocalHost | None = None, sample: float = LOAD_SAMPLE_SECONDS
) -> dict[str, Any]:
    """How busy the host's CPUs are: libvirt's CPU times of all CPUs read twice, ``sample``
    seconds apart, as percentages of the time between; the load averages on a local host."""

    def times() -> dict[str, int]:
        return call(
            conn.getCPUStats,
            "read the host CPU times",
            libvirt.VIR_NODE_CPU_STATS_ALL_CPUS,
            0,
            optional=True,
        )

    first = times()
    time.sleep(sample)
    second = times()
    delta = {key: max(second[key] - first.get(key, 0), 0) for key in second}
    total = sum(delta.values())

    def percent(key: str) -> float | None:
        return round(100.0 * delta[key] / total, 1) if total and key in delta else None

    idle = percent("idle")
    return {
        "sample_seconds": sample,
        "busy_percent": None if idle is None else round(100.0 - idle, 1),
        "user_percent": percent("user"),
        "kernel_percent": percent("kernel"),
        "iowait_percent": percent("iowait"),
        "idle_percent": idle,
        "loadavg": local_host.loadavg() if local_host is not None else None,
    }


def hugepage_pools(conn, caps, local_host: LocalHost | None = None) -> list[dict[str, Any]]:
    """Hugepage pools by size: pages in the pool and free, in total and per NUMA cell.

    libvirt gives the sizes (capabilities), pool sizes per cell (capabilities topology) and
    free pages per cell (``getFreePages``); on a local host sysfs, read now, is preferred.
    """
    sizes = sorted(
        {
            int(p.get("size")) * unit_factor(p.get("unit", "KiB")) // 1024
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
            size = int(pages.get("size")) * unit_factor(pages.get("unit", "KiB")) // 1024
            if size in totals and pages.text:
                totals[size][int(cell.get("id"))] = int(pages.text)
    free: dict[int, dict[int, int]] = {}
    if huge and cell_ids:
        try:
            free = call(
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
    text = call(
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
    for pool in call(conn.listAllStoragePools, "list storage pools", 0):
        try:
            state, capacity, allocation, available = pool.info()
            xml = _xml.parse(pool.XMLDesc(0), "storage pool XML")
            pools.append(
                {
                    "name": pool.name(),
                    "uuid": pool.UUIDString(),
                    "type": xml.get("type"),
                    "state": pool_state_name(state),
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
    for net in call(conn.listAllNetworks, "list networks", 0):
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
        stats = call(
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
        counts[state] = len(call(conn.listAllDomains, f"list {state} guests", flag))
    active = len(
        call(conn.listAllDomains, "list active guests", libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    )
    total = sum(counts.values())
    return {"total": total, "active": active, "inactive": total - active, "by_state": counts}


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
    if local_host is None and is_this_machine(call(conn.getURI, "read the connection URI")):
        local_host = LocalHost()
    arch = host_arch(caps) or call(conn.getInfo, "read the node information")[0]
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
        "load": lambda: cpu_load(conn, local_host),
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
