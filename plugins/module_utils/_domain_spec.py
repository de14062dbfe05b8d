# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""From the domain module's options to the wished settings, and every check of them.

``desired_from_params`` is pure (no libvirt): units, ranges and conflicts between options.
``HostChecks`` then asks the host what exists (networks, pools, volumes, bridges, files,
memory, machine types) and completes the wish (disk targets and formats, canonical machine
names). Both run before anything changes, so bad input never leaves a half-made guest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _xml
from ._check_mode import assumed_in_check_mode
from ._domain_model import (
    FIELDS_BY_NAME,
    TARGET_PREFIX,
    Disk,
    DiskWish,
    Interface,
    canonical_cpuset,
    next_target,
    parse_cpuset,
    parse_fragment,
    read_disks,
    read_interfaces,
)
from ._errors import KvmValidationError, from_libvirt, is_error
from ._libvirt import is_this_machine, libvirt
from ._units import MIB, parse_mib, parse_size


@dataclass
class Wish:
    """The settings the user asked for (field name -> value) and the options around them."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    virt_type: str = "auto"
    fragment: Any = None  # parsed ``xml`` option (a <domain> element) or None
    autostart: bool | None = None
    cdrom: str | None = None


def _tuning(params: dict[str, Any]) -> dict[str, Any]:
    return params.get("tuning") or {}


def desired_from_params(params: dict[str, Any]) -> Wish:
    """The wished fields from the options; raises ``KvmValidationError`` on bad input."""
    wish = Wish(name=params["name"], virt_type=params.get("virt_type") or "auto")
    f = wish.fields
    if not wish.name or "/" in wish.name:
        raise KvmValidationError(f"Invalid guest name {wish.name!r}")
    if wish.virt_type != "auto":
        f["virt_type"] = wish.virt_type
    for key in ("title", "description", "kernel", "initrd", "cmdline", "machine"):
        if params.get(key) is not None:
            f[key] = params[key]
    if params.get("tags") is not None:
        f["tags"] = sorted(set(params["tags"]))
    for key in ("memory", "max_memory"):
        if params.get(key) is not None:
            f[key] = parse_mib(params[key], what=key)
            if f[key] <= 0:
                raise KvmValidationError(f"{key} must be at least 1 MiB, got {params[key]!r}")
    if "memory" in f and "max_memory" in f and f["max_memory"] < f["memory"]:
        raise KvmValidationError(
            f"max_memory ({f['max_memory']} MiB) is below memory ({f['memory']} MiB)"
        )
    for key in ("vcpus", "max_vcpus"):
        if params.get(key) is not None:
            if params[key] < 1:
                raise KvmValidationError(f"{key} must be at least 1, got {params[key]}")
            f[key] = params[key]
    if "vcpus" in f and "max_vcpus" in f and f["max_vcpus"] < f["vcpus"]:
        raise KvmValidationError(f"max_vcpus ({f['max_vcpus']}) is below vcpus ({f['vcpus']})")
    _cpu(params, f)
    _firmware(params, f)
    if params.get("boot") is not None:
        f["boot"] = list(params["boot"])
    if f.get("kernel") == "" and (params.get("initrd") or params.get("cmdline")):
        raise KvmValidationError("initrd and cmdline need a kernel (kernel is empty)")
    wish.cdrom = params.get("cdrom")
    disks = [_disk(d, i) for i, d in enumerate(params.get("disks") or [])]
    if params.get("disks") is not None or wish.cdrom is not None:
        if wish.cdrom is not None:
            disks.append(Disk(device="cdrom", bus="sata", path=wish.cdrom, readonly=True))
        f["disks"] = DiskWish(disks, exclusive=params.get("disks") is not None)
    if params.get("interfaces") is not None:
        f["interfaces"] = [_interface(n, i) for i, n in enumerate(params["interfaces"])]
    if params.get("graphics") is not None:
        f["graphics"] = _graphics(params["graphics"])
    if params.get("serials") is not None:
        f["serials"] = _serials(params["serials"])
    for key in ("guest_agent", "rng"):
        if params.get(key) is not None:
            f[key] = params[key]
    if params.get("watchdog") is not None:
        wd = params["watchdog"]
        f["watchdog"] = {"model": wd.get("model") or "i6300esb"}
        if f["watchdog"]["model"] != "none":
            f["watchdog"]["action"] = wd.get("action") or "reset"
    _tuning_fields(_tuning(params), f)
    _check_iothreads(f)
    wish.autostart = params.get("autostart")
    if params.get("xml"):
        wish.fragment = parse_fragment(params["xml"])
    return wish


def _cpu(params, f):
    cpu = params.get("cpu")
    if not cpu:
        return
    want = {k: cpu.get(k) for k in ("mode", "model", "sockets", "cores", "threads")}
    want = {k: v for k, v in want.items() if v is not None}
    if want.get("model") and want.get("mode", "custom") != "custom":
        raise KvmValidationError(
            f"cpu.model ({want['model']}) conflicts with cpu.mode {want['mode']}: "
            "a named model needs mode custom"
        )
    for key in ("sockets", "cores", "threads"):
        if key in want and want[key] < 1:
            raise KvmValidationError(f"cpu.{key} must be at least 1, got {want[key]}")
    if want:
        f["cpu"] = want


def _firmware(params, f):
    firmware = params.get("firmware")
    secure = params.get("secure_boot")
    if secure and firmware == "bios":
        raise KvmValidationError("secure_boot needs firmware uefi, not bios")
    if secure and firmware is None:
        firmware = "uefi"
    if firmware is not None:
        f["firmware"] = firmware
    if secure is not None:
        f["secure_boot"] = secure


def _disk(spec: dict[str, Any], index: int) -> Disk:
    where = f"disks[{index}]"
    device = spec.get("device") or "disk"
    has_path = spec.get("path") is not None
    has_volume = spec.get("volume") is not None
    if has_path and has_volume:
        raise KvmValidationError(f"{where}: give either path or pool and volume, not both")
    if has_volume and not spec.get("pool"):
        raise KvmValidationError(f"{where}: volume {spec['volume']!r} needs its pool")
    if spec.get("pool") and not has_volume:
        raise KvmValidationError(f"{where}: pool {spec['pool']!r} needs a volume")
    if not has_path and not has_volume and device != "cdrom":
        raise KvmValidationError(f"{where}: a disk needs a path or a pool and volume")
    bus = spec.get("bus") or ("sata" if device == "cdrom" else "virtio")
    target = spec.get("target")
    if target and not target.startswith(TARGET_PREFIX.get(bus, "")):
        raise KvmValidationError(
            f"{where}: target {target} does not fit bus {bus} (expected {TARGET_PREFIX.get(bus)}*)"
        )
    iotune = None
    if spec.get("iotune") is not None:
        iotune = {k: v for k, v in spec["iotune"].items() if v is not None}
        for key, value in iotune.items():
            if value < 0:
                raise KvmValidationError(f"{where}: iotune.{key} must not be negative")
    readonly = spec.get("readonly")
    if readonly is None and device == "cdrom":
        readonly = True
    return Disk(
        target=target,
        device=device,
        bus=bus,
        path=spec.get("path")
        if has_path
        else ("" if device == "cdrom" and not has_volume else None),
        pool=spec.get("pool"),
        volume=spec.get("volume"),
        format=spec.get("format"),
        cache=spec.get("cache"),
        io=spec.get("io"),
        discard=spec.get("discard"),
        iothread=spec.get("iothread"),
        readonly=readonly,
        serial=spec.get("serial"),
        iotune=iotune,
    )


def _interface(spec: dict[str, Any], index: int) -> Interface:
    where = f"interfaces[{index}]"
    given = [k for k in ("network", "bridge", "dev") if spec.get(k)]
    if len(given) != 1:
        raise KvmValidationError(
            f"{where}: give exactly one of network, bridge or dev (macvtap), got "
            f"{', '.join(given) or 'none'}"
        )
    kind = given[0]
    mac = spec.get("mac")
    if mac is not None:
        mac = mac.lower()
        parts = mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and _is_hex(p) for p in parts):
            raise KvmValidationError(f"{where}: invalid MAC address {spec['mac']!r}")
        if int(parts[0], 16) & 1:
            raise KvmValidationError(f"{where}: {spec['mac']} is a multicast MAC address")
    if spec.get("mode") and kind != "dev":
        raise KvmValidationError(f"{where}: mode is for macvtap interfaces (dev) only")
    if spec.get("mtu") is not None and not 68 <= spec["mtu"] <= 65535:
        raise KvmValidationError(f"{where}: mtu {spec['mtu']} is out of range 68-65535")
    return Interface(
        type={"network": "network", "bridge": "bridge", "dev": "direct"}[kind],
        source=spec[kind],
        mode=(spec.get("mode") or "bridge") if kind == "dev" else None,
        model=spec.get("model") or "virtio",
        mac=mac,
        mtu=spec.get("mtu"),
    )


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _graphics(spec: dict[str, Any]) -> dict[str, Any]:
    gtype = spec.get("type") or "vnc"
    want: dict[str, Any] = {"type": gtype}
    if gtype == "none":
        if spec.get("listen") or spec.get("port") or spec.get("password"):
            raise KvmValidationError("graphics type none takes no listen, port or password")
        return want
    for key in ("listen", "port", "password"):
        if spec.get(key) is not None:
            want[key] = spec[key]
    if want.get("port") is not None and not 5900 <= want["port"] <= 65535:
        raise KvmValidationError(f"graphics.port {want['port']} is out of range 5900-65535")
    return want


def _serials(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    ports = set()
    for index, spec in enumerate(specs):
        port = spec.get("port")
        port = index if port is None else port
        if port in ports:
            raise KvmValidationError(f"serials: port {port} is given twice")
        ports.add(port)
        stype = spec.get("type") or "pty"
        entry: dict[str, Any] = {"port": port, "type": stype}
        if stype in ("file", "unix", "tcp"):
            if not spec.get("path"):
                raise KvmValidationError(f"serials[{index}]: type {stype} needs a path")
            entry["path"] = spec["path"]
        elif spec.get("path"):
            raise KvmValidationError(f"serials[{index}]: type pty takes no path")
        if stype in ("unix", "tcp"):
            entry["mode"] = spec.get("mode") or "bind"
        result.append(entry)
    return sorted(result, key=lambda s: s["port"])


def _pins(entries, key, what) -> dict[int, str]:
    pins: dict[int, str] = {}
    for entry in entries:
        ident = entry[key]
        if ident in pins:
            raise KvmValidationError(f"{what}: {key} {ident} is pinned twice")
        pins[ident] = canonical_cpuset(entry["cpuset"], f"{what} cpuset")
    return pins


def _tuning_fields(tuning: dict[str, Any], f: dict[str, Any]) -> None:
    if tuning.get("vcpu_pins") is not None:
        f["tuning.vcpu_pins"] = _pins(tuning["vcpu_pins"], "vcpu", "tuning.vcpu_pins")
    if tuning.get("emulator_pin") is not None:
        f["tuning.emulator_pin"] = (
            canonical_cpuset(tuning["emulator_pin"]) if tuning["emulator_pin"] else None
        )
    if tuning.get("iothreads") is not None:
        f["tuning.iothreads"] = tuning["iothreads"]
    if tuning.get("iothread_pins") is not None:
        f["tuning.iothread_pins"] = _pins(
            tuning["iothread_pins"], "iothread", "tuning.iothread_pins"
        )
    for key in ("cpu_shares", "cpu_period", "cpu_quota", "blkio_weight"):
        if tuning.get(key) is not None:
            f[f"tuning.{key}"] = tuning[key]
    if tuning.get("blkio_weight") is not None and not 100 <= tuning["blkio_weight"] <= 1000:
        raise KvmValidationError("tuning.blkio_weight must be within 100-1000")
    if tuning.get("cpu_period") is not None and not 1000 <= tuning["cpu_period"] <= 1000000:
        raise KvmValidationError("tuning.cpu_period must be within 1000-1000000 (microseconds)")
    numa = tuning.get("numa_memory")
    if numa is not None:
        want = {"mode": numa.get("mode") or "strict"}
        if numa.get("nodeset") is not None:
            want["nodeset"] = canonical_cpuset(numa["nodeset"], "tuning.numa_memory.nodeset")
        f["tuning.numa_memory"] = want
    if tuning.get("hugepages") is not None:
        want = {"enabled": tuning["hugepages"]}
        if tuning.get("hugepage_size") is not None:
            if not tuning["hugepages"]:
                raise KvmValidationError("tuning.hugepage_size needs tuning.hugepages true")
            want["size"] = (
                parse_size(tuning["hugepage_size"], what="tuning.hugepage_size", default_unit="KiB")
                // 1024
            )
        f["tuning.hugepages"] = want
    if tuning.get("memory_locked") is not None:
        f["tuning.memory_locked"] = tuning["memory_locked"]
    for key in ("memory_hard_limit", "memory_soft_limit"):
        if tuning.get(key) is not None:
            f[f"tuning.{key}"] = parse_mib(tuning[key], what=f"tuning.{key}")
    hard, soft = f.get("tuning.memory_hard_limit"), f.get("tuning.memory_soft_limit")
    if hard and soft and soft > hard:
        raise KvmValidationError("tuning.memory_soft_limit is above tuning.memory_hard_limit")
    if tuning.get("cachetune") is not None:
        entries = []
        for entry in tuning["cachetune"]:
            entries.append(
                {
                    "vcpus": canonical_cpuset(entry["vcpus"], "tuning.cachetune.vcpus"),
                    "cache_id": entry.get("cache_id") or 0,
                    "level": entry.get("level") or 3,
                    "type": entry.get("type") or "both",
                    "size": parse_size(
                        entry["size"], what="tuning.cachetune.size", default_unit="KiB"
                    )
                    // 1024,
                }
            )
        f["tuning.cachetune"] = sorted(
            entries, key=lambda c: (c["vcpus"], c["cache_id"], c["type"])
        )


def _check_iothreads(f: dict[str, Any]) -> None:
    iothreads = f.get("tuning.iothreads")
    if iothreads is None:
        return
    for ident in f.get("tuning.iothread_pins", {}):
        if not 1 <= ident <= iothreads:
            raise KvmValidationError(
                f"tuning.iothread_pins: iothread {ident} does not exist (iothreads {iothreads})"
            )
    disks = f.get("disks")
    for disk in disks.disks if disks else []:
        if disk.iothread is not None and not 1 <= disk.iothread <= iothreads:
            raise KvmValidationError(
                f"disk iothread {disk.iothread} does not exist (tuning.iothreads {iothreads})"
            )


def _source(disk: Disk) -> tuple:
    return (disk.path or None, disk.pool, disk.volume)


def _format_needed(disk: Disk, what: str, reason: str) -> KvmValidationError:
    return KvmValidationError(
        f"disks: set format (raw or qcow2) for disk {disk.target} ({what}): {reason}. A "
        "format is never guessed from a file's contents, which the guest can write (a qcow2 "
        "header naming any host file as its backing image)"
    )


# --------------------------------------------------------------------------- host checks
class HostChecks:
    """What the host has, asked through libvirt (and the local filesystem for local URIs).

    In check mode a network, pool, volume, bridge or file that does not exist (or a pool or
    network that is not running) may be made by an earlier task of the play: it is reported
    through ``warn`` and assumed, and what needs it (a disk's format) stays unknown.
    """

    def __init__(
        self,
        conn,
        uri: str,
        *,
        check_mode: bool = False,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.conn = conn
        self.local = is_this_machine(uri)
        self.check_mode = check_mode
        self._warn = warn or (lambda msg: None)
        self._warned: set[str] = set()
        self._caps = None

    def _assume(self, subject: str, problem: str = "does not exist yet", action: str = "creates"):
        """Check mode only: warn (once per object) that a missing object is assumed."""
        msg = assumed_in_check_mode(subject, problem, action)
        if msg not in self._warned:
            self._warned.add(msg)
            self._warn(msg)

    # -- completing the wish
    def complete(self, wish: Wish, actual_root) -> None:
        """Resolve machine aliases, assign disk targets and formats; check relations."""
        f = wish.fields
        if "machine" in f:
            f["machine"] = self.canonical_machine(f["machine"])
        if "disks" in f:
            self._assign_targets(f["disks"], actual_root)
            actual = {}
            if actual_root is not None:
                actual = {d.target: _source(d) for d in read_disks(actual_root)}
            for disk in f["disks"].disks:
                # a disk already in the definition keeps its format; a new source needs one
                kept = actual.get(disk.target) == _source(disk)
                if not kept and disk.format is None and disk.device == "disk":
                    disk.format = self.disk_format(disk)
        if actual_root is not None:
            self._relations(wish, actual_root)
        self._vcpu_relations(wish, actual_root)

    def _assign_targets(self, wish: DiskWish, actual_root) -> None:
        actual = read_disks(actual_root) if actual_root is not None else []
        taken = {d.target for d in wish.disks if d.target}
        if len(taken) != len([d for d in wish.disks if d.target]):
            raise KvmValidationError("disks: a target is given twice")
        if not wish.exclusive:
            taken |= {d.target for d in actual}
        for disk in wish.disks:
            if disk.target:
                continue
            if disk.device == "cdrom" and not wish.exclusive:
                # the cdrom option: the guest's first CD-ROM, else a new one
                first = next((d for d in actual if d.device == "cdrom"), None)
                if first is not None:
                    disk.target, disk.bus = first.target, first.bus
                    continue
            disk.target = next_target(disk.bus, taken)
            taken.add(disk.target)

    def _relations(self, wish: Wish, root) -> None:
        """Implicit maxima: raising memory or vCPUs above the maximum raises the maximum."""
        f = wish.fields

        if "memory" in f and "max_memory" not in f:
            current_max = FIELDS_BY_NAME["max_memory"].read(root)
            if current_max is not None and f["memory"] > current_max:
                f["max_memory"] = f["memory"]
        if "max_memory" in f and "memory" not in f:
            current = FIELDS_BY_NAME["memory"].read(root)
            if current is not None and current > f["max_memory"]:
                f["memory"] = f["max_memory"]
        if "vcpus" in f and "max_vcpus" not in f:
            current_max = FIELDS_BY_NAME["max_vcpus"].read(root)
            if current_max is not None and f["vcpus"] > current_max:
                f["max_vcpus"] = f["vcpus"]
        if "max_vcpus" in f and "vcpus" not in f:
            current = FIELDS_BY_NAME["vcpus"].read(root)
            if current is not None and current > f["max_vcpus"]:
                f["vcpus"] = f["max_vcpus"]

    def _vcpu_relations(self, wish: Wish, root) -> None:
        f = wish.fields

        max_vcpus = f.get("max_vcpus") or f.get("vcpus")
        if max_vcpus is None and root is not None:
            max_vcpus = FIELDS_BY_NAME["max_vcpus"].read(root)
        max_vcpus = max_vcpus or 1
        cpu = f.get("cpu") or {}
        topo = [cpu.get(k) for k in ("sockets", "cores", "threads")]
        if any(t is not None for t in topo):
            actual = FIELDS_BY_NAME["cpu"].read(root) if root is not None else {}
            product = 1
            for key in ("sockets", "cores", "threads"):
                product *= cpu.get(key) or (actual or {}).get(key) or 1
            if product != max_vcpus:
                raise KvmValidationError(
                    f"cpu topology gives {product} vCPUs (sockets x cores x threads) but the "
                    f"maximum number of vCPUs is {max_vcpus}: they must be equal"
                )
        for vcpu in f.get("tuning.vcpu_pins", {}):
            if not 0 <= vcpu < max_vcpus:
                raise KvmValidationError(
                    f"tuning.vcpu_pins: vCPU {vcpu} does not exist (vCPUs 0-{max_vcpus - 1})"
                )
        for entry in f.get("tuning.cachetune", []):
            if max(parse_cpuset(entry["vcpus"])) >= max_vcpus:
                raise KvmValidationError(
                    f"tuning.cachetune: vCPUs {entry['vcpus']} beyond vCPUs 0-{max_vcpus - 1}"
                )

    # -- capabilities
    def capabilities(self):
        if self._caps is None:
            try:
                self._caps = _xml.parse(self.conn.getCapabilities(), "capabilities")
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, "read the host capabilities") from exc
        return self._caps

    def canonical_machine(self, machine: str) -> str:
        known: dict[str, str] = {}
        for elem in self.capabilities().iter("machine"):
            if elem.text:
                known[elem.text] = elem.get("canonical") or elem.text
        if not known:  # a driver without machine types (test driver)
            return machine
        if machine not in known:
            close = sorted(m for m in known if m.split("-")[0:2] == machine.split("-")[0:2])
            hint = f"; known: {', '.join(close[:8])}" if close else ""
            raise KvmValidationError(f"Unknown machine type {machine!r}{hint}")
        return known[machine]

    def host_cpus(self) -> int:
        try:
            return self.conn.getCPUMap(0)[0]
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "read the host CPU map") from exc

    def check_cpusets(self, wish: Wish) -> None:
        """Pinning to CPUs the host does not have fails here, not halfway through."""

        ncpus = self.host_cpus()
        sets = dict(wish.fields.get("tuning.vcpu_pins", {}))
        sets.update(
            {f"iothread {k}": v for k, v in wish.fields.get("tuning.iothread_pins", {}).items()}
        )
        if wish.fields.get("tuning.emulator_pin"):
            sets["emulator"] = wish.fields["tuning.emulator_pin"]
        for ident, cpuset in sets.items():
            if max(parse_cpuset(cpuset)) >= ncpus:
                raise KvmValidationError(
                    f"tuning: cpuset {cpuset} (for {ident}) names CPUs the host does not have "
                    f"(host CPUs 0-{ncpus - 1})"
                )

    # -- things that must exist
    def check_exists(self, wish: Wish, actual_root) -> None:
        f = wish.fields
        for key in ("kernel", "initrd"):
            if f.get(key):
                self.check_file(f[key], key)
        actual_disks = {}
        if actual_root is not None:
            actual_disks = {d.target: d for d in read_disks(actual_root)}
        for disk in f["disks"].disks if "disks" in f else []:
            have = actual_disks.get(disk.target)
            if have is not None and have.path == disk.path and have.volume == disk.volume:
                continue  # unchanged source: a missing file is the guest's business, not ours
            if disk.volume is not None:
                self.volume(disk.pool, disk.volume)
            elif disk.path:
                what = "install ISO (cdrom)" if disk.device == "cdrom" else f"disk {disk.target}"
                self.check_file(disk.path, what)
        for nic in f.get("interfaces", []):
            if nic.type == "network":
                self.network(nic.source)
            elif nic.type == "bridge":
                self.host_interface(nic.source, bridge=True)
            elif nic.type == "direct":
                self.host_interface(nic.source, bridge=False)
        self.check_cpusets(wish)

    def check_file(self, path: str, what: str) -> None:
        if not os.path.isabs(path):
            raise KvmValidationError(f"The {what} path {path!r} must be absolute")
        if self.local:
            if not os.path.exists(path):
                if self.check_mode:
                    self._assume(f"The {what} file {path}")
                    return
                raise KvmValidationError(f"The {what} file {path} does not exist")
            return
        try:  # remote host: only files in a storage pool can be checked
            self.conn.storageVolLookupByPath(path)
        except libvirt.libvirtError:
            pass

    def network(self, name: str):
        """The network, or None in check mode when it does not exist yet."""
        try:
            return self.conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if is_error(exc, libvirt.VIR_ERR_NO_NETWORK):
                if self.check_mode:
                    self._assume(f"Libvirt network {name!r}")
                    return None
                raise KvmValidationError(f"Unknown libvirt network {name!r}") from exc
            raise from_libvirt(exc, f"look up network {name}") from exc

    def check_networks_active(self, wish: Wish, actual_root, starting: bool) -> None:
        """A guest cannot start with a NIC on a stopped network: say so before changing."""
        if not starting:
            return
        nics = wish.fields.get("interfaces")
        if nics is None and actual_root is not None:
            nics = read_interfaces(actual_root)
        for nic in nics or []:
            if nic.type != "network" or not nic.source:
                continue
            net = self.network(nic.source)
            if net is None:  # check mode, not there yet: warned already
                continue
            try:
                active = net.isActive()
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"look up network {nic.source}") from exc
            if not active and self.check_mode:
                self._assume(f"Libvirt network {nic.source!r}", "is not active", "starts")
            elif not active:
                raise KvmValidationError(
                    f"Libvirt network {nic.source!r} is not active; the guest cannot start on it"
                )

    def pool(self, name: str):
        """The pool, or None in check mode when it does not exist yet."""
        try:
            return self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if is_error(exc, libvirt.VIR_ERR_NO_STORAGE_POOL):
                if self.check_mode:
                    self._assume(f"Storage pool {name!r}")
                    return None
                raise KvmValidationError(f"Unknown storage pool {name!r}") from exc
            raise from_libvirt(exc, f"look up storage pool {name}") from exc

    def volume(self, pool_name: str, name: str):
        """The volume, or None in check mode when it (or its pool) is not there yet."""
        pool = self.pool(pool_name)
        if pool is None:
            return None
        if self.check_mode and not self._pool_active(pool, pool_name):
            self._assume(f"Storage pool {pool_name!r}", "is not running", "starts")
            return None
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if is_error(exc, libvirt.VIR_ERR_NO_STORAGE_VOL):
                if self.check_mode:
                    self._assume(f"Volume {name!r} in storage pool {pool_name!r}")
                    return None
                raise KvmValidationError(
                    f"Unknown volume {name!r} in storage pool {pool_name!r}"
                ) from exc
            raise from_libvirt(exc, f"look up volume {name} in pool {pool_name}") from exc

    @staticmethod
    def _pool_active(pool, name: str) -> bool:
        try:
            return bool(pool.isActive())
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"read the state of storage pool {name}") from exc

    def host_interface(self, name: str, *, bridge: bool) -> None:
        kind = "bridge" if bridge else "host interface (macvtap)"
        if self.local and os.path.isdir("/sys/class/net"):
            path = os.path.join("/sys/class/net", name)
            if "/" in name or not os.path.exists(path):
                if self.check_mode and "/" not in name:
                    self._assume(f"The {kind} {name!r} on the host")
                    return
                raise KvmValidationError(f"Unknown {kind} {name!r} on the host")
            if bridge and not os.path.isdir(os.path.join(path, "bridge")):
                raise KvmValidationError(f"Host interface {name!r} is not a bridge")
            return
        try:
            self.conn.interfaceLookupByName(name)
        except libvirt.libvirtError as exc:
            if is_error(exc, libvirt.VIR_ERR_NO_INTERFACE):
                if self.check_mode:
                    self._assume(f"The {kind} {name!r} on the host")
                    return
                raise KvmValidationError(f"Unknown {kind} {name!r} on the host") from exc
            # no interface driver on that host: libvirt reports it when the guest starts

    def disk_format(self, disk: Disk) -> str | None:
        """The image format of a new disk without ``format``: what its storage pool says of
        the volume (a pool volume, or a path libvirt knows as one). Never read from the
        file's own bytes: the guest writes them, and a planted qcow2 header could name any
        host file as its backing image. None where check mode assumes the volume or file."""
        if disk.volume is not None:
            vol = self.volume(disk.pool, disk.volume)
            return (
                None
                if vol is None
                else self._volume_format(vol, disk, f"{disk.pool}/{disk.volume}")
            )
        path = disk.path or ""
        if not os.path.isabs(path) or (self.local and not os.path.exists(path)):
            return None  # check_exists reports it (or assumes it in check mode)
        try:
            vol = self.conn.storageVolLookupByPath(path)
        except libvirt.libvirtError as exc:
            if not is_error(exc, libvirt.VIR_ERR_NO_STORAGE_VOL):
                raise from_libvirt(exc, f"look up the storage volume of {path}") from exc
            raise _format_needed(
                disk, path, "it is not a volume of a running storage pool"
            ) from None
        return self._volume_format(vol, disk, path)

    @staticmethod
    def _volume_format(vol, disk: Disk, what: str) -> str:
        """The pool's format of a volume. A file-based pool reads it from the file's header,
        as it reads the backing file: one the pool reports with a backing or data file
        needs ``format`` from the user, since the guest may have written that header."""
        try:
            root = _xml.parse(vol.XMLDesc(0), "volume XML")
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"read volume {what}") from exc
        backing = _xml.text(root, "backingStore/path") or _xml.text(root, "dataStore/path")
        if backing:
            raise _format_needed(
                disk, what, f"its storage pool read its header, which names {backing} as backing"
            )
        return _xml.attr(root, "target/format", "type") or "raw"

    # -- memory
    def check_memory(self, max_memory_mib: int | None, *, starting: bool) -> None:
        """The memory guard: no guest larger than the host, none started beyond free memory."""
        if not max_memory_mib:
            return
        try:
            total_mib = self.conn.getInfo()[1]
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "read the host memory size") from exc
        if max_memory_mib > total_mib:
            raise KvmValidationError(
                f"The guest's memory ({max_memory_mib} MiB) is more than the host has "
                f"({total_mib} MiB); set memory_guard false to allow it",
                host_memory_mib=total_mib,
            )
        if starting:
            try:
                free_mib = self.conn.getFreeMemory() // MIB
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, "read the host's free memory") from exc
            if max_memory_mib > free_mib:
                raise KvmValidationError(
                    f"The guest's memory ({max_memory_mib} MiB) is more than the host has free "
                    f"({free_mib} MiB); set memory_guard false to start it anyway",
                    host_free_memory_mib=free_mib,
                )
