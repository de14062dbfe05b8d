# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Live attach and detach of the typed devices QEMU and libvirt hotplug.

A running guest gets, live, the typed devices libvirt (9.0 and later) can hot-plug and
unplug: host devices (PCI, USB, mediated), inputs on the virtio bus, SCSI controllers
(added only: the module never removes a controller) and virtiofs shared folders (when the
running guest's memory is already shared). Everything else waits for the next boot: a changed
device (same identity, other settings), USB inputs, other controller types, a virtiofs
folder on a guest started without shared memory; video, sound, TPM and SMBIOS have no live
applier at all.

``plan_*(live_root, new_root, want)`` is pure: it compares the running guest's devices with
the new definition's and gives the attach and detach calls plus the reasons that wait for a
restart. Check mode predicts ``restart_required`` from the same plan the apply runs
(``_domain_model.Field.hotplug``), so both agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from . import _domain_extra_devices as extra

# inputs attached live: virtio ones (libvirt also hot-plugs USB inputs, but only where the
# running guest has a USB controller with a free port; they wait for the next boot)
LIVE_INPUT_BUSES = ("virtio",)
# controllers libvirt hot-plugs (qemuDomainAttachControllerDevice: SCSI only)
LIVE_CONTROLLER_TYPES = ("scsi",)


@dataclass
class HotplugPlan:
    """Device calls for the running guest, in order, and what waits for the next boot."""

    ops: list[tuple[str, Any, str]] = field(default_factory=list)  # (op, element, what)
    waits: list[str] = field(default_factory=list)


def _match(live: list, new: list, key: Callable[[Any], Any]):
    """Elements to detach (live only) and attach (new only), and the pairs kept."""
    unmatched = list(live)
    attach, kept = [], []
    for elem in new:
        found = next((e for e in unmatched if key(e) == key(elem)), None)
        if found is None:
            attach.append(elem)
        else:
            unmatched.remove(found)
            kept.append((found, elem))
    return unmatched, attach, kept


# -- inputs: the complete list (PS/2 aside), matched by type and bus
def _input_key(elem) -> tuple[str, str]:
    return (elem.get("type"), elem.get("bus") or "usb")


def plan_inputs(live_root, new_root, _want=None) -> HotplugPlan:
    plan = HotplugPlan()
    detach, attach, _kept = _match(extra._inputs(live_root), extra._inputs(new_root), _input_key)
    for op, elems in (("detach", detach), ("attach", attach)):
        for elem in elems:
            kind, bus = _input_key(elem)
            what = f"{op} input {kind} (bus {bus})"
            if bus in LIVE_INPUT_BUSES:
                plan.ops.append((op, elem, what))
            else:
                plan.waits.append(f"Cannot {what} live (only virtio inputs are)")
    return plan


# -- controllers: the wished ones are ensured (never removed), matched by type and index
def _controller_key(elem) -> tuple[str, int]:
    return (elem.get("type"), int(elem.get("index") or 0))


def plan_controllers(live_root, new_root, want: list[dict[str, Any]]) -> HotplugPlan:
    plan = HotplugPlan()
    live = {_controller_key(e): e for e in live_root.findall("devices/controller")}
    new = {_controller_key(e): e for e in new_root.findall("devices/controller")}
    for entry in want:
        key = (entry["type"], entry["index"])
        elem = new.get(key)
        if elem is None:
            continue
        what = f"controller {key[0]} {key[1]}"
        have = live.get(key)
        if have is None:
            if key[0] in LIVE_CONTROLLER_TYPES:
                plan.ops.append(("attach", elem, f"attach {what}"))
            else:
                plan.waits.append(f"Cannot attach {what} live ({key[0]} is not hot-pluggable)")
        elif extra._controller(have) != extra._controller(elem):
            plan.waits.append(f"Cannot change {what} live")
    # a new controller comes before the disks that sit on it (see LiveUpdater.apply)
    return plan


def controllers_pending(live_root, inactive_root) -> bool:
    """Controllers the running guest lacks or has otherwise (a hot-plugged one may stand
    elsewhere in the live XML)."""

    def key(c):
        return (c["type"], c["index"])

    return sorted(extra.read_controllers(live_root), key=key) != sorted(
        extra.read_controllers(inactive_root), key=key
    )


# -- host devices: the complete list of PCI, USB and mdev ones, matched by their source
def _hostdev_key(elem):
    return extra.hostdev_key(extra._hostdev(elem))


def plan_hostdevs(live_root, new_root, _want=None) -> HotplugPlan:
    plan = HotplugPlan()
    detach, attach, kept = _match(
        extra._hostdevs(live_root), extra._hostdevs(new_root), _hostdev_key
    )
    for op, elems in (("detach", detach), ("attach", attach)):
        for elem in elems:
            kind, ident, vendor, product = _hostdev_key(elem)
            name = ident or f"{vendor}:{product}"
            plan.ops.append((op, elem, f"{op} host device {kind} {name}"))
    for have, elem in kept:
        if extra._hostdev(have) != extra._hostdev(elem):
            kind, ident, vendor, product = _hostdev_key(elem)
            plan.waits.append(
                f"Cannot change host device {kind} {ident or vendor + ':' + product} live"
            )
    return plan


# -- virtiofs folders: the complete list, matched by source and tag
def _fs_key(elem) -> tuple:
    return (
        (elem.find("source").get("dir") if elem.find("source") is not None else None),
        (elem.find("target").get("dir") if elem.find("target") is not None else None),
    )


def plan_filesystems(live_root, new_root, _want=None) -> HotplugPlan:
    plan = HotplugPlan()
    detach, attach, _kept = _match(extra._virtiofs(live_root), extra._virtiofs(new_root), _fs_key)
    for elem in detach:
        plan.ops.append(("detach", elem, f"detach virtiofs folder {_fs_key(elem)[1]}"))
    shared = extra.read_shared_memory(live_root)
    for elem in attach:
        what = f"attach virtiofs folder {_fs_key(elem)[1]}"
        if shared:
            plan.ops.append(("attach", elem, what))
        else:
            plan.waits.append(
                f"Cannot {what} live (the running guest's memory is not shared; virtiofs "
                "needs the shared memory it gets at the next boot)"
            )
    return plan


def hotplug_live(name: str, planner: Callable[..., HotplugPlan]) -> Callable[..., bool]:
    """The ``live`` of a field applied by ``planner``'s device calls (``LiveUpdater``)."""

    def live(guest, want, live_root, new_root, result) -> bool:
        plan = planner(live_root, new_root, want)
        ok = True
        for op, elem, what in plan.ops:
            ok &= guest.device_op(op, elem, what, result)
        for reason in plan.waits:
            result.warnings.append(f"{reason}; it applies at the next boot")
        if plan.waits or not ok:
            result.pending.append(name)
            return False
        return True

    return live
