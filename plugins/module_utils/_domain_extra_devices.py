# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The domain's typed devices beyond disks and NICs: controllers, TPM, video, sound, inputs,
SMBIOS system information, virtiofs shared folders and host devices (PCI, USB, mdev).

Each has a parser of its option (``*_wish``, pure, raising ``KvmValidationError``), a reader
of a definition into plain comparable data, and a writer that patches a definition (keeping
what libvirt generated: addresses, aliases, the controllers and PS/2 inputs it adds itself).
``_domain_model.FIELDS`` ties them together.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from . import _xml
from ._domain_xml import TOP_ORDER, devices_of, drop_if_empty, insert_device, place, top
from ._errors import KvmValidationError

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None


def _int(value: str | None) -> int | None:
    return None if value in (None, "") else int(value)


def _clean(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if v is not None}


# -- controllers: listed ones are ensured (by type and index); libvirt's own stay
CONTROLLER_DRIVER = ("queues", "iothread")


def controllers_wish(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    seen = set()
    for i, spec in enumerate(specs):
        entry = _clean(
            {
                "type": spec.get("type") or "scsi",
                "index": spec.get("index") if spec.get("index") is not None else 0,
                "model": spec.get("model"),
                "queues": spec.get("queues"),
                "iothread": spec.get("iothread"),
            }
        )
        key = (entry["type"], entry["index"])
        if key in seen:
            raise KvmValidationError(
                f"controllers[{i}]: controller {entry['type']} index {entry['index']} is "
                "given twice"
            )
        seen.add(key)
        if entry.get("queues") is not None and entry["queues"] < 1:
            raise KvmValidationError(f"controllers[{i}]: queues must be at least 1")
        if ("queues" in entry or "iothread" in entry) and entry["type"] not in ("scsi",):
            raise KvmValidationError(
                f"controllers[{i}]: queues and iothread are for scsi (virtio-scsi) controllers"
            )
        if ("queues" in entry or "iothread" in entry) and entry.get("model", "virtio-scsi") != (
            "virtio-scsi"
        ):
            raise KvmValidationError(
                f"controllers[{i}]: queues and iothread need model virtio-scsi, not "
                f"{entry['model']}"
            )
        if entry["type"] == "scsi" and "model" not in entry:
            entry["model"] = "virtio-scsi"
        result.append(entry)
    return sorted(result, key=lambda c: (c["type"], c["index"]))


def _controller(elem) -> dict[str, Any]:
    driver = elem.find("driver")
    return _clean(
        {
            "type": elem.get("type"),
            "index": _int(elem.get("index")) or 0,
            "model": elem.get("model"),
            "queues": _int(driver.get("queues")) if driver is not None else None,
            "iothread": _int(driver.get("iothread")) if driver is not None else None,
        }
    )


def read_controllers(root) -> list[dict[str, Any]]:
    return [_controller(e) for e in root.findall("devices/controller")]


def project_controllers(actual: list[dict[str, Any]], want: list[dict[str, Any]]):
    by_key = {(c["type"], c["index"]): c for c in actual}
    result = []
    for entry in want:
        have = by_key.get((entry["type"], entry["index"]))
        result.append({k: have.get(k) for k in entry} if have is not None else None)
    return result


def write_controllers(root, want: list[dict[str, Any]]) -> None:
    devices = devices_of(root)
    existing = {
        (e.get("type"), _int(e.get("index")) or 0): e for e in devices.findall("controller")
    }
    for entry in want:
        elem = existing.get((entry["type"], entry["index"]))
        if elem is None:
            elem = etree.Element("controller", type=entry["type"], index=str(entry["index"]))
            insert_device(devices, elem)
        if entry.get("model"):
            elem.set("model", entry["model"])
        driver_attrs = {k: entry.get(k) for k in CONTROLLER_DRIVER}
        if any(v is not None for v in driver_attrs.values()):
            driver = elem.find("driver")
            if driver is None:
                driver = etree.Element("driver")
                elem.insert(0, driver)
            for key, value in driver_attrs.items():
                if value is not None:
                    driver.set(key, str(value))


def scsi_controller_indexes(f: dict[str, Any]) -> set[int]:
    return {c["index"] for c in f.get("controllers") or [] if c["type"] == "scsi"}


# -- TPM: one, emulated by swtpm
def tpm_wish(spec: dict[str, Any]) -> dict[str, Any]:
    model = spec.get("model") or "tpm-crb"
    if model == "none":
        if spec.get("persistent_state"):
            raise KvmValidationError("tpm model none takes no persistent_state")
        return {"model": "none"}
    version = spec.get("version") or "2.0"
    if model == "tpm-crb" and version != "2.0":
        raise KvmValidationError("tpm model tpm-crb needs version 2.0 (TPM 1.2 is tpm-tis only)")
    return {
        "model": model,
        "version": version,
        "persistent_state": bool(spec.get("persistent_state")),
    }


def read_tpm(root) -> dict[str, Any]:
    elem = root.find("devices/tpm")
    if elem is None:
        return {"model": "none"}
    backend = elem.find("backend")
    result: dict[str, Any] = {"model": elem.get("model") or "tpm-tis"}
    if backend is not None and backend.get("type") == "emulator":
        result["version"] = backend.get("version") or "1.2"
        result["persistent_state"] = backend.get("persistent_state") == "yes"
    else:  # a passthrough TPM: not modelled, shown by its backend type
        result["backend"] = backend.get("type") if backend is not None else None
    return result


def write_tpm(root, want: dict[str, Any]) -> None:
    devices = devices_of(root)
    for elem in devices.findall("tpm"):
        devices.remove(elem)
    if want["model"] == "none":
        return
    elem = etree.Element("tpm", model=want["model"])
    backend = _xml.sub(elem, "backend", type="emulator", version=want["version"])
    if want.get("persistent_state"):
        backend.set("persistent_state", "yes")
    insert_device(devices, elem)


# -- video: the primary video device
def video_wish(spec: dict[str, Any]) -> dict[str, Any]:
    want = _clean({"model": spec.get("model") or "virtio", "heads": spec.get("heads")})
    if want["model"] == "none" and "heads" in want:
        raise KvmValidationError("video model none takes no heads")
    if want.get("heads") is not None and not 1 <= want["heads"] <= 16:
        raise KvmValidationError(f"video.heads {want['heads']} is out of range 1-16")
    return want


def read_video(root) -> dict[str, Any]:
    elem = root.find("devices/video/model")
    if elem is None:
        return {"model": "none"}
    return _clean({"model": elem.get("type"), "heads": _int(elem.get("heads"))})


def write_video(root, want: dict[str, Any]) -> None:
    devices = devices_of(root)
    videos = devices.findall("video")
    for extra in videos[1:]:
        devices.remove(extra)
    if videos:
        elem = videos[0]
    else:
        elem = etree.Element("video")
        insert_device(devices, elem)
    model = elem.find("model")
    if model is not None:
        elem.remove(model)
    # a model's own attributes (vram, primary, acceleration) belong to the old model
    model = etree.Element("model", type=want["model"])
    if want.get("heads") is not None:
        model.set("heads", str(want["heads"]))
    elif want["model"] != "none":
        model.set("heads", "1")
    if want["model"] != "none":
        model.set("primary", "yes")
    elem.insert(0, model)
    if want["model"] == "none":
        for child in elem.findall("address"):
            elem.remove(child)


# -- sound: the complete list of sound cards
def sound_wish(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"model": s.get("model") or "ich9"} for s in specs]


def read_sound(root) -> list[dict[str, Any]]:
    return [{"model": e.get("model")} for e in root.findall("devices/sound")]


def write_sound(root, want: list[dict[str, Any]]) -> None:
    devices = devices_of(root)
    old = devices.findall("sound")
    for i, entry in enumerate(want):
        if i < len(old) and old[i].get("model") == entry["model"]:
            continue  # the same card keeps its address
        elem = etree.Element("sound", model=entry["model"])
        if i < len(old):
            old[i].addprevious(elem)
            devices.remove(old[i])
        else:
            insert_device(devices, elem)
    for elem in old[len(want) :]:
        devices.remove(elem)


# -- inputs: the complete list, except the PS/2 mouse and keyboard libvirt adds to x86 guests
def inputs_wish(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    for i, spec in enumerate(specs):
        entry = {"type": spec["type"], "bus": spec.get("bus") or "usb"}
        if entry["bus"] == "ps2":
            raise KvmValidationError(
                f"inputs[{i}]: bus ps2 is libvirt's own mouse and keyboard on x86 guests, "
                "neither listed nor compared; use usb or virtio"
            )
        if entry["type"] == "tablet" and entry["bus"] != "usb" and entry["bus"] != "virtio":
            raise KvmValidationError(f"inputs[{i}]: a tablet is on bus usb or virtio")
        result.append(entry)
    return sorted(result, key=lambda e: (e["type"], e["bus"]))


def _inputs(root):
    return [e for e in root.findall("devices/input") if e.get("bus") != "ps2"]


def read_inputs(root) -> list[dict[str, Any]]:
    return sorted(
        ({"type": e.get("type"), "bus": e.get("bus") or "usb"} for e in _inputs(root)),
        key=lambda e: (e["type"], e["bus"]),
    )


def write_inputs(root, want: list[dict[str, Any]]) -> None:
    devices = devices_of(root)
    remaining = list(want)
    for elem in _inputs(root):
        entry = {"type": elem.get("type"), "bus": elem.get("bus") or "usb"}
        if entry in remaining:
            remaining.remove(entry)  # kept with its address
        else:
            devices.remove(elem)
    for entry in remaining:
        insert_device(devices, etree.Element("input", type=entry["type"], bus=entry["bus"]))


# -- SMBIOS system information (and the <os><smbios mode='sysinfo'/> that exposes it)
SYSINFO_SECTIONS = {
    "system": ("system", ("manufacturer", "product", "version", "serial", "sku", "family")),
    "baseboard": (
        "baseBoard",
        ("manufacturer", "product", "version", "serial", "asset", "location"),
    ),
}
OS_BEFORE_SMBIOS = (
    "type",
    "firmware",
    "loader",
    "nvram",
    "kernel",
    "initrd",
    "cmdline",
    "dtb",
    "acpi",
    "boot",
    "bootmenu",
)


def sysinfo_wish(spec: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for section in SYSINFO_SECTIONS:
        entries = _clean(spec.get(section) or {})
        for key, value in entries.items():
            if not isinstance(value, str) or not value:
                raise KvmValidationError(f"sysinfo.{section}.{key} must be a non-empty string")
        result[section] = entries
    return result


def read_sysinfo(root) -> dict[str, Any]:
    result: dict[str, Any] = {section: {} for section in SYSINFO_SECTIONS}
    if _xml.attr(root, "os/smbios", "mode") != "sysinfo":
        return result
    sysinfo = next((e for e in root.findall("sysinfo") if e.get("type") == "smbios"), None)
    if sysinfo is None:
        return result
    for section, (tag, _names) in SYSINFO_SECTIONS.items():
        elem = sysinfo.find(tag)
        if elem is not None:
            result[section] = {e.get("name"): e.text or "" for e in elem.findall("entry")}
    return result


def write_sysinfo(root, want: dict[str, Any]) -> None:
    for elem in root.findall("sysinfo"):
        if elem.get("type") == "smbios":
            root.remove(elem)
    os_elem = top(root, "os")
    _xml.remove(os_elem.find("smbios"))
    if not any(want.values()):
        return
    sysinfo = etree.Element("sysinfo", type="smbios")
    place(root, sysinfo, TOP_ORDER[TOP_ORDER.index("sysinfo") + 1 :])
    for section, (tag, names) in SYSINFO_SECTIONS.items():
        entries = want.get(section) or {}
        if entries:
            elem = _xml.sub(sysinfo, tag)
            for name in names:
                if name in entries:
                    _xml.sub(elem, "entry", entries[name], name=name)
    smbios = etree.Element("smbios", mode="sysinfo")
    index = 0
    for i, child in enumerate(os_elem):
        if child.tag in OS_BEFORE_SMBIOS:
            index = i + 1
    os_elem.insert(index, smbios)


# -- virtiofs shared folders, and the shared memory they need
def filesystems_wish(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    tags = set()
    for i, spec in enumerate(specs):
        source, tag = spec["source"], spec["target"]
        if not source.startswith("/"):
            raise KvmValidationError(f"filesystems[{i}]: source {source!r} is not an absolute path")
        if not tag or len(tag) > 36:
            raise KvmValidationError(
                f"filesystems[{i}]: target {tag!r} must be a mount tag of 1-36 characters"
            )
        if tag in tags:
            raise KvmValidationError(f"filesystems[{i}]: target {tag} is given twice")
        tags.add(tag)
        result.append({"source": source.rstrip("/") or "/", "target": tag})
    return sorted(result, key=lambda f: f["target"])


def _virtiofs(root):
    return [
        e
        for e in root.findall("devices/filesystem")
        if _xml.attr(e, "driver", "type") == "virtiofs"
    ]


def read_filesystems(root) -> list[dict[str, Any]]:
    return sorted(
        (
            {"source": _xml.attr(e, "source", "dir"), "target": _xml.attr(e, "target", "dir")}
            for e in _virtiofs(root)
        ),
        key=lambda f: f["target"] or "",
    )


def write_filesystems(root, want: list[dict[str, Any]]) -> None:
    devices = devices_of(root)
    remaining = list(want)
    for elem in _virtiofs(root):
        entry = {
            "source": _xml.attr(elem, "source", "dir"),
            "target": _xml.attr(elem, "target", "dir"),
        }
        if entry in remaining:
            remaining.remove(entry)
        else:
            devices.remove(elem)
    for entry in remaining:
        elem = etree.Element("filesystem", type="mount", accessmode="passthrough")
        _xml.sub(elem, "driver", type="virtiofs")
        _xml.sub(elem, "source", dir=entry["source"])
        _xml.sub(elem, "target", dir=entry["target"])
        insert_device(devices, elem)
    if want:
        shared_memory(root)


def shared_memory(root) -> None:
    """virtiofsd maps the guest's RAM: it must be shared (memfd unless another source)."""
    backing = top(root, "memoryBacking")
    if backing.find("source") is None:
        elem = etree.Element("source", type="memfd")
        _insert_backing(backing, elem, ("hugepages", "nosharepages", "locked"))
    access = backing.find("access")
    if access is None:
        access = etree.Element("access")
        _insert_backing(backing, access, ("hugepages", "nosharepages", "locked", "source"))
    access.set("mode", "shared")
    drop_if_empty(backing)


def _insert_backing(backing, elem, after: tuple[str, ...]) -> None:
    index = 0
    for i, child in enumerate(backing):
        if child.tag in after:
            index = i + 1
    backing.insert(index, elem)


def read_shared_memory(root) -> bool:
    return _xml.attr(root, "memoryBacking/access", "mode") == "shared"


# -- host devices: PCI (and SR-IOV virtual functions) by address, USB by vendor and product,
# mediated devices by UUID; the complete list of those (other hostdevs are kept)
HOSTDEV_TYPES = ("pci", "usb", "mdev")
HOSTDEV_KEYS = {
    "pci": ("address", "managed", "rom", "boot_order"),
    "usb": ("vendor", "product", "managed", "boot_order"),
    "mdev": ("uuid", "model", "boot_order"),
}
_PCI_ADDRESS = re.compile(
    r"^(?:([0-9a-f]{1,4}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$", re.IGNORECASE
)
_USB_ID = re.compile(r"^(?:0x)?([0-9a-f]{1,4})$", re.IGNORECASE)


def pci_address(text: str, what: str) -> str:
    """``[DDDD:]BB:SS.F`` in lspci's form, canonical (``0000:00:1f.2``)."""
    match = _PCI_ADDRESS.match(text.strip())
    if match is None or int(match.group(3), 16) > 0x1F:
        raise KvmValidationError(
            f"{what}: PCI address {text!r} is not of the form [DDDD:]BB:SS.F (as lspci -D shows)"
        )
    domain, bus, slot, function = match.groups()
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{int(slot, 16):02x}.{function}"


def _usb_id(text: str, what: str) -> str:
    match = _USB_ID.match(text.strip())
    if match is None:
        raise KvmValidationError(f"{what} {text!r} is not a USB id (4 hex digits, as lsusb shows)")
    return f"0x{int(match.group(1), 16):04x}"


def hostdev_key(entry: dict[str, Any]) -> tuple:
    return (
        entry["type"],
        entry.get("address") or entry.get("uuid") or "",
        entry.get("vendor") or "",
        entry.get("product") or "",
    )


def hostdevs_wish(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    keys = set()
    orders = set()
    for i, spec in enumerate(specs):
        kind = spec.get("type") or "pci"
        what = f"hostdevs[{i}]"
        given = {k for k, v in spec.items() if v is not None and k != "type"}
        wrong = sorted(given - set(HOSTDEV_KEYS[kind]))
        if wrong:
            raise KvmValidationError(f"{what}: {', '.join(wrong)} not for a {kind} host device")
        entry: dict[str, Any] = {"type": kind}
        if kind == "pci":
            if not spec.get("address"):
                raise KvmValidationError(f"{what}: a pci host device needs its address")
            entry["address"] = pci_address(spec["address"], what)
        elif kind == "usb":
            if not spec.get("vendor") or not spec.get("product"):
                raise KvmValidationError(f"{what}: a usb host device needs vendor and product")
            entry["vendor"] = _usb_id(spec["vendor"], f"{what}: vendor")
            entry["product"] = _usb_id(spec["product"], f"{what}: product")
        else:
            try:
                entry["uuid"] = str(uuid.UUID(spec.get("uuid") or ""))
            except ValueError:
                raise KvmValidationError(
                    f"{what}: a mdev host device needs the UUID of the mediated device, "
                    f"not {spec.get('uuid')!r}"
                ) from None
            entry["model"] = spec.get("model") or "vfio-pci"
        if kind in ("pci", "usb"):
            entry["managed"] = spec.get("managed") is not False
        if spec.get("rom") is not None:
            entry["rom"] = bool(spec["rom"])
        order = spec.get("boot_order")  # not given: no boot from it (compared too)
        if order is not None:
            if order < 1:
                raise KvmValidationError(f"{what}: boot_order must be at least 1")
            if order in orders:
                raise KvmValidationError(f"{what}: boot_order {order} is given twice")
            orders.add(order)
        entry["boot_order"] = order
        key = hostdev_key(entry)
        if key in keys:
            raise KvmValidationError(f"{what}: the same host device is given twice")
        keys.add(key)
        result.append(entry)
    return sorted(result, key=hostdev_key)


def _hostdevs(root):
    return [
        e
        for e in root.findall("devices/hostdev")
        if e.get("mode", "subsystem") == "subsystem" and e.get("type") in HOSTDEV_TYPES
    ]


def _hostdev(elem) -> dict[str, Any]:
    kind = elem.get("type")
    entry: dict[str, Any] = {"type": kind}
    source = elem.find("source")
    if kind == "pci":
        addr = source.find("address") if source is not None else None
        if addr is not None:
            entry["address"] = "{:04x}:{:02x}:{:02x}.{:x}".format(
                *(int(addr.get(k) or "0", 16) for k in ("domain", "bus", "slot", "function"))
            )
    elif kind == "usb":
        entry["vendor"] = _xml.attr(source, "vendor", "id") if source is not None else None
        entry["product"] = _xml.attr(source, "product", "id") if source is not None else None
    else:
        entry["uuid"] = _xml.attr(source, "address", "uuid") if source is not None else None
        entry["model"] = elem.get("model")
    if kind in ("pci", "usb"):
        entry["managed"] = elem.get("managed") == "yes"
    rom = elem.find("rom")
    if rom is not None and rom.get("bar") in ("on", "off"):
        entry["rom"] = rom.get("bar") == "on"
    entry = _clean(entry)
    entry["boot_order"] = _int(_xml.attr(elem, "boot", "order"))
    return entry


def read_hostdevs(root) -> list[dict[str, Any]]:
    return sorted((_hostdev(e) for e in _hostdevs(root)), key=hostdev_key)


def project_hostdevs(actual: list[dict[str, Any]], want: list[dict[str, Any]]):
    """Wished devices compared on what the wish gives (a ROM not given is not compared);
    devices not wished are shown, to be removed."""
    wanted = {hostdev_key(w): w for w in want}
    result = []
    for have in actual:
        entry = wanted.get(hostdev_key(have))
        result.append({k: have.get(k) for k in entry} if entry is not None else have)
    return result


def write_hostdevs(root, want: list[dict[str, Any]]) -> None:
    devices = devices_of(root)
    wanted = {hostdev_key(w): w for w in want}
    for elem in _hostdevs(root):
        if hostdev_key(_hostdev(elem)) not in wanted:
            devices.remove(elem)
    existing = {hostdev_key(_hostdev(e)): e for e in _hostdevs(root)}
    for key, entry in wanted.items():
        elem = existing.get(key)
        if elem is None:
            elem = _new_hostdev(entry)
            insert_device(devices, elem)
        if "managed" in entry:
            elem.set("managed", "yes" if entry["managed"] else "no")
        if entry["type"] == "mdev":
            elem.set("model", entry["model"])
        _xml.remove(elem.find("boot"))
        if entry.get("boot_order") is not None:
            _xml.sub(elem, "boot", order=str(entry["boot_order"]))
        if "rom" in entry:
            _xml.remove(elem.find("rom"))
            _xml.sub(elem, "rom", bar="on" if entry["rom"] else "off")


def _new_hostdev(entry: dict[str, Any]):
    elem = etree.Element("hostdev", mode="subsystem", type=entry["type"])
    source = _xml.sub(elem, "source")
    if entry["type"] == "pci":
        domain, bus, rest = entry["address"].split(":")
        slot, function = rest.split(".")
        _xml.sub(
            source,
            "address",
            domain=f"0x{domain}",
            bus=f"0x{bus}",
            slot=f"0x{slot}",
            function=f"0x{function}",
        )
    elif entry["type"] == "usb":
        _xml.sub(source, "vendor", id=entry["vendor"])
        _xml.sub(source, "product", id=entry["product"])
    else:
        _xml.sub(source, "address", uuid=entry["uuid"])
    return elem
