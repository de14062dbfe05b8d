# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""What the host has, for the domain module: every check of a wish against the host.

``HostChecks`` asks the host what exists (networks, pools, volumes, bridges, files, memory,
machine types) and completes the wish (disk targets and formats, canonical machine names).
It runs after ``_domain_spec.desired_from_params`` and before anything changes, so bad
input never leaves a half-made guest.
"""

from __future__ import annotations

import os
from typing import Callable

from . import _xml
from ._check_mode import assumed_in_check_mode
from ._cpuset import parse_cpuset
from ._domain_devices import Disk, DiskWish, next_target, read_disks, read_interfaces
from ._domain_model import FIELDS_BY_NAME
from ._domain_spec import Wish
from ._errors import KvmValidationError, from_libvirt, is_error
from ._libvirt import free_memory_bytes, is_this_machine, libvirt
from ._units import MIB


def _source(disk: Disk) -> tuple:
    return (disk.path or None, disk.pool, disk.volume)


def _format_needed(disk: Disk, what: str, reason: str) -> KvmValidationError:
    return KvmValidationError(
        f"disks: set format (raw or qcow2) for disk {disk.target} ({what}): {reason}. A "
        "format is never guessed from a file's contents, which the guest can write (a qcow2 "
        "header naming any host file as its backing image)"
    )


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

        for value, maximum in (("memory", "max_memory"), ("vcpus", "max_vcpus")):
            if value in f and maximum not in f:
                current_max = FIELDS_BY_NAME[maximum].read(root)
                if current_max is not None and f[value] > current_max:
                    f[maximum] = f[value]
            if maximum in f and value not in f:
                current = FIELDS_BY_NAME[value].read(root)
                if current is not None and current > f[maximum]:
                    f[value] = f[maximum]

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
        for fs in f.get("filesystems") or []:
            self.check_dir(fs["source"], f"filesystems source of {fs['target']}")
        if f.get("tpm", {}).get("model", "none") != "none":
            self.check_tpm(f["tpm"], wish.fields.get("virt_type"))
        if f.get("hostdevs"):
            self.check_hostdevs(f, actual_root)
        self.check_cpusets(wish)

    def check_hostdevs(self, f: dict, actual_root) -> None:
        """A PCI device must exist on the host (libvirt's node devices); a device's boot order
        excludes the guest's <os><boot dev=...> list, which libvirt refuses beside it."""
        for i, dev in enumerate(f["hostdevs"]):
            if dev["type"] == "pci":
                self.pci_device(dev["address"], f"hostdevs[{i}]")
        if any(dev.get("boot_order") is not None for dev in f["hostdevs"]):
            boot = f.get("boot")
            if boot is None and actual_root is not None:
                boot = [b.get("dev") for b in actual_root.findall("os/boot")]
            if boot:
                raise KvmValidationError(
                    "hostdevs: a boot_order cannot be used with the guest's boot list "
                    f"({', '.join(boot)}); set boot: [] and give the disks' order in xml"
                )

    def pci_device(self, address: str, what: str) -> None:
        domain, bus, rest = address.split(":")
        slot, function = rest.split(".")
        name = f"pci_{domain}_{bus}_{slot}_{function}"
        try:
            self.conn.nodeDeviceLookupByName(name)
        except libvirt.libvirtError as exc:
            if is_error(exc, libvirt.VIR_ERR_NO_NODE_DEVICE):
                raise KvmValidationError(
                    f"{what}: this host has no PCI device {address} (virsh nodedev-list "
                    "--cap pci lists those it has)"
                ) from None
            raise from_libvirt(exc, f"look up the PCI device {address}") from exc

    def check_dir(self, path: str, what: str) -> None:
        if not self.local:
            return  # a remote host's directories cannot be seen through libvirt
        if not os.path.isdir(path):
            if self.check_mode and not os.path.exists(path):
                self._assume(f"The {what} directory {path}")
                return
            raise KvmValidationError(f"The {what} directory {path} does not exist")

    def check_tpm(self, tpm: dict, virt_type: str | None) -> None:
        """libvirt's domain capabilities name the TPM models, versions and the swtpm backend."""
        try:
            caps = _xml.parse(
                self.conn.getDomainCapabilities(None, None, None, virt_type or None, 0),
                "domain capabilities",
            )
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "read the domain capabilities") from exc
        elem = caps.find("devices/tpm")
        if elem is None or elem.get("supported") != "yes":
            raise KvmValidationError("tpm: this host's libvirt and QEMU support no TPM device")

        def values(name):
            return [v.text for v in elem.findall(f"enum[@name='{name}']/value")]

        for name, value in (
            ("model", tpm["model"]),
            ("backendModel", "emulator"),
            ("backendVersion", tpm["version"]),
        ):
            offered = values(name)
            if offered and value not in offered:
                raise KvmValidationError(
                    f"tpm: {value} is not offered by this host (its {name}: "
                    f"{', '.join(offered)}); the emulator backend needs swtpm installed"
                )

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

    def _lookup(self, lookup, name: str, missing: int, subject: str, action: str):
        """``lookup(name)``; when libvirt says ``missing``, an error naming the unknown
        ``subject`` (in check mode a warning that it is assumed, and None)."""
        try:
            return lookup(name)
        except libvirt.libvirtError as exc:
            if is_error(exc, missing):
                if self.check_mode:
                    self._assume(subject)
                    return None
                raise KvmValidationError(f"Unknown {subject[0].lower()}{subject[1:]}") from exc
            raise from_libvirt(exc, f"look up {action}") from exc

    # network, pool, volume: the object, or None in check mode when it does not exist yet
    def network(self, name: str):
        subject, action = f"Libvirt network {name!r}", f"network {name}"
        no_network = libvirt.VIR_ERR_NO_NETWORK
        return self._lookup(self.conn.networkLookupByName, name, no_network, subject, action)

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
        subject, action = f"Storage pool {name!r}", f"storage pool {name}"
        no_pool = libvirt.VIR_ERR_NO_STORAGE_POOL
        return self._lookup(self.conn.storagePoolLookupByName, name, no_pool, subject, action)

    def volume(self, pool_name: str, name: str):
        """The volume, or None in check mode when it (or its pool) is not there yet."""
        pool = self.pool(pool_name)
        if pool is None:
            return None
        if self.check_mode and not self._pool_active(pool, pool_name):
            self._assume(f"Storage pool {pool_name!r}", "is not running", "starts")
            return None
        subject = f"Volume {name!r} in storage pool {pool_name!r}"
        action = f"volume {name} in pool {pool_name}"
        no_volume = libvirt.VIR_ERR_NO_STORAGE_VOL
        return self._lookup(pool.storageVolLookupByName, name, no_volume, subject, action)

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
        total = self._host_mib(lambda: self.conn.getInfo()[1], "the host memory size")
        _fits(max_memory_mib, total, "", "allow it", "host_memory_mib")
        if starting:
            free = self._host_mib(
                lambda: free_memory_bytes(self.conn) // MIB, "the host's free memory"
            )
            _fits(max_memory_mib, free, " free", "start it anyway", "host_free_memory_mib")

    @staticmethod
    def _host_mib(read: Callable[[], int], what: str) -> int:
        try:
            return read()
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"read {what}") from exc


def _fits(guest_mib: int, host_mib: int, free: str, instead: str, detail: str) -> None:
    if guest_mib > host_mib:
        raise KvmValidationError(
            f"The guest's memory ({guest_mib} MiB) is more than the host has{free} "
            f"({host_mib} MiB); set memory_guard false to {instead}",
            **{detail: host_mib},
        )
