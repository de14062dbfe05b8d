# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Changes applied to a running guest (libvirt's live definition).

The persistent definition is written first, in one ``defineXML``; this module then brings
the live guest along where libvirt can: memory balloon, vCPUs up to the maximum, pinning,
scheduler and memory/block tuning, metadata, disks and NICs attached or detached, CD-ROM
media, disk I/O limits, the typed devices libvirt hot-plugs (``_domain_hotplug``). Every
call uses ``VIR_DOMAIN_AFFECT_LIVE`` only (the configuration is already written). Whatever
cannot be applied live, or fails live, is returned as needing a restart, with the reason.
How each field is applied is its ``live`` in ``_domain_model.FIELDS``; ``LiveUpdater`` runs
them and gives them the guest's CPU map and device calls.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from . import _xml
from ._cpuset import parse_cpuset
from ._domain_model import FIELDS, FIELDS_BY_NAME
from ._libvirt import libvirt

LIVE_FIRST = ("controllers",)


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
    """Applies changed fields to the running ``dom``, each through its field's ``live``."""

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
        # a new controller first: a disk attached in the same run may sit on it
        for name in sorted(changed, key=lambda n: n not in LIVE_FIRST):
            fld = FIELDS_BY_NAME[name]
            if fld.live is None:
                result.pending.append(name)
                continue
            try:
                ok = fld.live(self, wish[name], live_root, new_root, result)
            except libvirt.libvirtError as exc:
                result.fail(name, exc, f"change {name}")
                continue
            if ok:
                result.applied.append(name)
        return result

    def cpumap(self, cpuset: str | None) -> tuple[bool, ...]:
        """A cpuset as libvirt's CPU map of this host (None: every host CPU)."""
        cpus = parse_cpuset(cpuset) if cpuset else frozenset(range(self.host_cpus))
        return tuple(i in cpus for i in range(self.host_cpus))

    def device_op(self, op: str, elem, action: str, result: LiveResult) -> bool:
        """Attach, detach or update (``op``) a device live; a failure is a warning."""
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


def pending_restart(live_root, inactive_root) -> list[str]:
    """Settings whose live value still differs from the definition (needs a restart)."""
    return [f.name for f in FIELDS if f.waits_for_restart(live_root, inactive_root)]
