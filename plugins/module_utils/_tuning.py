# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The pinning plan of ``virtops.kvm.tuning_plan``: which host CPUs, NUMA cells, huge pages,
cache and I/O limits each chosen guest gets, as options of ``virtops.kvm.domain``.

``plan()`` is pure (host and guests as data in, plan out); ``read_host`` and ``read_guests``
gather that data through libvirt with the same code as ``virtops.kvm.host_info``.

Rules:

- Host CPUs in ``reserved`` are the host's: no guest vCPU is pinned there.
- A ``dedicated`` guest gets one host CPU per vCPU (up to its maximum vCPUs) that no other
  guest's vCPU may use; it is marked with the tag ``dedicated_tag`` so later plans know. A
  plan that would use CPUs that a marked guest outside the plan holds is refused, as is one
  where two guests of the plan ask for the same CPUs.
- A ``shared`` guest's vCPUs float over the shared pool: host CPUs that are neither reserved
  nor dedicated.
- A dedicated guest keeps the CPUs it already has when they are still valid, so a second
  run plans the same; otherwise it gets the lowest free CPUs of the NUMA cell with the most
  free CPUs, spanning cells only when no cell has enough.
- Memory is bound (``numatune``) to the cells of the guest's CPUs; huge pages, cache
  allocation and I/O limits are added when asked and checked against what the host has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _xml
from ._cpuset import format_cpuset, parse_cpuset
from ._domain_devices import IOTUNE_KEYS, Disk, read_disks
from ._domain_model import FIELDS_BY_NAME
from ._errors import KvmValidationError, from_libvirt, is_error
from ._host import host_summary
from ._host_kvm import LocalHost
from ._libvirt import is_this_machine, libvirt
from ._units import parse_size

POLICIES = ("dedicated", "shared")
EMULATOR_PLACEMENTS = ("reserved", "shared", "vcpus")
DEFAULT_DEDICATED_TAG = "cpu-dedicated"


# --------------------------------------------------------------------------- data in


@dataclass
class HostView:
    """What the plan needs of the host (from host_info's cpu, hugepages and resctrl)."""

    cells: dict[int, frozenset]  # cell id -> host CPUs
    cell_memory_mib: dict[int, int | None] = field(default_factory=dict)
    hugepages: dict[int, dict[int, int | None]] = field(default_factory=dict)  # KiB -> cell -> free
    resctrl: dict[str, Any] = field(default_factory=dict)

    @property
    def cpus(self) -> frozenset:
        return frozenset().union(*self.cells.values()) if self.cells else frozenset()

    def cells_of(self, cpus) -> list[int]:
        return sorted(cid for cid, members in self.cells.items() if members & set(cpus))

    @classmethod
    def from_host_info(cls, host: dict[str, Any]) -> HostView:
        cpu = host.get("cpu") or {}
        cells = {c["id"]: frozenset(c["cpus"]) for c in cpu.get("numa_cells") or [] if c["cpus"]}
        if not cells and cpu.get("count"):
            cells = {0: frozenset(range(cpu["count"]))}
        memory = {
            c["id"]: (c["memory_bytes"] // 2**20 if c.get("memory_bytes") else None)
            for c in cpu.get("numa_cells") or []
        }
        pages = {
            p["size_kib"]: {c["id"]: c.get("free") for c in p.get("cells") or []}
            for p in host.get("hugepages") or []
        }
        return cls(cells, memory, pages, host.get("resctrl") or {})


@dataclass
class GuestView:
    """A guest as the plan sees it (its inactive definition, and the live one if running)."""

    name: str
    active: bool = False
    tags: list[str] = field(default_factory=list)
    max_vcpus: int = 1
    memory_mib: int = 0
    pins: dict[int, frozenset] = field(default_factory=dict)  # inactive definition
    live_pins: dict[int, frozenset] = field(default_factory=dict)
    hugepages: dict[str, Any] = field(default_factory=dict)
    disks: list[Disk] = field(default_factory=list)

    @classmethod
    def from_xml(cls, name: str, inactive, live=None) -> GuestView:
        def pins(root) -> dict[int, frozenset]:
            read = FIELDS_BY_NAME["tuning.vcpu_pins"].read(root)
            return {vcpu: parse_cpuset(cpuset) for vcpu, cpuset in read.items()}

        return cls(
            name=name,
            active=live is not None,
            tags=list(FIELDS_BY_NAME["tags"].read(inactive) or []),
            max_vcpus=FIELDS_BY_NAME["max_vcpus"].read(inactive) or 1,
            memory_mib=FIELDS_BY_NAME["max_memory"].read(inactive) or 0,
            pins=pins(inactive),
            live_pins=pins(live) if live is not None else {},
            hugepages=FIELDS_BY_NAME["tuning.hugepages"].read(inactive),
            disks=read_disks(inactive),
        )

    def pinned_cpus(self) -> frozenset:
        return frozenset().union(*self.pins.values(), *self.live_pins.values())


@dataclass
class Request:
    """What the user asks for one guest (one entry of the module's ``guests`` option)."""

    name: str
    cpu_policy: str = "dedicated"
    cpus: frozenset | None = None
    cell: int | None = None
    numa: bool = True
    numa_mode: str = "strict"
    hugepages: bool | None = None
    hugepage_size_kib: int | None = None
    iothreads: int | None = None
    cachetune: dict[str, Any] | None = None
    iotune: dict[str, int] | None = None
    iotune_disks: list[str] | None = None

    @classmethod
    def from_params(cls, spec: dict[str, Any], index: int) -> Request:
        where = f"guests[{index}] ({spec.get('name')})"
        policy = spec.get("cpu_policy") or "dedicated"
        if policy not in POLICIES:
            raise KvmValidationError(f"{where}: cpu_policy must be one of {list(POLICIES)}")
        cpus = None
        if spec.get("cpus") not in (None, ""):
            cpus = parse_cpuset(spec["cpus"], f"{where}: cpus")
        size = None
        if spec.get("hugepage_size") not in (None, ""):
            if not spec.get("hugepages"):
                raise KvmValidationError(f"{where}: hugepage_size needs hugepages true")
            size = parse_size(spec["hugepage_size"], what=f"{where}: hugepage_size") // 1024
        iotune = spec.get("iotune")
        if iotune is not None:
            unknown = sorted(set(iotune) - set(IOTUNE_KEYS))
            if unknown:
                raise KvmValidationError(
                    f"{where}: unknown iotune keys {unknown}; use {list(IOTUNE_KEYS)}"
                )
            iotune = {k: int(v) for k, v in iotune.items() if v is not None}
            if any(v < 0 for v in iotune.values()):
                raise KvmValidationError(f"{where}: iotune values must not be negative")
        cachetune = spec.get("cachetune")
        if cachetune is not None:
            if cachetune.get("size") in (None, ""):
                raise KvmValidationError(f"{where}: cachetune needs a size")
            cachetune = {
                "size_kib": parse_size(
                    cachetune["size"], what=f"{where}: cachetune.size", default_unit="KiB"
                )
                // 1024,
                "level": int(cachetune.get("level") or 3),
                "type": cachetune.get("type") or "both",
            }
        if spec.get("iothreads") is not None and spec["iothreads"] < 0:
            raise KvmValidationError(f"{where}: iothreads must not be negative")
        return cls(
            name=spec["name"],
            cpu_policy=policy,
            cpus=cpus,
            cell=spec.get("cell"),
            numa=spec.get("numa") is not False,
            numa_mode=spec.get("numa_mode") or "strict",
            hugepages=spec.get("hugepages"),
            hugepage_size_kib=size,
            iothreads=spec.get("iothreads"),
            cachetune=cachetune,
            iotune=iotune,
            iotune_disks=spec.get("iotune_disks"),
        )


# --------------------------------------------------------------------------- the plan


@dataclass
class Settings:
    reserved: frozenset = frozenset()
    emulator_placement: str | None = None  # None: reserved if any, else shared
    dedicated_tag: str = DEFAULT_DEDICATED_TAG
    cachetune_required: bool = False


def _fmt(cpus) -> str:
    return format_cpuset(cpus) if cpus else ""


class Planner:
    def __init__(self, host: HostView, guests: dict[str, GuestView], settings: Settings):
        self.host = host
        self.guests = guests
        self.settings = settings
        self.messages: list[str] = []
        self.taken: dict[int, str] = {}  # host CPU -> guest holding it dedicated

    # -- checks of the input -----------------------------------------------------------
    def _check(self, requests: list[Request]) -> None:
        names = [r.name for r in requests]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise KvmValidationError(f"guests: {twice} given more than once")
        missing = [n for n in names if n not in self.guests]
        if missing:
            raise KvmValidationError(f"guests: no such guest {missing}")
        host_cpus = self.host.cpus
        outside = self.settings.reserved - host_cpus
        if outside:
            raise KvmValidationError(
                f"host_reserved_cpus: CPUs {_fmt(outside)} are not on this host "
                f"(it has {_fmt(host_cpus)})"
            )
        if not host_cpus - self.settings.reserved:
            raise KvmValidationError(
                f"host_reserved_cpus {_fmt(self.settings.reserved)} leaves no CPU for guests"
            )
        for req in requests:
            if req.cell is not None and req.cell not in self.host.cells:
                raise KvmValidationError(
                    f"{req.name}: NUMA cell {req.cell} does not exist "
                    f"(cells: {sorted(self.host.cells)})"
                )
            if req.cpus is not None:
                bad = req.cpus - host_cpus
                if bad:
                    raise KvmValidationError(
                        f"{req.name}: CPUs {_fmt(bad)} are not on this host "
                        f"(it has {_fmt(host_cpus)})"
                    )
                if req.cpus & self.settings.reserved:
                    raise KvmValidationError(
                        f"{req.name}: CPUs {_fmt(req.cpus & self.settings.reserved)} are "
                        "reserved for the host (host_reserved_cpus)"
                    )

    def _others_dedicated(self, planned: set[str]) -> None:
        """CPUs held by dedicated guests outside the plan (they carry the tag)."""
        tag = self.settings.dedicated_tag
        for name, guest in sorted(self.guests.items()):
            if name in planned or tag not in guest.tags:
                continue
            for cpu in guest.pinned_cpus():
                self.taken.setdefault(cpu, name)

    def _conflict(self, cpus, who: str) -> None:
        clash: dict[str, set[int]] = {}
        for cpu in cpus:
            holder = self.taken.get(cpu)
            if holder is not None and holder != who:
                clash.setdefault(holder, set()).add(cpu)
        if clash:
            detail = "; ".join(f"{g} holds {_fmt(c)}" for g, c in sorted(clash.items()))
            raise KvmValidationError(
                f"{who}: the plan overlaps CPUs dedicated to other guests ({detail}); "
                "refusing it. Choose other CPUs or release them first."
            )

    def _take(self, cpus, who: str) -> None:
        self._conflict(cpus, who)
        for cpu in cpus:
            self.taken[cpu] = who

    def _free(self, cell: int | None = None) -> frozenset:
        pool = self.host.cells[cell] if cell is not None else self.host.cpus
        return frozenset(pool - self.settings.reserved - set(self.taken))

    # -- dedicated CPUs ----------------------------------------------------------------
    def _keep_current(self, req: Request, guest: GuestView) -> frozenset | None:
        """The guest's present 1:1 pinning, if it still fits the request."""
        if set(guest.pins) != set(range(guest.max_vcpus)):
            return None
        singles = [guest.pins[v] for v in range(guest.max_vcpus)]
        if any(len(s) != 1 for s in singles):
            return None
        cpus = frozenset().union(*singles)
        if len(cpus) != guest.max_vcpus or not cpus <= self._free(req.cell):
            return None
        if req.numa and req.cell is None and len(self.host.cells_of(cpus)) > 1:
            fits_one = any(len(self._free(c)) >= guest.max_vcpus for c in self.host.cells)
            if fits_one:
                return None  # one cell can hold it now: move it there
        return cpus

    def _allocate(self, req: Request, guest: GuestView) -> frozenset:
        need = guest.max_vcpus
        cells = [req.cell] if req.cell is not None else sorted(self.host.cells)
        free = {c: sorted(self._free(c)) for c in cells}
        fitting = [c for c in cells if len(free[c]) >= need]
        if fitting:
            best = max(fitting, key=lambda c: (len(free[c]), -c))
            return frozenset(free[best][:need])
        total = sum(len(v) for v in free.values())
        if total < need or req.cell is not None:
            where = f"NUMA cell {req.cell}" if req.cell is not None else "the host"
            raise KvmValidationError(
                f"{req.name}: needs {need} dedicated CPUs (one per vCPU, maximum vCPUs "
                f"{need}) but {where} has only {total} free "
                f"({_fmt(frozenset().union(*map(frozenset, free.values())))}; reserved "
                f"{_fmt(self.settings.reserved) or 'none'}, dedicated "
                f"{_fmt(frozenset(self.taken)) or 'none'})"
            )
        chosen: list[int] = []
        for cell in sorted(cells, key=lambda c: (-len(free[c]), c)):
            chosen += free[cell][: need - len(chosen)]
            if len(chosen) == need:
                break
        self.messages.append(
            f"{req.name}: no NUMA cell has {need} free CPUs; its vCPUs span cells "
            f"{self.host.cells_of(chosen)}"
        )
        return frozenset(chosen)

    # -- the whole plan ----------------------------------------------------------------
    def plan(self, requests: list[Request]) -> list[dict[str, Any]]:
        self._check(requests)
        self._others_dedicated({r.name for r in requests})
        cpus_of: dict[str, frozenset] = {}
        dedicated = [r for r in requests if r.cpu_policy == "dedicated"]
        # explicit CPUs first, then guests keeping theirs, then new allocations: stable
        for req in [r for r in dedicated if r.cpus is not None]:
            guest = self.guests[req.name]
            if len(req.cpus) < guest.max_vcpus:
                raise KvmValidationError(
                    f"{req.name}: cpus {_fmt(req.cpus)} has {len(req.cpus)} CPUs; a dedicated "
                    f"guest needs one per vCPU ({guest.max_vcpus})"
                )
            cpus_of[req.name] = frozenset(sorted(req.cpus)[: guest.max_vcpus])
            self._take(cpus_of[req.name], req.name)
        for req in [r for r in dedicated if r.cpus is None]:
            kept = self._keep_current(req, self.guests[req.name])
            if kept is not None:
                cpus_of[req.name] = kept
                self._take(kept, req.name)
        for req in [r for r in dedicated if r.name not in cpus_of]:
            cpus_of[req.name] = self._allocate(req, self.guests[req.name])
            self._take(cpus_of[req.name], req.name)

        shared_pool = self._free()
        for req in [r for r in requests if r.cpu_policy == "shared"]:
            if req.cpus is not None:
                self._conflict(req.cpus, req.name)
                cpus = req.cpus
            else:
                cpus = self._free(req.cell)
            if not cpus:
                raise KvmValidationError(
                    f"{req.name}: no shared CPUs left "
                    f"(host {_fmt(self.host.cpus)}, reserved {_fmt(self.settings.reserved)}, "
                    f"dedicated {_fmt(frozenset(self.taken))})"
                )
            cpus_of[req.name] = cpus

        self._warn_overlaps(requests)
        return [self._guest_plan(req, cpus_of[req.name], shared_pool) for req in requests]

    def _warn_overlaps(self, requests: list[Request]) -> None:
        planned = {r.name for r in requests}
        for name, guest in sorted(self.guests.items()):
            if name in planned:
                continue
            overlap = {cpu for cpu in guest.pinned_cpus() if self.taken.get(cpu) in planned}
            if overlap:
                self.messages.append(
                    f"{name} (not in the plan) has vCPUs pinned to {_fmt(overlap)}, which the "
                    "plan dedicates; tune it too (cpu_policy shared) to move it off them"
                )

    def _emulator_cpus(self, cpus: frozenset, shared_pool: frozenset) -> frozenset:
        placement = self.settings.emulator_placement
        if placement is None:
            placement = "reserved" if self.settings.reserved else "shared"
        if placement == "reserved":
            if not self.settings.reserved:
                raise KvmValidationError("emulator_placement reserved needs host_reserved_cpus")
            return self.settings.reserved
        if placement == "shared":
            return shared_pool or cpus
        return cpus

    def _guest_plan(self, req: Request, cpus: frozenset, shared_pool: frozenset) -> dict:
        guest = self.guests[req.name]
        ordered = sorted(cpus)
        if req.cpu_policy == "dedicated":
            pins = [{"vcpu": v, "cpuset": str(ordered[v])} for v in range(guest.max_vcpus)]
        else:
            pins = [{"vcpu": v, "cpuset": _fmt(cpus)} for v in range(guest.max_vcpus)]
        emulator = self._emulator_cpus(cpus, shared_pool)
        cells = self.host.cells_of(cpus)
        tuning: dict[str, Any] = {"vcpu_pins": pins, "emulator_pin": _fmt(emulator)}
        notes: list[str] = []
        if req.numa:
            tuning["numa_memory"] = {"mode": req.numa_mode, "nodeset": _fmt(cells)}
            self._check_cell_memory(req, guest, cells)
        if req.hugepages is not None:
            tuning["hugepages"] = req.hugepages
            if req.hugepages:
                size = self._hugepage_size(req)
                tuning["hugepage_size"] = f"{size}KiB"
                self._check_hugepages(req, guest, size, cells if req.numa else None)
        if req.iothreads is not None:
            tuning["iothreads"] = req.iothreads
            tuning["iothread_pins"] = [
                {"iothread": i, "cpuset": _fmt(emulator)} for i in range(1, req.iothreads + 1)
            ]
        if req.cachetune is not None:
            entries = self._cachetune(req, guest, ordered)
            if entries is not None:
                tuning["cachetune"] = entries
            else:
                notes.append("cachetune left out: " + self._no_resctrl())
        tag = self.settings.dedicated_tag
        tags = set(guest.tags)
        if req.cpu_policy == "dedicated":
            tags.add(tag)
        else:
            tags.discard(tag)
        result: dict[str, Any] = {
            "name": req.name,
            "cpu_policy": req.cpu_policy,
            "vcpus": guest.max_vcpus,
            "cpus": _fmt(cpus),
            "cells": cells,
            "emulator_cpus": _fmt(emulator),
            "tuning": tuning,
            "tags": sorted(tags),
            "disks": self._disks(req, guest) if req.iotune is not None else None,
            "notes": notes,
        }
        return result

    # -- memory --------------------------------------------------------------------------
    def _check_cell_memory(self, req: Request, guest: GuestView, cells: list[int]) -> None:
        sizes = [self.host.cell_memory_mib.get(c) for c in cells]
        if req.numa_mode != "strict" or any(s is None for s in sizes):
            return
        if guest.memory_mib > sum(sizes):
            raise KvmValidationError(
                f"{req.name}: {guest.memory_mib} MiB of memory does not fit NUMA cells "
                f"{cells} ({sum(sizes)} MiB) with the strict policy; use numa_mode "
                "preferred, numa false or another cell"
            )

    def _hugepage_size(self, req: Request) -> int:
        sizes = sorted(self.host.hugepages)
        size = req.hugepage_size_kib
        if size is None:
            if not sizes:
                raise KvmValidationError(f"{req.name}: the host has no huge page pools")
            size = 2048 if 2048 in sizes else sizes[0]
        if size not in sizes:
            raise KvmValidationError(
                f"{req.name}: the host has no {size} KiB huge pages (sizes: "
                f"{', '.join(f'{s} KiB' for s in sizes) or 'none'})"
            )
        return size

    def _check_hugepages(self, req, guest: GuestView, size: int, cells) -> None:
        pool = self.host.hugepages.get(size) or {}
        cells = cells if cells else sorted(pool)
        free = [pool.get(c) for c in cells]
        need = -(-guest.memory_mib * 1024 // size)
        if any(f is None for f in free):
            self.messages.append(
                f"{req.name}: free {size} KiB huge pages unknown on this host; not checked "
                f"({need} needed)"
            )
            return
        have = sum(free)
        held = (
            guest.active
            and guest.hugepages.get("enabled")
            and (
                (guest.hugepages.get("size") or 0) * 1024 == size
                or guest.hugepages.get("size") is None
            )
        )
        if held:
            have += need  # the running guest already holds its pages
        if have < need:
            raise KvmValidationError(
                f"{req.name}: huge page backing needs {need} pages of {size} KiB "
                f"({guest.memory_mib} MiB) in NUMA cells {cells}, but only {have} are free; "
                "reserve them first (nr_hugepages, or the host role's hugepages)"
            )

    # -- cache allocation ----------------------------------------------------------------
    def _no_resctrl(self) -> str:
        reason = self.host.resctrl.get("reason") or "libvirt reports no cache allocation"
        return f"this host cannot allocate cache (no usable resctrl: {reason})"

    def _cachetune(self, req: Request, guest: GuestView, cpus: list[int]):
        if not self.host.resctrl.get("available"):
            message = f"{req.name}: cache allocation asked for, but {self._no_resctrl()}"
            if self.settings.cachetune_required:
                raise KvmValidationError(message)
            self.messages.append(message + "; planned without it")
            return None
        want = req.cachetune
        banks = [
            b
            for b in self.host.resctrl.get("cache_banks") or []
            if b["level"] == want["level"] and b.get("allocation")
        ]
        entries = []
        for bank in banks:
            if req.cpu_policy == "dedicated":
                vcpus = [v for v, cpu in enumerate(cpus) if cpu in set(bank["cpus"])]
            else:
                vcpus = list(range(guest.max_vcpus)) if set(cpus) & set(bank["cpus"]) else []
            if not vcpus:
                continue
            if bank.get("size_bytes") and want["size_kib"] * 1024 >= bank["size_bytes"]:
                raise KvmValidationError(
                    f"{req.name}: cachetune size {want['size_kib']} KiB is not below the "
                    f"L{bank['level']} cache {bank['id']} ({bank['size_bytes'] // 1024} KiB)"
                )
            entries.append(
                {
                    "vcpus": _fmt(vcpus),
                    "cache_id": bank["id"],
                    "level": bank["level"],
                    "type": want["type"],
                    "size": want["size_kib"],
                }
            )
        if not entries:
            raise KvmValidationError(
                f"{req.name}: no L{want['level']} cache with allocation covers CPUs {_fmt(cpus)}"
            )
        return entries

    # -- I/O limits ----------------------------------------------------------------------
    def _disks(self, req: Request, guest: GuestView) -> list[dict[str, Any]]:
        """The guest's complete disk list (the domain module's form) with the limits set."""
        targets = {d.target for d in guest.disks if d.device == "disk"}
        chosen = set(req.iotune_disks) if req.iotune_disks is not None else targets
        unknown = sorted(chosen - targets)
        if unknown:
            raise KvmValidationError(
                f"{req.name}: iotune_disks {unknown} are not disks of the guest ({sorted(targets)})"
            )
        result = []
        for disk in guest.disks:
            entry: dict[str, Any] = {"target": disk.target, "device": disk.device, "bus": disk.bus}
            if disk.volume is not None:
                entry.update(pool=disk.pool, volume=disk.volume)
            elif disk.path or disk.device == "cdrom":
                entry["path"] = disk.path or ""
            else:
                raise KvmValidationError(
                    f"{req.name}: disk {disk.target} is neither a file, a block device nor a "
                    "volume; I/O limits cannot be planned for this guest"
                )
            if disk.target in chosen:
                # the complete set: limits left out are removed (the domain module compares
                # the whole iotune and rejects explicit zeros as conflicting with its read-back)
                entry["iotune"] = {k: v for k, v in req.iotune.items() if v}
            result.append(entry)
        return result


def plan(
    host: HostView,
    guests: dict[str, GuestView],
    requests: list[Request],
    settings: Settings,
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """The plan per requested guest, messages for the user, and a summary of the host."""
    planner = Planner(host, guests, settings)
    result = planner.plan(requests)
    dedicated: dict[str, set[int]] = {}
    for cpu, who in planner.taken.items():
        dedicated.setdefault(who, set()).add(cpu)
    summary = {
        "cpus": _fmt(host.cpus),
        "cells": [{"id": c, "cpus": _fmt(cpus)} for c, cpus in sorted(host.cells.items())],
        "reserved": _fmt(settings.reserved),
        "dedicated": {who: _fmt(cpus) for who, cpus in sorted(dedicated.items())},
        "shared_pool": _fmt(planner._free()),
        "resctrl": {
            "available": bool(host.resctrl.get("available")),
            "reason": host.resctrl.get("reason"),
        },
    }
    return result, planner.messages, summary


# --------------------------------------------------------------------------- reading


def read_host(conn, uri: str) -> HostView:
    """host_info's cpu, hugepages and resctrl sections; only CPUs that are online count."""
    local = LocalHost() if is_this_machine(uri) else None
    summary = host_summary(conn, gather=["cpu", "hugepages", "resctrl"], local_host=local)
    view = HostView.from_host_info(summary)
    try:
        _count, online_map, _online = conn.getCPUMap(0)
    except libvirt.libvirtError:
        return view  # a driver without a CPU map: take the topology as it is
    online = frozenset(i for i, up in enumerate(online_map) if up)
    if online:
        view.cells = {cid: cpus & online for cid, cpus in view.cells.items()}
    return view


def read_guests(conn) -> dict[str, GuestView]:
    """Every guest: its inactive definition, and the live one when it runs."""
    try:
        doms = conn.listAllDomains(0)
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, "list guests") from exc
    inactive_flag = getattr(libvirt, "VIR_DOMAIN_XML_INACTIVE", 2)
    guests = {}
    for dom in doms:
        try:
            name = dom.name()
            active = dom.isActive()
            inactive = _xml.parse(dom.XMLDesc(inactive_flag), "domain XML")
            live = _xml.parse(dom.XMLDesc(0), "domain XML") if active else None
        except libvirt.libvirtError as exc:
            if is_error(exc, libvirt.VIR_ERR_NO_DOMAIN):
                continue  # removed while we were listing
            raise from_libvirt(exc, "read a guest definition") from exc
        guests[name] = GuestView.from_xml(name, inactive, live)
    return guests
