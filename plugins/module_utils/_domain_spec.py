# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""From the domain module's options to the wished settings, and every check of them alone.

``desired_from_params`` is pure (no libvirt): units, ranges and conflicts between options.
``_domain_checks.HostChecks`` then asks the host what exists and completes the wish. Both
run before anything changes, so bad input never leaves a half-made guest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _domain_extra_devices as extra
from ._cpuset import canonical_cpuset
from ._domain_devices import TARGET_PREFIX, Disk, DiskWish, Interface
from ._domain_merge import parse_fragment
from ._errors import KvmValidationError
from ._units import parse_mib, parse_size


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
    _extra_devices(params, f)
    _tuning_fields(_tuning(params), f)
    _check_iothreads(f)
    wish.autostart = params.get("autostart")
    if params.get("xml"):
        wish.fragment = parse_fragment(params["xml"])
    return wish


EXTRA_DEVICES = {
    "controllers": extra.controllers_wish,
    "tpm": extra.tpm_wish,
    "video": extra.video_wish,
    "sound": extra.sound_wish,
    "inputs": extra.inputs_wish,
    "sysinfo": extra.sysinfo_wish,
    "filesystems": extra.filesystems_wish,
    "hostdevs": extra.hostdevs_wish,
}


def _extra_devices(params, f):
    for key, parse in EXTRA_DEVICES.items():
        if params.get(key) is not None:
            f[key] = parse(params[key])


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
    for ctrl in f.get("controllers") or []:
        if ctrl.get("iothread") is not None and not 1 <= ctrl["iothread"] <= iothreads:
            raise KvmValidationError(
                f"controller iothread {ctrl['iothread']} does not exist "
                f"(tuning.iothreads {iothreads})"
            )
    disks = f.get("disks")
    for disk in disks.disks if disks else []:
        if disk.iothread is not None and not 1 <= disk.iothread <= iothreads:
            raise KvmValidationError(
                f"disk iothread {disk.iothread} does not exist (tuning.iothreads {iothreads})"
            )
