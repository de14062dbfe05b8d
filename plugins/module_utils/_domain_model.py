# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Typed model of a libvirt domain definition: read, compare and write managed settings.

The domain module never compares XML text. Every setting it manages is a *field*: a name
(dotted, as shown in the diff), a reader that turns libvirt's inactive XML into a plain
comparable value, a projection that keeps only what the user specified, and a writer that
patches those settings into the existing XML tree (so everything libvirt generated, such as
the UUID, PCI addresses, aliases, default controllers and MACs we were not given, stays).

Devices are typed dataclasses (``Disk``, ``Interface``, ``Serial``) with ``from_xml``,
``build`` (a new element) and ``apply`` (patch an existing element).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Callable

from . import _xml
from ._errors import KvmValidationError
from ._secrets import fingerprint
from ._units import from_libvirt

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None

NS_VIRTOPS = "https://virtops.dev/xmlns/kvm/1.0"
NS_PREFIX = "virtops"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
KIB_PER_MIB = 1024

IOTUNE_KEYS = (
    "total_bytes_sec",
    "read_bytes_sec",
    "write_bytes_sec",
    "total_iops_sec",
    "read_iops_sec",
    "write_iops_sec",
)
TARGET_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "usb": "sd", "ide": "hd"}


# --------------------------------------------------------------------------- cpusets
# The highest CPU number a cpuset may name: libvirt's cpumaps hold 16384 CPUs
# (VIR_DOMAIN_CPUMASK_LEN; libvirt 9.0 refuses "16384" with "Failed to parse bitmap").
MAX_CPU_ID = 16383


def parse_cpuset(text: str | int, what: str = "cpuset") -> frozenset:
    """``"0-3,^2,6"`` -> ``{0, 1, 3, 6}`` (libvirt's cpuset syntax).

    CPU numbers are bounded (``MAX_CPU_ID``) before any range is expanded, and ranges are
    set as bit masks, so no input costs more than a few thousand small integers.
    """
    cpus = excluded = 0
    shown = repr(str(text)) if len(str(text)) <= 60 else repr(f"{str(text)[:57]}...")
    for raw in str(text).split(","):
        part = raw.strip()
        if not part:
            continue
        exclude = part.startswith("^")
        if exclude:
            part = part[1:]
        try:
            lo, dash, hi = part.partition("-")
            first, last = int(lo), int(hi if dash else lo)
            if not 0 <= first <= last:
                raise ValueError(part)
        except ValueError as exc:
            raise KvmValidationError(f"Invalid {what} {shown}: expected e.g. 0-3,^2,6") from exc
        if last > MAX_CPU_ID:
            raise KvmValidationError(
                f"Invalid {what} {shown}: CPU {last} is beyond the highest CPU number libvirt "
                f"accepts ({MAX_CPU_ID})"
            )
        mask = ((1 << (last - first + 1)) - 1) << first
        if exclude:
            excluded |= mask
        else:
            cpus |= mask
    result = cpus & ~excluded
    if not result:
        raise KvmValidationError(f"Invalid {what} {shown}: selects no CPU")
    return frozenset(i for i in range(result.bit_length()) if result >> i & 1)


def format_cpuset(cpus) -> str:
    """``{0, 1, 3}`` -> ``"0-1,3"`` (the canonical form libvirt writes back)."""
    ordered = sorted(cpus)
    ranges: list[str] = []
    start = prev = None
    for cpu in [*ordered, None]:
        if start is None:
            start = prev = cpu
            continue
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(ranges)


def canonical_cpuset(text: str | int | None, what: str = "cpuset") -> str | None:
    return None if text is None else format_cpuset(parse_cpuset(text, what))


# --------------------------------------------------------------------------- devices
def _int(value: str | None) -> int | None:
    return None if value in (None, "") else int(value)


def _specified(obj) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


@dataclass
class Disk:
    """A ``<disk>``; in a desired spec, None means "not specified, do not compare"."""

    target: str | None = None
    device: str | None = None  # disk | cdrom
    bus: str | None = None
    path: str | None = None  # file or block device
    pool: str | None = None
    volume: str | None = None
    format: str | None = None
    cache: str | None = None
    io: str | None = None
    discard: str | None = None
    iothread: int | None = None
    readonly: bool | None = None
    serial: str | None = None
    iotune: dict | None = None

    @classmethod
    def from_xml(cls, elem) -> Disk:
        source = elem.find("source")
        driver = elem.find("driver")
        iotune_elem = elem.find("iotune")
        disk_type = elem.get("type", "file")
        path = pool = volume = None
        if source is not None:
            if disk_type == "volume":
                pool, volume = source.get("pool"), source.get("volume")
            else:
                path = source.get("file") or source.get("dev")
        iotune = {}
        if iotune_elem is not None:
            iotune = {c.tag: int(c.text) for c in iotune_elem if c.tag in IOTUNE_KEYS and c.text}
        return cls(
            target=_xml.attr(elem, "target", "dev"),
            device=elem.get("device", "disk"),
            bus=_xml.attr(elem, "target", "bus"),
            path=path or ("" if disk_type != "volume" else None),
            pool=pool,
            volume=volume,
            format=driver.get("type") if driver is not None else None,
            cache=driver.get("cache") if driver is not None else None,
            io=driver.get("io") if driver is not None else None,
            discard=driver.get("discard") if driver is not None else None,
            iothread=_int(driver.get("iothread")) if driver is not None else None,
            readonly=elem.find("readonly") is not None,
            serial=_xml.text(elem, "serial"),
            iotune=iotune,
        )

    def as_dict(self) -> dict[str, Any]:
        return _specified(self)

    def project(self, want: Disk) -> dict[str, Any]:
        """This (actual) disk seen through what ``want`` specifies."""
        got = {}
        for name in want.as_dict():
            value = getattr(self, name)
            if name == "iotune":
                value = {k: v for k, v in (value or {}).items() if v}
            got[name] = value
        return got

    def build(self):
        elem = etree.Element("disk")
        self.apply(elem)
        return elem

    def apply(self, elem) -> None:
        """Write the specified settings into ``elem`` (an existing or new ``<disk>``)."""
        if self.device is not None:
            elem.set("device", self.device)
        elif elem.get("device") is None:
            elem.set("device", "disk")
        if self.volume is not None or self.path is not None:
            source = elem.find("source")
            if source is None:
                source = etree.Element("source")
            source.attrib.clear()
            if self.volume is not None:
                elem.set("type", "volume")
                source.set("pool", self.pool or "")
                source.set("volume", self.volume)
            elif self.path:
                is_block = self.path.startswith("/dev/")
                elem.set("type", "block" if is_block else "file")
                source.set("dev" if is_block else "file", self.path)
            else:  # an empty CD-ROM drive
                elem.set("type", "file")
                _xml.remove(source)
                source = None
            if source is not None and source.getparent() is None:
                _insert_first(elem, source, after=("driver",))
        elif elem.get("type") is None:
            elem.set("type", "file")
        driver_attrs = {
            "type": self.format,
            "cache": self.cache,
            "io": self.io,
            "discard": self.discard,
            "iothread": self.iothread,
        }
        if any(v is not None for v in driver_attrs.values()):
            driver = elem.find("driver")
            if driver is None:
                driver = etree.Element("driver")
                elem.insert(0, driver)
            driver.set("name", driver.get("name", "qemu"))
            for key, value in driver_attrs.items():
                if value is not None:
                    driver.set(key, str(value))
        if self.target is not None or self.bus is not None:
            target = _xml.ensure(elem, "target")
            if self.target is not None:
                target.set("dev", self.target)
            if self.bus is not None:
                target.set("bus", self.bus)
        if self.iotune is not None:
            _xml.remove(elem.find("iotune"))
            values = {k: v for k, v in self.iotune.items() if v}
            if values:
                iotune = etree.SubElement(elem, "iotune")
                for key in IOTUNE_KEYS:
                    if values.get(key):
                        _xml.sub(iotune, key, values[key])
        if self.readonly is not None:
            _xml.remove(elem.find("readonly"))
            if self.readonly:
                etree.SubElement(elem, "readonly")
        if self.serial is not None:
            _xml.remove(elem.find("serial"))
            if self.serial:
                _xml.sub(elem, "serial", self.serial)
        _move_last(elem, "address")


@dataclass
class Interface:
    type: str | None = None  # network | bridge | direct
    source: str | None = None  # network name, bridge name or host device
    mode: str | None = None  # macvtap mode
    model: str | None = None
    mac: str | None = None
    mtu: int | None = None

    @classmethod
    def from_xml(cls, elem) -> Interface:
        itype = elem.get("type")
        source = elem.find("source")
        src = mode = None
        if source is not None:
            src = source.get({"network": "network", "bridge": "bridge"}.get(itype, "dev"))
            mode = source.get("mode") if itype == "direct" else None
        mtu = _xml.attr(elem, "mtu", "size")
        mac = _xml.attr(elem, "mac", "address")
        return cls(
            type=itype,
            source=src,
            mode=mode,
            model=_xml.attr(elem, "model", "type"),
            mac=mac.lower() if mac else None,
            mtu=_int(mtu),
        )

    def as_dict(self) -> dict[str, Any]:
        return _specified(self)

    def project(self, want: Interface) -> dict[str, Any]:
        return {name: getattr(self, name) for name in want.as_dict()}

    def build(self):
        elem = etree.Element("interface")
        self.apply(elem)
        return elem

    def apply(self, elem) -> None:
        if self.type is not None:
            elem.set("type", self.type)
        itype = elem.get("type", "network")
        if self.mac is not None:
            mac = elem.find("mac")
            if mac is None:
                mac = etree.Element("mac")
                elem.insert(0, mac)
            mac.set("address", self.mac)
        if self.source is not None or self.mode is not None or self.type is not None:
            source = elem.find("source")
            old = dict(source.attrib) if source is not None else {}
            if source is None:
                source = etree.Element("source")
                _insert_first(elem, source, after=("mac",))
            source.attrib.clear()
            key = {"network": "network", "bridge": "bridge"}.get(itype, "dev")
            value = self.source
            if value is None:
                value = old.get("network") or old.get("bridge") or old.get("dev")
            if value is not None:
                source.set(key, value)
            if itype == "direct":
                source.set("mode", self.mode or old.get("mode") or "bridge")
        if self.model is not None:
            _xml.ensure(elem, "model").set("type", self.model)
        if self.mtu is not None:
            _xml.remove(elem.find("mtu"))
            if self.mtu:
                _xml.sub(elem, "mtu", size=self.mtu)
        _move_last(elem, "address")


@dataclass
class Serial:
    port: int
    type: str = "pty"  # pty | file | unix | tcp
    path: str | None = None  # file/unix path; host:port for tcp
    mode: str | None = None  # unix/tcp: bind | connect

    @classmethod
    def from_xml(cls, elem, index: int) -> Serial:
        stype = elem.get("type", "pty")
        source = elem.find("source")
        path = mode = None
        if source is not None and stype in ("file", "unix"):
            path = source.get("path")
            mode = source.get("mode") if stype == "unix" else None
        elif source is not None and stype == "tcp":
            path = f"{source.get('host', '')}:{source.get('service', '')}"
            mode = source.get("mode")
        port = _xml.attr(elem, "target", "port")
        return cls(port=int(port) if port is not None else index, type=stype, path=path, mode=mode)

    def as_dict(self) -> dict[str, Any]:
        return _specified(self)

    def build(self):
        elem = etree.Element("serial", type=self.type)
        if self.type in ("file", "unix"):
            attrs = {"path": self.path}
            if self.type == "unix":
                attrs = {"mode": self.mode or "bind", "path": self.path}
            _xml.sub(elem, "source", **attrs)
        elif self.type == "tcp":
            host, _sep, service = (self.path or "").rpartition(":")
            _xml.sub(elem, "source", mode=self.mode or "bind", host=host, service=service)
            _xml.sub(elem, "protocol", type="raw")
        _xml.sub(elem, "target", port=self.port)
        return elem


# --------------------------------------------------------------------------- XML helpers
def _insert_first(parent, child, after: tuple[str, ...] = ()) -> None:
    """Insert ``child`` right after the last of the ``after`` tags (or first)."""
    index = 0
    for i, existing in enumerate(parent):
        if existing.tag in after:
            index = i + 1
    parent.insert(index, child)


def _move_last(parent, tag: str) -> None:
    found = parent.find(tag)
    if found is not None:
        parent.remove(found)
        parent.append(found)


def _devices(root):
    return _xml.ensure(root, "devices")


def _place(root, elem, before: tuple[str, ...]) -> None:
    """Insert a top-level element before the first of ``before`` (libvirt's order)."""
    for i, existing in enumerate(root):
        if existing.tag in before:
            root.insert(i, elem)
            return
    root.append(elem)


_TOP_ORDER = (
    "name",
    "uuid",
    "genid",
    "title",
    "description",
    "metadata",
    "maxMemory",
    "memory",
    "currentMemory",
    "blkiotune",
    "memtune",
    "memoryBacking",
    "vcpu",
    "vcpus",
    "iothreads",
    "iothreadids",
    "cputune",
    "numatune",
    "resource",
    "sysinfo",
    "bootloader",
    "os",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "pm",
    "devices",
)


def top(root, tag: str):
    """The top-level ``tag`` element, created at its place in libvirt's order."""
    elem = root.find(tag)
    if elem is None:
        elem = etree.Element(tag)
        later = _TOP_ORDER[_TOP_ORDER.index(tag) + 1 :] if tag in _TOP_ORDER else ()
        _place(root, elem, later)
    return elem


def _drop_if_empty(elem) -> None:
    if elem is not None and len(elem) == 0 and not elem.attrib and not (elem.text or "").strip():
        _xml.remove(elem)


def _set_text(root, tag: str, value: str | None) -> None:
    if value:
        top(root, tag).text = value
    else:
        _xml.remove(root.find(tag))


# --------------------------------------------------------------------------- fields
@dataclass
class Field:
    """One managed setting: how to read it, project it onto a wish, and write it."""

    name: str
    read: Callable[[Any], Any]
    write: Callable[[Any, Any], None]
    project: Callable[[Any, Any], Any] = lambda actual, want: actual
    restart: bool = True  # whether a running guest needs a restart (unless applied live)


def _project_keys(actual: dict | None, want: dict) -> dict:
    actual = actual or {}
    return {k: actual.get(k) for k in want}


# -- simple scalars
def _read_title(root):
    return _xml.text(root, "title") or ""


def _read_description(root):
    return _xml.text(root, "description") or ""


def _read_tags(root):
    meta = root.find("metadata")
    if meta is None:
        return []
    tags = meta.find(f"{{{NS_VIRTOPS}}}tags")
    if tags is None:
        return []
    return sorted({t.text.strip() for t in tags if isinstance(t.tag, str) and t.text})


def tags_element(tags: list[str]):
    """Our metadata element (also given to ``setMetadata`` for the live definition)."""
    elem = etree.Element(f"{{{NS_VIRTOPS}}}tags", nsmap={NS_PREFIX: NS_VIRTOPS})
    for tag in sorted(set(tags)):
        etree.SubElement(elem, f"{{{NS_VIRTOPS}}}tag").text = tag
    return elem


def _write_tags(root, tags):
    meta = root.find("metadata")
    if meta is not None:
        _xml.remove(meta.find(f"{{{NS_VIRTOPS}}}tags"))
    if tags:
        top(root, "metadata").append(tags_element(tags))
    _drop_if_empty(root.find("metadata"))


def _read_mem(tag):
    def read(root):
        elem = root.find(tag)
        if elem is None or not elem.text:
            return None
        return from_libvirt(elem.text, elem.get("unit")) // (1024 * 1024)

    return read


def _write_mem(tag):
    def write(root, mib):
        elem = top(root, tag)
        elem.attrib.clear()
        elem.set("unit", "KiB")
        elem.text = str(mib * KIB_PER_MIB)

    return write


def _read_vcpus(root):
    elem = root.find("vcpu")
    if elem is None or not elem.text:
        return None
    return int(elem.get("current", elem.text))


def _read_max_vcpus(root):
    elem = root.find("vcpu")
    return int(elem.text) if elem is not None and elem.text else None


def _write_vcpus(root, value):
    elem = top(root, "vcpu")
    maximum = int(elem.text) if elem.text else value
    maximum = max(maximum, value)
    elem.text = str(maximum)
    if value < maximum:
        elem.set("current", str(value))
    else:
        elem.attrib.pop("current", None)


def _write_max_vcpus(root, value):
    elem = top(root, "vcpu")
    current = int(elem.get("current", elem.text or value))
    elem.text = str(value)
    if current < value:
        elem.set("current", str(current))
    else:
        elem.attrib.pop("current", None)


def _read_virt_type(root):
    return root.get("type")


def _write_virt_type(root, value):
    root.set("type", value)


def _read_cpu(root):
    cpu = root.find("cpu")
    if cpu is None:
        return {"mode": None, "model": None, "sockets": None, "cores": None, "threads": None}
    topo = cpu.find("topology")
    mode = cpu.get("mode") or ("custom" if cpu.find("model") is not None else None)
    return {
        "mode": mode,
        "model": _xml.text(cpu, "model"),
        "sockets": _int(topo.get("sockets")) if topo is not None else None,
        "cores": _int(topo.get("cores")) if topo is not None else None,
        "threads": _int(topo.get("threads")) if topo is not None else None,
    }


def _write_cpu(root, want):
    cpu = top(root, "cpu")
    if want.get("mode") is not None:
        cpu.set("mode", want["mode"])
        if want["mode"] != "custom" and want.get("model") is None:
            _xml.remove(cpu.find("model"))
            cpu.attrib.pop("match", None)
    if want.get("model") is not None:
        if want.get("mode") is None:
            cpu.set("mode", "custom")
        model = cpu.find("model")
        if model is None:
            model = etree.Element("model", fallback="allow")
            cpu.insert(0, model)
        model.text = want["model"]
    topo_keys = ("sockets", "cores", "threads")
    if any(want.get(k) is not None for k in topo_keys):
        topo = _xml.ensure(cpu, "topology")
        old = {k: topo.get(k) for k in topo_keys}
        topo.attrib.clear()
        topo.set("sockets", str(want.get("sockets") or old["sockets"] or 1))
        topo.set("dies", "1")
        topo.set("cores", str(want.get("cores") or old["cores"] or 1))
        topo.set("threads", str(want.get("threads") or old["threads"] or 1))


def _os(root):
    os_elem = top(root, "os")
    if os_elem.find("type") is None:
        os_elem.insert(0, etree.Element("type"))
        os_elem.find("type").text = "hvm"
    return os_elem


_OS_ORDER = ("type", "firmware", "loader", "nvram", "kernel", "initrd", "cmdline", "boot")


def _os_child(root, tag):
    os_elem = _os(root)
    elem = os_elem.find(tag)
    if elem is None:
        elem = etree.Element(tag)
        later = _OS_ORDER[_OS_ORDER.index(tag) + 1 :]
        _place(os_elem, elem, later)
    return elem


def _read_machine(root):
    return _xml.attr(root, "os/type", "machine")


def _write_machine(root, value):
    _os(root).find("type").set("machine", value)


def _read_firmware(root):
    os_elem = root.find("os")
    if os_elem is None:
        return "bios"
    if os_elem.get("firmware") == "efi":
        return "uefi"
    loader = os_elem.find("loader")
    if loader is not None and (
        loader.get("type") == "pflash" or "OVMF" in (loader.text or "").upper()
    ):
        return "uefi"
    return "bios"


def _write_firmware(root, value):
    os_elem = _os(root)
    if value == "uefi":
        if _read_firmware(root) != "uefi":
            os_elem.set("firmware", "efi")
    else:
        os_elem.attrib.pop("firmware", None)
        for tag in ("firmware", "loader", "nvram"):
            _xml.remove(os_elem.find(tag))


def _read_secure_boot(root):
    os_elem = root.find("os")
    if os_elem is None:
        return False
    for feature in os_elem.findall("firmware/feature"):
        if feature.get("name") == "secure-boot":
            return feature.get("enabled") == "yes"
    return _xml.attr(os_elem, "loader", "secure") == "yes"


def _write_secure_boot(root, value):
    os_elem = _os(root)
    loader = os_elem.find("loader")
    if loader is not None and loader.get("secure") is not None:
        loader.set("secure", "yes" if value else "no")
    if os_elem.get("firmware") == "efi" or loader is None:
        fw = _os_child(root, "firmware")
        for feature in fw.findall("feature"):
            if feature.get("name") == "secure-boot":
                fw.remove(feature)
        _xml.sub(fw, "feature", enabled=value, name="secure-boot")
    if value:  # secure boot needs SMM (and libvirt refuses to start without it)
        smm = _xml.ensure(top(root, "features"), "smm")
        smm.set("state", "on")


def _read_os_text(tag):
    def read(root):
        return _xml.text(root, f"os/{tag}") or ""

    return read


def _write_os_text(tag):
    def write(root, value):
        if value:
            _os_child(root, tag).text = value
        else:
            _xml.remove(_os(root).find(tag))

    return write


def _read_boot(root):
    return [b.get("dev") for b in root.findall("os/boot")]


def _write_boot(root, devs):
    os_elem = _os(root)
    for elem in os_elem.findall("boot"):
        os_elem.remove(elem)
    anchor = None
    for i, elem in enumerate(os_elem):
        if elem.tag in _OS_ORDER[: _OS_ORDER.index("boot")]:
            anchor = i
    position = (anchor + 1) if anchor is not None else len(os_elem)
    for offset, dev in enumerate(devs):
        os_elem.insert(position + offset, etree.Element("boot", dev=dev))


# -- devices: disks
def read_disks(root) -> list[Disk]:
    return [Disk.from_xml(e) for e in root.findall("devices/disk")]


@dataclass
class DiskWish:
    """The desired disks: the list, and whether it is exclusive (others are removed)."""

    disks: list[Disk]
    exclusive: bool


def _project_disks(actual: list[Disk], want: DiskWish):
    by_target = {d.target: d for d in actual}
    seen = set()
    result = []
    for disk in want.disks:
        have = by_target.get(disk.target)
        seen.add(disk.target)
        result.append(have.project(disk) if have is not None else None)
    if want.exclusive:
        result += [d.as_dict() for d in actual if d.target not in seen]
    return result


def _disks_after(want: DiskWish):
    return [d.as_dict() for d in want.disks]


def _write_disks(root, want: DiskWish):
    devices = _devices(root)
    existing = {_xml.attr(e, "target", "dev"): e for e in devices.findall("disk")}
    wanted = {d.target for d in want.disks}
    if want.exclusive:
        for target, elem in existing.items():
            if target not in wanted:
                devices.remove(elem)
    for disk in want.disks:
        elem = existing.get(disk.target)
        if elem is not None:
            disk.apply(elem)
        else:
            last = devices.findall("disk")
            new = disk.build()
            if last:
                last[-1].addnext(new)
            else:
                _insert_device(devices, new)


_DEVICE_ORDER = (
    "emulator",
    "disk",
    "controller",
    "filesystem",
    "interface",
    "serial",
    "console",
    "channel",
    "input",
    "graphics",
    "audio",
    "video",
    "watchdog",
    "memballoon",
    "rng",
)


def _insert_device(devices, elem) -> None:
    """Append a device after the last device of the same or an earlier kind."""
    order = _DEVICE_ORDER.index(elem.tag) if elem.tag in _DEVICE_ORDER else len(_DEVICE_ORDER)
    anchor = None
    for child in devices:
        rank = _DEVICE_ORDER.index(child.tag) if child.tag in _DEVICE_ORDER else len(_DEVICE_ORDER)
        if rank <= order:
            anchor = child
    if anchor is None:
        devices.insert(0, elem)
    else:
        anchor.addnext(elem)


# -- devices: interfaces
def read_interfaces(root) -> list[Interface]:
    return [Interface.from_xml(e) for e in root.findall("devices/interface")]


def match_interfaces(actual: list[Interface], want: list[Interface]) -> list[int | None]:
    """For each wished NIC, the index of the actual NIC it is (by MAC, else in order)."""
    result: list[int | None] = [None] * len(want)
    used: set[int] = set()
    by_mac = {nic.mac: i for i, nic in enumerate(actual) if nic.mac}
    for i, nic in enumerate(want):
        if nic.mac and nic.mac in by_mac:
            result[i] = by_mac[nic.mac]
            used.add(by_mac[nic.mac])
    free = [
        i for i, nic in enumerate(actual) if i not in used and nic.mac not in _wanted_macs(want)
    ]
    for i, nic in enumerate(want):
        if result[i] is None and not nic.mac and free:
            result[i] = free.pop(0)
    return result


def _wanted_macs(want: list[Interface]) -> set[str]:
    return {nic.mac for nic in want if nic.mac}


def _project_interfaces(actual: list[Interface], want: list[Interface]):
    matches = match_interfaces(actual, want)
    result = [
        actual[idx].project(nic) if idx is not None else None for nic, idx in zip(want, matches)
    ]
    result += [nic.as_dict() for i, nic in enumerate(actual) if i not in matches]
    return result


def _write_interfaces(root, want: list[Interface]):
    devices = _devices(root)
    elems = devices.findall("interface")
    matches = match_interfaces([Interface.from_xml(e) for e in elems], want)
    for i, elem in enumerate(elems):
        if i not in matches:
            devices.remove(elem)
    for nic, idx in zip(want, matches):
        if idx is not None:
            nic.apply(elems[idx])
        else:
            _insert_device(devices, nic.build())


# -- devices: graphics, serials, agent, rng, watchdog
def _read_graphics(root):
    elems = root.findall("devices/graphics")
    if not elems:
        return {"type": "none", "listen": None, "port": None, "password": None}
    g = elems[0]
    listen = g.get("listen") or _xml.attr(g, "listen", "address")
    port = g.get("port")
    autoport = g.get("autoport") == "yes" or port in (None, "-1")
    return {
        "type": g.get("type"),
        "listen": listen,
        "port": None if autoport else int(port),
        # a keyed digest, never the password: set only when read with VIR_DOMAIN_XML_SECURE
        "password": fingerprint(g.get("passwd")),
    }


def _graphics_after(want: dict[str, Any]) -> dict[str, Any]:
    """The wished graphics as compared and shown: the password as its digest ("" is None)."""
    if "password" not in want:
        return want
    return dict(want, password=fingerprint(want["password"]))


def _write_graphics(root, want):
    devices = _devices(root)
    old = devices.find("graphics")
    old_attrs = dict(old.attrib) if old is not None else {}
    for elem in devices.findall("graphics"):
        devices.remove(elem)
    gtype = want.get("type") or old_attrs.get("type") or "none"
    if gtype == "none":
        return
    elem = etree.Element("graphics", type=gtype)
    port = want.get("port")
    if port:
        elem.set("port", str(port))
        elem.set("autoport", "no")
    else:
        elem.set("autoport", "yes")
    listen = want.get("listen") or old_attrs.get("listen")
    if listen:
        elem.set("listen", listen)
        _xml.sub(elem, "listen", type="address", address=listen)
    # the console keeps its password unless one is given; password "" removes it
    password = want["password"] if "password" in want else old_attrs.get("passwd")
    if password:
        elem.set("passwd", password)
        valid_to = None if "password" in want else old_attrs.get("passwdValidTo")
        if valid_to:
            elem.set("passwdValidTo", valid_to)
    _insert_device(devices, elem)


def _read_serials(root):
    return [Serial.from_xml(e, i).as_dict() for i, e in enumerate(root.findall("devices/serial"))]


def _project_serials(actual, want):
    by_port = {s["port"]: s for s in actual}
    ports = {s["port"] for s in want}
    result = [
        {k: by_port[s["port"]].get(k) for k in s} if s["port"] in by_port else None for s in want
    ]
    return result + [s for s in actual if s["port"] not in ports]


def _write_serials(root, want):
    devices = _devices(root)
    for elem in devices.findall("serial"):
        devices.remove(elem)
    for elem in devices.findall("console"):
        if _xml.attr(elem, "target", "type") in (None, "serial"):
            devices.remove(elem)  # libvirt derives the console of serial 0 again
    for spec in sorted(want, key=lambda s: s["port"]):
        _insert_device(devices, Serial(**spec).build())


def _agent_channels(root):
    return [
        e
        for e in root.findall("devices/channel")
        if _xml.attr(e, "target", "name") == AGENT_CHANNEL
    ]


def _read_agent(root):
    return bool(_agent_channels(root))


def _write_agent(root, value):
    if value and not _agent_channels(root):
        elem = etree.Element("channel", type="unix")
        _xml.sub(elem, "target", type="virtio", name=AGENT_CHANNEL)
        _insert_device(_devices(root), elem)
    elif not value:
        for elem in _agent_channels(root):
            _xml.remove(elem)


def _read_rng(root):
    return root.find("devices/rng") is not None


def _write_rng(root, value):
    if value and root.find("devices/rng") is None:
        elem = etree.Element("rng", model="virtio")
        _xml.sub(elem, "backend", "/dev/urandom", model="random")
        _insert_device(_devices(root), elem)
    elif not value:
        for elem in root.findall("devices/rng"):
            _xml.remove(elem)


def _read_watchdog(root):
    elem = root.find("devices/watchdog")
    if elem is None:
        return {"model": "none", "action": None}
    return {"model": elem.get("model"), "action": elem.get("action", "reset")}


def _write_watchdog(root, want):
    devices = _devices(root)
    for elem in devices.findall("watchdog"):
        devices.remove(elem)
    if want.get("model") and want["model"] != "none":
        elem = etree.Element("watchdog", model=want["model"], action=want.get("action") or "reset")
        _insert_device(devices, elem)


# -- tuning
def _read_pins(tag, key):
    def read(root):
        return {
            int(e.get(key)): canonical_cpuset(e.get("cpuset"))
            for e in root.findall(f"cputune/{tag}")
            if e.get(key) is not None and e.get("cpuset")
        }

    return read


_CPUTUNE_ORDER = (
    "shares",
    "period",
    "quota",
    "global_period",
    "global_quota",
    "emulator_period",
    "emulator_quota",
    "iothread_period",
    "iothread_quota",
    "vcpupin",
    "emulatorpin",
    "iothreadpin",
    "emulatorsched",
    "vcpusched",
    "iothreadsched",
    "cachetune",
    "memorytune",
)


def _cputune_child(root, tag):
    cputune = top(root, "cputune")
    elem = etree.Element(tag)
    later = _CPUTUNE_ORDER[_CPUTUNE_ORDER.index(tag) + 1 :]
    _place(cputune, elem, later)
    return elem


def _write_pins(tag, key):
    def write(root, pins):
        cputune = top(root, "cputune")
        for elem in cputune.findall(tag):
            cputune.remove(elem)
        for ident in sorted(pins, reverse=True):
            elem = _cputune_child(root, tag)
            elem.set(key, str(ident))
            elem.set("cpuset", pins[ident])
        # _cputune_child inserts before later tags; keep ascending order of ids
        pinned = cputune.findall(tag)
        for elem in sorted(pinned, key=lambda e: int(e.get(key))):
            elem.getparent().remove(elem)
        for elem in sorted(pinned, key=lambda e: int(e.get(key))):
            _place(cputune, elem, _CPUTUNE_ORDER[_CPUTUNE_ORDER.index(tag) + 1 :])
        _drop_if_empty(cputune)

    return write


def _read_cputune_text(tag, conv=int):
    def read(root):
        value = _xml.text(root, f"cputune/{tag}")
        return conv(value) if value is not None else None

    return read


def _write_cputune_text(tag):
    def write(root, value):
        cputune = top(root, "cputune")
        _xml.remove(cputune.find(tag))
        if value is not None and value != "":
            _cputune_child(root, tag).text = str(value)
        _drop_if_empty(cputune)

    return write


def _read_emulator_pin(root):
    return canonical_cpuset(_xml.attr(root, "cputune/emulatorpin", "cpuset"))


def _write_emulator_pin(root, value):
    cputune = top(root, "cputune")
    _xml.remove(cputune.find("emulatorpin"))
    if value:
        _cputune_child(root, "emulatorpin").set("cpuset", value)
    _drop_if_empty(cputune)


def _read_iothreads(root):
    value = _xml.text(root, "iothreads")
    return int(value) if value else 0


def _write_iothreads(root, value):
    _xml.remove(root.find("iothreadids"))
    if value:
        top(root, "iothreads").text = str(value)
    else:
        _xml.remove(root.find("iothreads"))


def _read_numa(root):
    elem = root.find("numatune/memory")
    if elem is None:
        return {"mode": None, "nodeset": None}
    nodeset = elem.get("nodeset")
    return {"mode": elem.get("mode", "strict"), "nodeset": canonical_cpuset(nodeset)}


def _write_numa(root, want):
    numatune = top(root, "numatune")
    _xml.remove(numatune.find("memory"))
    if want.get("mode") or want.get("nodeset"):
        elem = etree.Element("memory", mode=want.get("mode") or "strict")
        if want.get("nodeset"):
            elem.set("nodeset", want["nodeset"])
        numatune.insert(0, elem)
    _drop_if_empty(numatune)


def _read_hugepages(root):
    hp = root.find("memoryBacking/hugepages")
    if hp is None:
        return {"enabled": False, "size": None}
    page = hp.find("page")
    size = None
    if page is not None and page.get("size"):
        size = from_libvirt(page.get("size"), page.get("unit") or "KiB") // 1024
    return {"enabled": True, "size": size}


def _write_hugepages(root, want):
    backing = top(root, "memoryBacking")
    _xml.remove(backing.find("hugepages"))
    if want.get("enabled"):
        hp = etree.Element("hugepages")
        if want.get("size"):
            _xml.sub(hp, "page", size=want["size"], unit="KiB")
        backing.insert(0, hp)
    _drop_if_empty(backing)


def _read_locked(root):
    return root.find("memoryBacking/locked") is not None


def _write_locked(root, value):
    backing = top(root, "memoryBacking")
    _xml.remove(backing.find("locked"))
    if value:
        elem = etree.Element("locked")
        hp = backing.find("hugepages")
        if hp is not None:
            hp.addnext(elem)
        else:
            backing.insert(0, elem)
    _drop_if_empty(backing)


def _read_memtune(tag):
    def read(root):
        elem = root.find(f"memtune/{tag}")
        if elem is None or not elem.text:
            return None
        return from_libvirt(elem.text, elem.get("unit") or "KiB") // (1024 * 1024)

    return read


def _project_no_limit(actual, want):
    """A limit of 0 asks for no limit, which reads back as None."""
    return 0 if actual is None and want == 0 else actual


def _write_memtune(tag):
    order = ("hard_limit", "soft_limit", "swap_hard_limit", "min_guarantee")

    def write(root, mib):
        memtune = top(root, "memtune")
        _xml.remove(memtune.find(tag))
        if mib:
            elem = etree.Element(tag, unit="KiB")
            elem.text = str(mib * KIB_PER_MIB)
            _place(memtune, elem, order[order.index(tag) + 1 :])
        _drop_if_empty(memtune)

    return write


def _read_blkio_weight(root):
    value = _xml.text(root, "blkiotune/weight")
    return int(value) if value else None


def _write_blkio_weight(root, value):
    blkio = top(root, "blkiotune")
    _xml.remove(blkio.find("weight"))
    if value:
        elem = etree.Element("weight")
        elem.text = str(value)
        blkio.insert(0, elem)
    _drop_if_empty(blkio)


def _read_cachetune(root):
    result = []
    for tune in root.findall("cputune/cachetune"):
        vcpus = canonical_cpuset(tune.get("vcpus"))
        for cache in tune.findall("cache"):
            result.append(
                {
                    "vcpus": vcpus,
                    "cache_id": int(cache.get("id", 0)),
                    "level": int(cache.get("level", 3)),
                    "type": cache.get("type", "both"),
                    "size": from_libvirt(cache.get("size"), cache.get("unit") or "B") // 1024,
                }
            )
    return sorted(result, key=lambda c: (c["vcpus"], c["cache_id"], c["type"]))


def _write_cachetune(root, want):
    cputune = top(root, "cputune")
    for elem in cputune.findall("cachetune"):
        cputune.remove(elem)
    groups: dict[str, list[dict]] = {}
    for entry in want:
        groups.setdefault(entry["vcpus"], []).append(entry)
    for vcpus in sorted(groups):
        tune = _cputune_child(root, "cachetune")
        tune.set("vcpus", vcpus)
        for entry in groups[vcpus]:
            _xml.sub(
                tune,
                "cache",
                id=entry["cache_id"],
                level=entry["level"],
                type=entry["type"],
                size=entry["size"],
                unit="KiB",
            )
    _drop_if_empty(cputune)


FIELDS: list[Field] = [
    Field("virt_type", _read_virt_type, _write_virt_type),
    Field("title", _read_title, lambda r, v: _set_text(r, "title", v), restart=False),
    Field(
        "description",
        _read_description,
        lambda r, v: _set_text(r, "description", v),
        restart=False,
    ),
    Field("tags", _read_tags, _write_tags, restart=False),
    Field("max_memory", _read_mem("memory"), _write_mem("memory")),
    Field("memory", _read_mem("currentMemory"), _write_mem("currentMemory"), restart=False),
    Field("max_vcpus", _read_max_vcpus, _write_max_vcpus),
    Field("vcpus", _read_vcpus, _write_vcpus, restart=False),
    Field("cpu", _read_cpu, _write_cpu, _project_keys),
    Field("machine", _read_machine, _write_machine),
    Field("firmware", _read_firmware, _write_firmware),
    Field("secure_boot", _read_secure_boot, _write_secure_boot),
    Field("boot", _read_boot, _write_boot),
    Field("kernel", _read_os_text("kernel"), _write_os_text("kernel")),
    Field("initrd", _read_os_text("initrd"), _write_os_text("initrd")),
    Field("cmdline", _read_os_text("cmdline"), _write_os_text("cmdline")),
    Field("disks", read_disks, _write_disks, _project_disks, restart=False),
    Field("interfaces", read_interfaces, _write_interfaces, _project_interfaces, restart=False),
    Field("graphics", _read_graphics, _write_graphics, _project_keys),
    Field("serials", _read_serials, _write_serials, _project_serials),
    Field("guest_agent", _read_agent, _write_agent),
    Field("rng", _read_rng, _write_rng),
    Field("watchdog", _read_watchdog, _write_watchdog, _project_keys),
    Field("tuning.vcpu_pins", _read_pins("vcpupin", "vcpu"), _write_pins("vcpupin", "vcpu")),
    Field("tuning.emulator_pin", _read_emulator_pin, _write_emulator_pin, restart=False),
    Field("tuning.iothreads", _read_iothreads, _write_iothreads),
    Field(
        "tuning.iothread_pins",
        _read_pins("iothreadpin", "iothread"),
        _write_pins("iothreadpin", "iothread"),
    ),
    Field("tuning.cpu_shares", _read_cputune_text("shares"), _write_cputune_text("shares")),
    Field("tuning.cpu_period", _read_cputune_text("period"), _write_cputune_text("period")),
    Field("tuning.cpu_quota", _read_cputune_text("quota"), _write_cputune_text("quota")),
    Field("tuning.numa_memory", _read_numa, _write_numa, _project_keys),
    Field("tuning.hugepages", _read_hugepages, _write_hugepages, _project_keys),
    Field("tuning.memory_locked", _read_locked, _write_locked),
    Field(
        "tuning.memory_hard_limit",
        _read_memtune("hard_limit"),
        _write_memtune("hard_limit"),
        _project_no_limit,
    ),
    Field(
        "tuning.memory_soft_limit",
        _read_memtune("soft_limit"),
        _write_memtune("soft_limit"),
        _project_no_limit,
    ),
    Field("tuning.blkio_weight", _read_blkio_weight, _write_blkio_weight),
    Field("tuning.cachetune", _read_cachetune, _write_cachetune),
]
FIELDS_BY_NAME = {f.name: f for f in FIELDS}

# Settings whose live definition is the same text as the inactive one while the guest runs,
# so comparing the two shows a change still waiting for a restart.
RESTART_VISIBLE = (
    "virt_type",
    "max_memory",
    "max_vcpus",
    "machine",
    "boot",
    "kernel",
    "initrd",
    "cmdline",
    "serials",
    "guest_agent",
    "rng",
    "watchdog",
    "tuning.iothreads",
    "tuning.numa_memory",
    "tuning.hugepages",
    "tuning.memory_locked",
)


def after_value(name: str, want: Any) -> Any:
    """How a wished value shows in the diff (plain data)."""
    if isinstance(want, DiskWish):
        return _disks_after(want)
    if name == "interfaces":
        return [nic.as_dict() for nic in want]
    if name == "graphics":
        return _graphics_after(want)
    if isinstance(want, dict) and name in ("tuning.vcpu_pins", "tuning.iothread_pins"):
        return {str(k): v for k, v in sorted(want.items())}
    return want


def before_value(name: str, value: Any) -> Any:
    if name in ("tuning.vcpu_pins", "tuning.iothread_pins") and isinstance(value, dict):
        return {str(k): v for k, v in sorted(value.items())}
    return value


def compare(root, desired: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, before, after)`` of every wished field, in the order of ``FIELDS``."""
    result = []
    for fld in FIELDS:
        if fld.name not in desired:
            continue
        want = desired[fld.name]
        before = fld.project(fld.read(root), want) if root is not None else None
        result.append((fld.name, before_value(fld.name, before), after_value(fld.name, want)))
    return result


def write(root, desired: dict[str, Any], names: list[str]) -> None:
    for fld in FIELDS:
        if fld.name in names:
            fld.write(root, desired[fld.name])


# --------------------------------------------------------------------------- skeleton
def skeleton(name: str, virt_type: str):
    """The smallest definition a new guest starts from (the fields fill in the rest)."""
    root = etree.Element("domain", type=virt_type)
    _xml.sub(root, "name", name)
    _xml.sub(root, "memory", "0", unit="KiB")
    _xml.sub(root, "vcpu", "1")
    os_elem = _xml.sub(root, "os")
    _xml.sub(os_elem, "type", "hvm")
    features = _xml.sub(root, "features")
    _xml.sub(features, "acpi")  # ACPI power button: graceful shutdown
    _xml.sub(features, "apic")
    _xml.sub(root, "clock", offset="utc")
    _xml.sub(root, "on_poweroff", "destroy")
    _xml.sub(root, "on_reboot", "restart")
    _xml.sub(root, "on_crash", "destroy")
    _xml.sub(root, "devices")
    return root


# --------------------------------------------------------------------------- xml option
# Repeatable elements outside <devices>, matched by these attributes.
_IDENTITY = {
    "vcpupin": ("vcpu",),
    "iothreadpin": ("iothread",),
    "cachetune": ("vcpus",),
    "memorytune": ("vcpus",),
    "feature": ("name",),
    "boot": ("dev",),
    "timer": ("name",),
    "cell": ("id",),
    "memnode": ("cellid",),
    "entry": ("name",),
    "page": ("size",),
}


def parse_fragment(text: str):
    """The user's ``xml``: a whole ``<domain>`` or one element of it, as a ``<domain>``."""
    elem = _xml.parse(text, "xml option")
    if elem.tag == "domain":
        return elem
    wrapper = etree.Element("domain")
    wrapper.append(elem)
    return wrapper


def contains(actual, wanted) -> bool:
    """Whether ``actual`` already has every attribute, text and child of ``wanted``."""
    if actual.tag != wanted.tag:
        return False
    for key, value in wanted.attrib.items():
        if actual.get(key) != value:
            return False
    if (wanted.text or "").strip() and (wanted.text or "").strip() != (actual.text or "").strip():
        return False
    children = [c for c in actual if isinstance(c.tag, str)]
    return all(any(contains(c, w) for c in children) for w in wanted if isinstance(w.tag, str))


def _candidates(parent, wanted):
    same = [c for c in parent if c.tag == wanted.tag]
    keys = _IDENTITY.get(wanted.tag)
    if keys and all(wanted.get(k) is not None for k in keys):
        return [c for c in same if all(c.get(k) == wanted.get(k) for k in keys)]
    return same


def merge(actual, wanted, *, in_devices: bool = False) -> None:
    """Merge ``wanted`` into ``actual`` (both the same element) in place."""
    for key, value in wanted.attrib.items():
        actual.set(key, value)
    if (wanted.text or "").strip():
        actual.text = wanted.text
    for child in wanted:
        if not isinstance(child.tag, str):
            continue
        if any(contains(c, child) for c in actual if c.tag == child.tag):
            continue
        candidates = [] if in_devices else _candidates(actual, child)
        if candidates:
            merge(candidates[0], child, in_devices=child.tag == "devices")
        elif actual.tag == "domain" and child.tag in _TOP_ORDER:
            merge(top(actual, child.tag), child, in_devices=child.tag == "devices")
        else:
            actual.append(copy.deepcopy(child))


def xml_parts(root, fragment) -> str:
    """The parts of ``root`` the fragment touches (for the diff)."""
    parts = []
    for child in fragment:
        if not isinstance(child.tag, str):
            continue
        if child.tag == "devices":
            for dev in child:
                found = [d for d in root.findall("devices/" + dev.tag) if contains(d, dev)]
                parts += [_xml.to_string(d) for d in found]
            continue
        found = root.find(child.tag) if child.tag != "name" else None
        if found is not None:
            parts.append(_xml.to_string(found))
    return "".join(parts)


# --------------------------------------------------------------------------- targets
def next_target(bus: str, taken: set[str]) -> str:
    prefix = TARGET_PREFIX.get(bus, "vd")
    for i in range(26 * 27):
        suffix = _letters(i)
        if prefix + suffix not in taken:
            return prefix + suffix
    raise KvmValidationError(f"No free disk target name left for bus {bus}")


def _letters(i: int) -> str:
    result = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        result = chr(ord("a") + rem) + result
    return result


def summarize(root) -> dict[str, Any]:
    """The managed settings of a definition, as plain data (used by domain_info too)."""
    result: dict[str, Any] = {
        "name": _xml.text(root, "name"),
        "uuid": _xml.text(root, "uuid"),
    }
    for fld in FIELDS:
        value = fld.read(root)
        if fld.name == "disks":
            value = [d.as_dict() for d in value]
        elif fld.name == "interfaces":
            value = [n.as_dict() for n in value]
        value = before_value(fld.name, value)
        parts = fld.name.split(".")
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return result
