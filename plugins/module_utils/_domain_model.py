# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The domain's managed settings: one table of fields, each saying all that is known of it.

The domain module never compares XML text. Every setting it manages is a ``Field`` in
``FIELDS``: its name (dotted, as shown in the diff), how it is read from libvirt's inactive
XML into a plain comparable value, how it is written into an existing definition (so all
that libvirt generated, such as the UUID, PCI addresses, aliases, default controllers and
MACs we were not given, stays), how an actual value is compared with a wish (projected onto
what the user specified) and shown, how a running guest gets it (or that it needs a
restart), and how a change still waiting for that restart shows.

The readers, writers and live appliers live by concern: ``_domain_general`` (identity,
memory, vCPUs, CPU, OS), ``_domain_device_fields`` (over the ``_domain_devices``
dataclasses) and ``_domain_tuning``. Adding a field: see docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import _domain_device_fields as dev
from . import _domain_extra_devices as extra
from . import _domain_general as gen
from . import _domain_hotplug as hot
from . import _domain_tuning as tune
from . import _xml
from ._domain_devices import read_disks, read_interfaces

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None


def _as_is(value: Any, *_: Any) -> Any:
    return value


def project_keys(actual: dict | None, want: dict) -> dict:
    """A settings dict compared on the keys the wish gives only."""
    actual = actual or {}
    return {k: actual.get(k) for k in want}


def str_keys(value: Any) -> Any:
    """Pins by vCPU or iothread number, shown with string keys in number order."""
    return {str(k): v for k, v in sorted(value.items())} if isinstance(value, dict) else value


@dataclass(frozen=True)
class Field:
    """One managed setting and everything the domain module does with it.

    ``read(root)`` gives the value of a definition; ``write(root, value)`` patches a wished
    value in. ``project(actual, want)`` is the actual value as compared with the wish (only
    what the wish specifies). ``show`` turns a value (read, projected or wished) into the
    plain data of the diff and of ``summarize``; ``show_wish``, where given, shows wished
    values instead.
    ``live(guest, value, live_root, new_root, result)`` applies a change to a running guest
    (``_domain_live.LiveUpdater``) and says whether it did; a field without one needs a
    restart. ``pending`` says whether a running guest still waits for a restart to have the
    definition's value: True compares ``read`` of the live and inactive definitions (for
    settings whose live XML shows the running value), a function
    ``pending(live_root, inactive_root)`` compares its own way; False: not visible.
    ``hotplug(live_root, new_root, want)``, for devices attached and detached live, plans the
    device calls and what waits for the next boot (``_domain_hotplug``); its ``live`` runs
    that plan, and check mode predicts the restart from the same plan.
    """

    name: str
    read: Callable[[Any], Any]
    write: Callable[[Any, Any], None]
    project: Callable[[Any, Any], Any] = _as_is
    show: Callable[[Any], Any] = _as_is
    show_wish: Callable[[Any], Any] | None = None
    live: Callable[..., bool] | None = None
    pending: bool | Callable[[Any, Any], bool] = False
    hotplug: Callable[[Any, Any, Any], Any] | None = None

    @property
    def needs_restart(self) -> bool:
        """Whether a running guest gets a change only by a restart."""
        return self.live is None

    def restart_predicted(self, live_root, new_root, want) -> bool:
        """Whether a change waits for a restart, as far as known before applying it."""
        if self.needs_restart:
            return True
        return self.hotplug is not None and bool(self.hotplug(live_root, new_root, want).waits)

    def waits_for_restart(self, live_root, inactive_root) -> bool:
        if callable(self.pending):
            return self.pending(live_root, inactive_root)
        return self.pending and self.read(live_root) != self.read(inactive_root)


# In this order: compared (the diff's order) and written (a writer may build on an earlier
# one: firmware before secure_boot, max_vcpus before vcpus, hugepages before memory_locked).
FIELDS: list[Field] = [
    Field("virt_type", gen.read_virt_type, gen.write_virt_type, pending=True),
    Field("title", gen.read_title, gen.write_title, live=gen.live_title),
    Field("description", gen.read_description, gen.write_description, live=gen.live_description),
    Field("tags", gen.read_tags, gen.write_tags, live=gen.live_tags),
    Field("max_memory", gen.read_mem("memory"), gen.write_mem("memory"), pending=True),
    Field(
        "memory",
        gen.read_mem("currentMemory"),
        gen.write_mem("currentMemory"),
        live=gen.live_memory,
    ),
    Field("max_vcpus", gen.read_max_vcpus, gen.write_max_vcpus, pending=True),
    Field("vcpus", gen.read_vcpus, gen.write_vcpus, live=gen.live_vcpus),
    Field("cpu", gen.read_cpu, gen.write_cpu, project_keys),
    Field("machine", gen.read_machine, gen.write_machine, pending=True),
    Field("firmware", gen.read_firmware, gen.write_firmware),
    Field("secure_boot", gen.read_secure_boot, gen.write_secure_boot),
    Field("boot", gen.read_boot, gen.write_boot, pending=True),
    Field("kernel", gen.read_os_text("kernel"), gen.write_os_text("kernel"), pending=True),
    Field("initrd", gen.read_os_text("initrd"), gen.write_os_text("initrd"), pending=True),
    Field("cmdline", gen.read_os_text("cmdline"), gen.write_os_text("cmdline"), pending=True),
    Field(
        "disks",
        read_disks,
        dev.write_disks,
        dev.project_disks,
        show=dev.plain,
        live=dev.live_disks,
        pending=dev.disks_pending,
    ),
    Field(
        "interfaces",
        read_interfaces,
        dev.write_interfaces,
        dev.project_interfaces,
        show=dev.plain,
        live=dev.live_interfaces,
        pending=dev.interfaces_pending,
    ),
    Field(
        "graphics",
        dev.read_graphics,
        dev.write_graphics,
        project_keys,
        show_wish=dev.show_graphics_wish,
    ),
    Field("serials", dev.read_serials, dev.write_serials, dev.project_serials, pending=True),
    Field("guest_agent", dev.read_agent, dev.write_agent, pending=True),
    Field("rng", dev.read_rng, dev.write_rng, pending=True),
    Field("watchdog", dev.read_watchdog, dev.write_watchdog, project_keys, pending=True),
    Field(
        "controllers",
        extra.read_controllers,
        extra.write_controllers,
        extra.project_controllers,
        live=hot.hotplug_live("controllers", hot.plan_controllers),
        pending=hot.controllers_pending,
        hotplug=hot.plan_controllers,
    ),
    Field("tpm", extra.read_tpm, extra.write_tpm, pending=True),
    Field("video", extra.read_video, extra.write_video, project_keys, pending=True),
    Field("sound", extra.read_sound, extra.write_sound, pending=True),
    Field(
        "inputs",
        extra.read_inputs,
        extra.write_inputs,
        live=hot.hotplug_live("inputs", hot.plan_inputs),
        pending=True,
        hotplug=hot.plan_inputs,
    ),
    Field("sysinfo", extra.read_sysinfo, extra.write_sysinfo, pending=True),
    Field(
        "filesystems",
        extra.read_filesystems,
        extra.write_filesystems,
        live=hot.hotplug_live("filesystems", hot.plan_filesystems),
        pending=True,
        hotplug=hot.plan_filesystems,
    ),
    Field(
        "hostdevs",
        extra.read_hostdevs,
        extra.write_hostdevs,
        extra.project_hostdevs,
        live=hot.hotplug_live("hostdevs", hot.plan_hostdevs),
        pending=True,
        hotplug=hot.plan_hostdevs,
    ),
    Field(
        "tuning.vcpu_pins",
        tune.read_vcpu_pins,
        tune.write_vcpu_pins,
        show=str_keys,
        live=tune.live_vcpu_pins,
    ),
    Field(
        "tuning.emulator_pin",
        tune.read_emulator_pin,
        tune.write_emulator_pin,
        live=tune.live_emulator_pin,
    ),
    Field("tuning.iothreads", tune.read_iothreads, tune.write_iothreads, pending=True),
    Field(
        "tuning.iothread_pins",
        tune.read_iothread_pins,
        tune.write_iothread_pins,
        show=str_keys,
        live=tune.live_iothread_pins,
    ),
    Field(
        "tuning.cpu_shares",
        tune.read_cputune_text("shares"),
        tune.write_cputune_text("shares"),
        live=tune.live_sched("cpu_shares", 1024),
    ),
    Field(
        "tuning.cpu_period",
        tune.read_cputune_text("period"),
        tune.write_cputune_text("period"),
        live=tune.live_sched("vcpu_period", 100000),
    ),
    Field(
        "tuning.cpu_quota",
        tune.read_cputune_text("quota"),
        tune.write_cputune_text("quota"),
        live=tune.live_sched("vcpu_quota", -1),
    ),
    Field("tuning.numa_memory", tune.read_numa, tune.write_numa, project_keys, pending=True),
    Field(
        "tuning.hugepages",
        tune.read_hugepages,
        tune.write_hugepages,
        project_keys,
        pending=True,
    ),
    Field("tuning.memory_locked", tune.read_locked, tune.write_locked, pending=True),
    Field(
        "tuning.memory_hard_limit",
        tune.read_memtune("hard_limit"),
        tune.write_memtune("hard_limit"),
        tune.project_no_limit,
        live=tune.live_memtune("hard_limit"),
    ),
    Field(
        "tuning.memory_soft_limit",
        tune.read_memtune("soft_limit"),
        tune.write_memtune("soft_limit"),
        tune.project_no_limit,
        live=tune.live_memtune("soft_limit"),
    ),
    Field(
        "tuning.blkio_weight",
        tune.read_blkio_weight,
        tune.write_blkio_weight,
        live=tune.live_blkio_weight,
    ),
    Field("tuning.cachetune", tune.read_cachetune, tune.write_cachetune),
]
FIELDS_BY_NAME = {f.name: f for f in FIELDS}


def compare(root, desired: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, before, after)`` of every wished field, in the order of ``FIELDS``."""
    result = []
    for fld in FIELDS:
        if fld.name not in desired:
            continue
        want = desired[fld.name]
        before = fld.show(fld.project(fld.read(root), want)) if root is not None else None
        result.append((fld.name, before, (fld.show_wish or fld.show)(want)))
    return result


def write(root, desired: dict[str, Any], names: list[str]) -> None:
    for fld in FIELDS:
        if fld.name in names:
            fld.write(root, desired[fld.name])


def summarize(root) -> dict[str, Any]:
    """The managed settings of a definition, as plain data (used by domain_info too)."""
    result: dict[str, Any] = {
        "name": _xml.text(root, "name"),
        "uuid": _xml.text(root, "uuid"),
    }
    for fld in FIELDS:
        value = fld.show(fld.read(root))
        parts = fld.name.split(".")
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return result


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
