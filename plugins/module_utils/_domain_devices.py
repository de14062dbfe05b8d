# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The devices of a domain as typed dataclasses: ``Disk``, ``Interface``, ``Serial``.

Each reads itself ``from_xml``, shows what was specified (``as_dict``), sees an actual
device through a wished one (``project``) and writes a new element (``build``) or patches an
existing one (``apply``), keeping what libvirt generated (addresses, aliases, MACs).
In a desired spec, None means "not specified, do not compare".
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from . import _xml
from ._domain_xml import insert_first, move_last
from ._errors import KvmValidationError

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None

AGENT_CHANNEL = "org.qemu.guest_agent.0"
IOTUNE_KEYS = (
    "total_bytes_sec",
    "read_bytes_sec",
    "write_bytes_sec",
    "total_iops_sec",
    "read_iops_sec",
    "write_iops_sec",
)
TARGET_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "usb": "sd", "ide": "hd"}


def int_or_none(value: str | None) -> int | None:
    return None if value in (None, "") else int(value)


def _specified(obj) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


class _Device:
    """What every device dataclass shares: ``tag`` is its element's name."""

    tag: ClassVar[str]

    def as_dict(self) -> dict[str, Any]:
        return _specified(self)

    def project(self, want) -> dict[str, Any]:
        """This (actual) device seen through what ``want`` specifies."""
        return {name: getattr(self, name) for name in want.as_dict()}

    def build(self):
        elem = etree.Element(self.tag)
        self.apply(elem)
        return elem

    def apply(self, elem) -> None:
        raise NotImplementedError


@dataclass
class Disk(_Device):
    """A ``<disk>``; in a desired spec, None means "not specified, do not compare"."""

    tag: ClassVar[str] = "disk"

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
            iothread=int_or_none(driver.get("iothread")) if driver is not None else None,
            readonly=elem.find("readonly") is not None,
            serial=_xml.text(elem, "serial"),
            iotune=iotune,
        )

    def project(self, want: Disk) -> dict[str, Any]:
        got = super().project(want)
        if "iotune" in got:
            got["iotune"] = {k: v for k, v in (got["iotune"] or {}).items() if v}
        return got

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
                insert_first(elem, source, after=("driver",))
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
        move_last(elem, "address")


@dataclass
class Interface(_Device):
    tag: ClassVar[str] = "interface"

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
            mtu=int_or_none(mtu),
        )

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
                insert_first(elem, source, after=("mac",))
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
        move_last(elem, "address")


@dataclass
class Serial(_Device):
    tag: ClassVar[str] = "serial"

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

    def build(self):
        elem = etree.Element(self.tag, type=self.type)
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


def read_disks(root) -> list[Disk]:
    return [Disk.from_xml(e) for e in root.findall("devices/disk")]


@dataclass
class DiskWish:
    """The desired disks: the list, and whether it is exclusive (others are removed)."""

    disks: list[Disk]
    exclusive: bool


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
