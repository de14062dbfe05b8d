# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Who uses a storage volume: the collection's one notion of "storage in use".

A volume is in use when a guest of the connection (running or shut off, persistent or
transient) has it as the source of a disk - a ``file``, ``block``, ``volume`` (pool and
volume) or ``network`` (protocol and name) source - or as any layer of a disk's backing
chain, or when another volume of its pool backs onto it.

Backing chains come from the ``<backingStore>`` elements of the guests' XML (the live XML
of a running guest has the whole chain) and, for disks whose XML names no chain, from the
``<backingStore><path>`` of the volume XML that libvirt reports for each layer. A qcow2
file outside every storage pool has no volume XML, so the chain of a shut-off guest's disk
on such a file is not known.

``StorageUsers`` reads each guest's XML once and answers any number of questions.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from . import _xml
from ._domain_devices import Disk
from ._errors import from_libvirt, is_error
from ._libvirt import libvirt
from ._storage import PoolSpec, VolumeSpec

DIRECT = "direct"
BACKING_CHAIN = "backing chain"
MAX_CHAIN = 64  # layers followed through volume XML; loops end earlier

# What a disk layer points at: ("path", path), ("volume", pool, name), ("network", protocol,
# name). One layer may have several keys once resolved (a pool volume also has a path).
Key = tuple


@dataclass(frozen=True)
class StorageUser:
    """One use of a volume: a guest's disk, or another volume backing onto it."""

    guest: str | None  # None: a volume of the pool backs onto it
    disk: str | None  # the guest's disk target (vda)
    how: str  # direct | backing chain | backing of volume NAME
    running: bool = False
    volume: str | None = None  # the volume used (its name; pool-wide answers)

    def describe(self) -> str:
        if self.guest is None:
            return f"volume {self.how.removeprefix('backing of volume ')} backs onto it"
        state = "running" if self.running else "shut off"
        via = "" if self.how == DIRECT else f" ({self.how})"
        used = f" uses {self.volume}" if self.volume else ""
        return f"guest {self.guest} ({state}) disk {self.disk}{via}{used}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_users(users: list[StorageUser]) -> str:
    return "; ".join(u.describe() for u in users)


@dataclass
class _Layer:
    keys: frozenset  # of Key


@dataclass
class _GuestDisk:
    guest: str
    target: str
    running: bool
    source: _Layer
    raw: bool  # the top layer is raw: nothing to follow through volume XML
    backing: list[_Layer] = field(default_factory=list)  # from the guest's XML


def _norm(path: str) -> str:
    return os.path.normpath(path)


def _layer_keys(elem) -> set[Key]:
    """The keys of a ``<disk>`` or ``<backingStore>`` element's source (unresolved)."""
    source = elem.find("source")
    if source is None:
        return set()
    kind = elem.get("type", "file")
    if kind == "network":
        protocol, name = source.get("protocol"), source.get("name")
        return {("network", protocol, name)} if protocol and name else set()
    disk = Disk.from_xml(elem)  # file, block, dir and volume sources
    if disk.volume is not None:
        return {("volume", disk.pool, disk.volume)}
    return {("path", _norm(disk.path))} if disk.path else set()


def _xml_chain(disk_elem) -> list[set[Key]]:
    chain = []
    store = disk_elem.find("backingStore")
    while store is not None:
        keys = _layer_keys(store)
        if not keys:
            break  # <backingStore/> ends the chain
        chain.append(keys)
        store = store.find("backingStore")
    return chain


class StorageUsers:
    """Answers "who uses this volume / any volume of this pool?" for one connection."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self._disks: list[_GuestDisk] | None = None
        self._volume_paths: dict[tuple[str, str], str | None] = {}
        self._backing_of: dict[str, str | None] = {}
        self._chains: dict[int, list[_Layer]] = {}

    # ------------------------------------------------------------------ questions

    def of_volume(self, vol, *, pool=None, exclude_guest: str | None = None) -> list[StorageUser]:
        """Guests using ``vol`` (any layer), and volumes of its pool backing onto it."""
        if pool is None:
            pool = self._call(vol.storagePoolLookupByVolume, f"find the pool of {vol.name()}")
        pool_type = PoolSpec.from_xml(pool.XMLDesc(0)).type
        path = _norm(vol.path())
        keys = {("path", path), ("volume", pool.name(), vol.name())}
        if pool_type == "rbd":
            keys.add(("network", "rbd", vol.path()))
        users = self._guest_users(lambda k: vol.name() if k & keys else None, exclude_guest)
        for other in self._call(lambda: pool.listAllVolumes(0), f"list volumes of {pool.name()}"):
            if other.name() == vol.name():
                continue
            backing = VolumeSpec.from_xml(other.XMLDesc(0)).backing
            if backing is not None and backing.path and _norm(backing.path) == path:
                users.append(StorageUser(None, None, f"backing of volume {other.name()}"))
        return users

    def of_pool(self, pool, *, exclude_guest: str | None = None) -> list[StorageUser]:
        """Guests using any volume of ``pool``; volumes of the pool itself do not count.

        A running pool is asked for its volumes. For a stopped one, a disk layer counts when
        it names the pool, or lies under its target directory (or Ceph pool).
        """
        spec = PoolSpec.from_xml(pool.XMLDesc(0))
        by_key: dict[Key, str] = {}
        if pool.isActive():
            for vol in self._call(lambda: pool.listAllVolumes(0), f"list volumes of {spec.name}"):
                by_key[("path", _norm(vol.path()))] = vol.name()
                by_key[("volume", spec.name, vol.name())] = vol.name()
                if spec.type == "rbd":
                    by_key[("network", "rbd", vol.path())] = vol.name()
        prefix = _norm(spec.target) + os.sep if spec.target and spec.type != "rbd" else None
        ceph = f"{spec.source.name}/" if spec.type == "rbd" and spec.source.name else None

        def match(keys: frozenset) -> str | None:
            for key in keys:
                if key in by_key:
                    return by_key[key]
                if key[0] == "volume" and key[1] == spec.name:
                    return key[2]
                if key[0] == "path" and prefix and key[1].startswith(prefix):
                    return os.path.relpath(key[1], prefix)
                if key[0] == "network" and ceph and key[1] == "rbd" and key[2].startswith(ceph):
                    return key[2][len(ceph) :]
            return None

        return self._guest_users(match, exclude_guest)

    # ------------------------------------------------------------------ guests

    def _guest_users(
        self, match: Callable[[frozenset], str | None], exclude_guest: str | None
    ) -> list[StorageUser]:
        users: list[StorageUser] = []
        seen: set[tuple] = set()
        for disk in self.guest_disks():
            if disk.guest == exclude_guest:
                continue
            found = []
            used = match(disk.source.keys)
            if used is not None:
                found.append((DIRECT, used))
            for layer in self._chain(disk):
                used = match(layer.keys)
                if used is not None:
                    found.append((BACKING_CHAIN, used))
            for how, used in found:
                user = StorageUser(disk.guest, disk.target, how, disk.running, used)
                ident = (user.guest, user.disk, user.volume)
                if ident not in seen:
                    seen.add(ident)
                    users.append(user)
        return users

    def guest_disks(self) -> list[_GuestDisk]:
        """Every disk of every guest, from the inactive and (when running) the live XML."""
        if self._disks is not None:
            return self._disks
        disks: list[_GuestDisk] = []
        domains = self._call(lambda: self.conn.listAllDomains(0), "list guests")
        for dom in sorted(domains, key=lambda d: d.name()):
            try:
                name = dom.name()
                running = bool(dom.isActive())
                texts = []
                if dom.isPersistent():
                    texts.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                if running:
                    texts.append(dom.XMLDesc(0))
            except libvirt.libvirtError as exc:
                if is_error(exc, libvirt.VIR_ERR_NO_DOMAIN):
                    continue  # went away while we listed
                raise from_libvirt(exc, "read the disks of the guests") from exc
            by_target: dict[str, _GuestDisk] = {}
            for text in texts:
                root = _xml.parse(text, f"domain XML of {name}")
                for elem in root.findall("devices/disk"):
                    self._add_disk(by_target, disks, name, running, elem)
        self._disks = disks
        return disks

    def _add_disk(self, by_target, disks, name: str, running: bool, elem) -> None:
        keys = self._resolve(_layer_keys(elem))
        if not keys:
            return  # an empty CD-ROM drive
        target = _xml.attr(elem, "target", "dev") or "?"
        chain = [_Layer(frozenset(self._resolve(k))) for k in _xml_chain(elem)]
        fmt = _xml.attr(elem, "driver", "type")
        have = by_target.get(target)
        if have is not None and have.source.keys == keys:
            have.backing += [layer for layer in chain if layer not in have.backing]
            return
        disk = _GuestDisk(name, target, running, _Layer(frozenset(keys)), fmt == "raw", chain)
        by_target.setdefault(target, disk)
        disks.append(disk)

    def _chain(self, disk: _GuestDisk) -> list[_Layer]:
        """The backing layers of a disk: its XML's, else those the volume XML reports."""
        if disk.backing or disk.raw:
            return disk.backing
        cached = self._chains.get(id(disk))
        if cached is not None:
            return cached
        chain: list[_Layer] = []
        paths = [k[1] for k in disk.source.keys if k[0] == "path"]
        seen = set(paths)
        path = paths[0] if paths else None
        while path is not None and len(chain) < MAX_CHAIN:
            path = self._backing_path(path)
            if path is None or path in seen:
                break
            seen.add(path)
            chain.append(_Layer(frozenset({("path", path)})))
        self._chains[id(disk)] = chain
        return chain

    # ------------------------------------------------------------------ resolution

    def _resolve(self, keys: set[Key]) -> set[Key]:
        """Add the path of a pool volume to its keys, when its pool is running."""
        out = set(keys)
        for key in keys:
            if key[0] == "volume":
                path = self._volume_path(key[1], key[2])
                if path is not None:
                    out.add(("path", path))
        return out

    def _volume_path(self, pool_name: str, vol_name: str) -> str | None:
        ident = (pool_name, vol_name)
        if ident not in self._volume_paths:
            try:
                pool = self.conn.storagePoolLookupByName(pool_name)
                path = _norm(pool.storageVolLookupByName(vol_name).path())
            except libvirt.libvirtError:
                path = None  # missing or stopped pool, or no such volume: the name still counts
            self._volume_paths[ident] = path
        return self._volume_paths[ident]

    def _backing_path(self, path: str) -> str | None:
        """The backing image libvirt reports for the volume at ``path`` (None: none or no
        volume there)."""
        if path not in self._backing_of:
            backing = None
            try:
                vol = self.conn.storageVolLookupByPath(path)
                spec = VolumeSpec.from_xml(vol.XMLDesc(0))
                if spec.backing is not None and spec.backing.path:
                    backing = _norm(spec.backing.path)
            except libvirt.libvirtError:
                pass  # not a volume of a running pool
            self._backing_of[path] = backing
        return self._backing_of[path]

    @staticmethod
    def _call(func, action: str):
        try:
            return func()
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, action) from exc
