# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The domain's device fields: disks, interfaces, graphics, serials, agent, RNG, watchdog.

Readers, writers and projections over the device dataclasses of ``_domain_devices``; disks
and NICs also have live appliers (attach, detach, CD-ROM media, I/O limits) and say how a
change still waiting for a restart shows. ``_domain_model.FIELDS`` ties them together.
"""

from __future__ import annotations

import copy
from typing import Any

from . import _xml
from ._domain_devices import (
    AGENT_CHANNEL,
    IOTUNE_KEYS,
    Disk,
    DiskWish,
    Interface,
    Serial,
    match_interfaces,
    read_disks,
)
from ._domain_xml import devices_of, insert_device
from ._libvirt import libvirt
from ._secrets import fingerprint

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None


def plain(devices: list | DiskWish | None) -> list | None:
    """Typed devices (read, or wished) as dicts; projected ones (dicts, None) stay."""
    if isinstance(devices, DiskWish):
        devices = devices.disks
    if devices is None:
        return None
    return [d.as_dict() if hasattr(d, "as_dict") else d for d in devices]


# -- disks
def project_disks(actual: list[Disk], want: DiskWish):
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


def write_disks(root, want: DiskWish):
    devices = devices_of(root)
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
                insert_device(devices, new)


def live_disks(guest, wish: DiskWish, live_root, new_root, result):
    """Attach and detach disks, change CD-ROM media and I/O limits; the rest waits."""
    live = {_xml.attr(e, "target", "dev"): e for e in live_root.findall("devices/disk")}
    new = {_xml.attr(e, "target", "dev"): e for e in new_root.findall("devices/disk")}
    ok = True
    targets = [d.target for d in wish.disks]
    if wish.exclusive:
        for target, elem in live.items():
            if target not in new:
                ok &= guest.device_op("detach", elem, f"detach disk {target}", result)
    for target in targets:
        elem = new.get(target)
        if elem is None:
            continue
        have = live.get(target)
        if have is None:
            ok &= guest.device_op("attach", elem, f"attach disk {target}", result)
            continue
        old_disk, new_disk = Disk.from_xml(have), Disk.from_xml(elem)
        if (old_disk.iotune or {}) != (new_disk.iotune or {}):
            params = {k: (new_disk.iotune or {}).get(k, 0) for k in IOTUNE_KEYS}
            try:
                guest.dom.setBlockIoTune(target, params, guest.live)
            except libvirt.libvirtError as exc:
                result.warnings.append(f"Could not set I/O limits of {target} live: {exc}")
                ok = False
        old_disk.iotune = new_disk.iotune = None
        if old_disk == new_disk:
            continue
        media_only = old_disk.device == "cdrom" and _same_but(old_disk, new_disk, "path")
        if media_only:
            ok &= guest.device_op("update", elem, f"change the media of {target}", result)
        else:
            result.warnings.append(
                f"Disk {target} changed in ways libvirt cannot apply live; it applies at "
                "the next boot"
            )
            ok = False
    if not ok:
        result.pending.append("disks")
    return ok


def _same_but(a: Disk, b: Disk, name: str) -> bool:
    other = copy.copy(b)
    setattr(other, name, getattr(a, name))
    return a == other


def disks_pending(live_root, inactive_root) -> bool:
    """Disks (not CD-ROMs) the running guest has not got, or still has."""

    def sources(root):
        return {(d.target, d.path, d.volume) for d in read_disks(root) if d.device == "disk"}

    return sources(live_root) != sources(inactive_root)


# -- interfaces
def project_interfaces(actual: list[Interface], want: list[Interface]):
    matches = match_interfaces(actual, want)
    result = [
        actual[idx].project(nic) if idx is not None else None for nic, idx in zip(want, matches)
    ]
    result += [nic.as_dict() for i, nic in enumerate(actual) if i not in matches]
    return result


def write_interfaces(root, want: list[Interface]):
    devices = devices_of(root)
    elems = devices.findall("interface")
    matches = match_interfaces([Interface.from_xml(e) for e in elems], want)
    for i, elem in enumerate(elems):
        if i not in matches:
            devices.remove(elem)
    for nic, idx in zip(want, matches):
        if idx is not None:
            nic.apply(elems[idx])
        else:
            insert_device(devices, nic.build())


def _nics_by_mac(root) -> dict[str, Any]:
    return {
        (_xml.attr(e, "mac", "address") or "").lower(): e for e in root.findall("devices/interface")
    }


def live_interfaces(guest, _wish, live_root, new_root, result):
    """Attach and detach NICs (matched by MAC); a changed NIC waits for a restart."""
    live, new = _nics_by_mac(live_root), _nics_by_mac(new_root)
    ok = True
    for mac, elem in live.items():
        if mac not in new:
            ok &= guest.device_op("detach", elem, f"detach NIC {mac}", result)
    for mac, elem in new.items():
        if mac not in live:
            ok &= guest.device_op("attach", elem, f"attach NIC {mac}", result)
            continue
        before, after = Interface.from_xml(live[mac]), Interface.from_xml(elem)
        if before != after:
            result.warnings.append(
                f"NIC {mac} changed in ways libvirt cannot apply live; it applies at the next boot"
            )
            ok = False
    if not ok:
        result.pending.append("interfaces")
    return ok


def interfaces_pending(live_root, inactive_root) -> bool:
    """NICs the running guest has not got, or still has."""
    return set(_nics_by_mac(live_root)) != set(_nics_by_mac(inactive_root))


# -- graphics, serials, guest agent, RNG, watchdog
def read_graphics(root):
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


def show_graphics_wish(want: dict[str, Any]) -> dict[str, Any]:
    """The wished graphics as compared and shown: the password as its digest ("" is None)."""
    if "password" not in want:
        return want
    return dict(want, password=fingerprint(want["password"]))


def write_graphics(root, want):
    devices = devices_of(root)
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
    insert_device(devices, elem)


def read_serials(root):
    return [Serial.from_xml(e, i).as_dict() for i, e in enumerate(root.findall("devices/serial"))]


def project_serials(actual, want):
    by_port = {s["port"]: s for s in actual}
    ports = {s["port"] for s in want}
    result = [
        {k: by_port[s["port"]].get(k) for k in s} if s["port"] in by_port else None for s in want
    ]
    return result + [s for s in actual if s["port"] not in ports]


def write_serials(root, want):
    devices = devices_of(root)
    for elem in devices.findall("serial"):
        devices.remove(elem)
    for elem in devices.findall("console"):
        if _xml.attr(elem, "target", "type") in (None, "serial"):
            devices.remove(elem)  # libvirt derives the console of serial 0 again
    for spec in sorted(want, key=lambda s: s["port"]):
        insert_device(devices, Serial(**spec).build())


def _agent_channels(root):
    return [
        e
        for e in root.findall("devices/channel")
        if _xml.attr(e, "target", "name") == AGENT_CHANNEL
    ]


def read_agent(root):
    return bool(_agent_channels(root))


def write_agent(root, value):
    if value and not _agent_channels(root):
        elem = etree.Element("channel", type="unix")
        _xml.sub(elem, "target", type="virtio", name=AGENT_CHANNEL)
        insert_device(devices_of(root), elem)
    elif not value:
        for elem in _agent_channels(root):
            _xml.remove(elem)


def read_rng(root):
    return root.find("devices/rng") is not None


def write_rng(root, value):
    if value and root.find("devices/rng") is None:
        elem = etree.Element("rng", model="virtio")
        _xml.sub(elem, "backend", "/dev/urandom", model="random")
        insert_device(devices_of(root), elem)
    elif not value:
        for elem in root.findall("devices/rng"):
            _xml.remove(elem)


def read_watchdog(root):
    elem = root.find("devices/watchdog")
    if elem is None:
        return {"model": "none", "action": None}
    return {"model": elem.get("model"), "action": elem.get("action", "reset")}


def write_watchdog(root, want):
    devices = devices_of(root)
    for elem in devices.findall("watchdog"):
        devices.remove(elem)
    if want.get("model") and want["model"] != "none":
        elem = etree.Element("watchdog", model=want["model"], action=want.get("action") or "reset")
        insert_device(devices, elem)
