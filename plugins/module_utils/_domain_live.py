# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Changes applied to a running guest (libvirt's live definition).

The persistent definition is written first, in one ``defineXML``; this module then brings
the live guest along where libvirt can: memory balloon, vCPUs up to the maximum, pinning,
scheduler and memory/block tuning, metadata, disks and NICs attached or detached, CD-ROM
media, disk I/O limits. Every call uses ``VIR_DOMAIN_AFFECT_LIVE`` only (the configuration is
already written). Whatever cannot be applied live, or fails live, is returned as needing a
restart, with the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from . import _xml
from ._domain_model import (
    FIELDS_BY_NAME,
    IOTUNE_KEYS,
    NS_PREFIX,
    NS_VIRTOPS,
    RESTART_VISIBLE,
    Disk,
    Interface,
    parse_cpuset,
    read_disks,
)
from ._libvirt import MEMORY_PARAM_UNLIMITED, libvirt

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None

LIVE_FIELDS = (
    "title",
    "description",
    "tags",
    "memory",
    "vcpus",
    "disks",
    "interfaces",
    "tuning.vcpu_pins",
    "tuning.emulator_pin",
    "tuning.iothread_pins",
    "tuning.cpu_shares",
    "tuning.cpu_period",
    "tuning.cpu_quota",
    "tuning.memory_hard_limit",
    "tuning.memory_soft_limit",
    "tuning.blkio_weight",
)


@dataclass
class LiveResult:
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def fail(self, name: str, exc: Exception, action: str) -> None:
        self.pending.append(name)
        message = exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)
        self.warnings.append(f"Could not {action} live ({message}); it applies at the next boot")


class LiveUpdater:
    """Applies changed fields to the running ``dom``."""

    def __init__(self, dom, host_cpus: int) -> None:
        self.dom = dom
        self.host_cpus = host_cpus
        self.live = libvirt.VIR_DOMAIN_AFFECT_LIVE

    def apply(
        self,
        changed: list[str],
        wish: dict[str, Any],
        live_root,
        new_root,
    ) -> LiveResult:
        result = LiveResult()
        for name in changed:
            if name not in LIVE_FIELDS:
                result.pending.append(name)
                continue
            handler = getattr(self, "_" + name.replace("tuning.", "tune_"))
            try:
                ok = handler(wish[name], live_root, new_root, result)
            except libvirt.libvirtError as exc:
                result.fail(name, exc, f"change {name}")
                continue
            if ok:
                result.applied.append(name)
        return result

    # -- scalars
    def _title(self, value, *_):
        self.dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_TITLE, value or None, None, None, self.live
        )
        return True

    def _description(self, value, *_):
        self.dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, value or None, None, None, self.live
        )
        return True

    def _tags(self, value, *_):
        text = None
        if value:  # libvirt puts the element and its children into our namespace itself
            elem = etree.Element("tags")
            for tag in sorted(set(value)):
                etree.SubElement(elem, "tag").text = tag
            text = _xml.to_string(elem, pretty=False)
        self.dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, text, NS_PREFIX, NS_VIRTOPS, self.live
        )
        return True

    def _memory(self, mib, live_root, _new, result):
        live_max = FIELDS_BY_NAME["max_memory"].read(live_root)
        if live_max is not None and mib > live_max:
            result.pending.append("memory")
            result.warnings.append(
                f"memory {mib} MiB is above the running guest's maximum ({live_max} MiB): "
                "it applies at the next boot"
            )
            return False
        self.dom.setMemoryFlags(mib * 1024, self.live)
        return True

    def _vcpus(self, count, live_root, _new, result):
        live_max = FIELDS_BY_NAME["max_vcpus"].read(live_root)
        if live_max is not None and count > live_max:
            result.pending.append("vcpus")
            result.warnings.append(
                f"vcpus {count} is above the running guest's maximum ({live_max}): "
                "it applies at the next boot"
            )
            return False
        self.dom.setVcpusFlags(count, self.live)
        return True

    def _cpumap(self, cpuset: str | None) -> tuple[bool, ...]:
        cpus = parse_cpuset(cpuset) if cpuset else frozenset(range(self.host_cpus))
        return tuple(i in cpus for i in range(self.host_cpus))

    def _tune_vcpu_pins(self, pins, live_root, *_):
        live_pins = FIELDS_BY_NAME["tuning.vcpu_pins"].read(live_root)
        live_vcpus = FIELDS_BY_NAME["vcpus"].read(live_root) or 0
        for vcpu in sorted(set(pins) | set(live_pins)):
            if vcpu < live_vcpus and pins.get(vcpu) != live_pins.get(vcpu):
                self.dom.pinVcpuFlags(vcpu, self._cpumap(pins.get(vcpu)), self.live)
        return True

    def _tune_emulator_pin(self, cpuset, *_):
        self.dom.pinEmulator(self._cpumap(cpuset), self.live)
        return True

    def _tune_iothread_pins(self, pins, live_root, *_):
        live_pins = FIELDS_BY_NAME["tuning.iothread_pins"].read(live_root)
        threads = FIELDS_BY_NAME["tuning.iothreads"].read(live_root)
        for ident in sorted(set(pins) | set(live_pins)):
            if ident <= threads and pins.get(ident) != live_pins.get(ident):
                self.dom.pinIOThread(ident, self._cpumap(pins.get(ident)), self.live)
        return True

    def _sched(self, key, value):
        self.dom.setSchedulerParametersFlags({key: value}, self.live)
        return True

    def _tune_cpu_shares(self, value, *_):
        return self._sched("cpu_shares", value or 1024)

    def _tune_cpu_period(self, value, *_):
        return self._sched("vcpu_period", value or 100000)

    def _tune_cpu_quota(self, value, *_):
        return self._sched("vcpu_quota", value or -1)

    def _memtune(self, key, mib):
        value = mib * 1024 if mib else MEMORY_PARAM_UNLIMITED
        self.dom.setMemoryParameters({key: value}, self.live)
        return True

    def _tune_memory_hard_limit(self, mib, *_):
        return self._memtune("hard_limit", mib)

    def _tune_memory_soft_limit(self, mib, *_):
        return self._memtune("soft_limit", mib)

    def _tune_blkio_weight(self, weight, *_):
        self.dom.setBlkioParameters({"weight": weight or 100}, self.live)
        return True

    # -- devices
    def _disks(self, wish, live_root, new_root, result):
        live = {_xml.attr(e, "target", "dev"): e for e in live_root.findall("devices/disk")}
        new = {_xml.attr(e, "target", "dev"): e for e in new_root.findall("devices/disk")}
        ok = True
        targets = [d.target for d in wish.disks]
        if wish.exclusive:
            for target, elem in live.items():
                if target not in new:
                    ok &= self._device_op("detach", elem, f"detach disk {target}", result)
        for target in targets:
            elem = new.get(target)
            if elem is None:
                continue
            have = live.get(target)
            if have is None:
                ok &= self._device_op("attach", elem, f"attach disk {target}", result)
                continue
            old_disk, new_disk = Disk.from_xml(have), Disk.from_xml(elem)
            if (old_disk.iotune or {}) != (new_disk.iotune or {}):
                params = {k: (new_disk.iotune or {}).get(k, 0) for k in IOTUNE_KEYS}
                try:
                    self.dom.setBlockIoTune(target, params, self.live)
                except libvirt.libvirtError as exc:
                    result.warnings.append(f"Could not set I/O limits of {target} live: {exc}")
                    ok = False
            old_disk.iotune = new_disk.iotune = None
            if old_disk == new_disk:
                continue
            media_only = old_disk.device == "cdrom" and _same_but(old_disk, new_disk, "path")
            if media_only:
                ok &= self._device_op("update", elem, f"change the media of {target}", result)
            else:
                result.warnings.append(
                    f"Disk {target} changed in ways libvirt cannot apply live; it applies at "
                    "the next boot"
                )
                ok = False
        if not ok:
            result.pending.append("disks")
        return ok

    def _interfaces(self, wish, live_root, new_root, result):
        live = {
            (_xml.attr(e, "mac", "address") or "").lower(): e
            for e in live_root.findall("devices/interface")
        }
        new = {
            (_xml.attr(e, "mac", "address") or "").lower(): e
            for e in new_root.findall("devices/interface")
        }
        ok = True
        for mac, elem in live.items():
            if mac not in new:
                ok &= self._device_op("detach", elem, f"detach NIC {mac}", result)
        for mac, elem in new.items():
            if mac not in live:
                ok &= self._device_op("attach", elem, f"attach NIC {mac}", result)
                continue
            before, after = Interface.from_xml(live[mac]), Interface.from_xml(elem)
            if before != after:
                result.warnings.append(
                    f"NIC {mac} changed in ways libvirt cannot apply live; it applies at the "
                    "next boot"
                )
                ok = False
        if not ok:
            result.pending.append("interfaces")
        return ok

    def _device_op(self, op: str, elem, action: str, result: LiveResult) -> bool:
        device = copy.deepcopy(elem)
        if op == "attach":  # let libvirt place it on the running guest
            for child in device.findall("address"):
                device.remove(child)
            for child in device.findall("alias"):
                device.remove(child)
        text = _xml.to_string(device, pretty=False)
        try:
            if op == "attach":
                self.dom.attachDeviceFlags(text, self.live)
            elif op == "detach":
                self.dom.detachDeviceFlags(text, self.live)
            else:
                self.dom.updateDeviceFlags(text, self.live)
        except libvirt.libvirtError as exc:
            result.warnings.append(
                f"Could not {action} live ({exc.get_error_message()}); it applies at the next boot"
            )
            return False
        return True


def _same_but(a: Disk, b: Disk, name: str) -> bool:
    other = copy.copy(b)
    setattr(other, name, getattr(a, name))
    return a == other


def pending_restart(live_root, inactive_root) -> list[str]:
    """Settings whose live value still differs from the definition (needs a restart)."""
    names = []
    for name in RESTART_VISIBLE:
        fld = FIELDS_BY_NAME[name]
        if fld.read(live_root) != fld.read(inactive_root):
            names.append(name)
    live_disks = {(d.target, d.path, d.volume) for d in read_disks(live_root) if d.device == "disk"}
    config_disks = {
        (d.target, d.path, d.volume) for d in read_disks(inactive_root) if d.device == "disk"
    }
    if live_disks != config_disks:
        names.append("disks")
    live_macs = {
        (_xml.attr(e, "mac", "address") or "").lower()
        for e in live_root.findall("devices/interface")
    }
    config_macs = {
        (_xml.attr(e, "mac", "address") or "").lower()
        for e in inactive_root.findall("devices/interface")
    }
    if live_macs != config_macs:
        names.append("interfaces")
    return names
