# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Typed models of libvirt storage XML (pools, volumes) and shared helpers.

The models are parsed from and built into XML with lxml and compared as objects, never as
text. Fields set to ``None`` are "not managed": libvirt's own defaults are left alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import _xml
from ._diff import DifferenceTracker
from ._errors import KvmValidationError, from_libvirt
from ._libvirt import libvirt, lookup_or_none, pool_state_name

POOL_TYPES = ("dir", "fs", "netfs", "logical", "rbd")
# Types the options do not model: their source (and anything else) comes from the xml option.
XML_POOL_TYPES = ("disk", "iscsi", "iscsi-direct", "scsi", "mpath", "gluster", "zfs", "vstorage")
# Pool types whose volumes are files in a directory that libvirt manages (sparse files work).
FILE_POOL_TYPES = ("dir", "fs", "netfs")
POOL_SOURCE_FORMATS = {
    "fs": ("auto", "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"),
    "netfs": ("auto", "nfs", "glusterfs", "cifs"),
    "logical": ("auto", "lvm2"),
}
VOLUME_TYPES = {0: "file", 1: "block", 2: "dir", 3: "network", 4: "netdir", 5: "ploop"}
SECTOR = 512


# --------------------------------------------------------------------------- pools


@dataclass
class PoolAuth:
    """``<auth>`` of a pool source: Ceph (rbd) or CHAP (iscsi) with a libvirt secret."""

    username: str
    secret_usage: str | None = None
    secret_uuid: str | None = None
    type: str = "ceph"


@dataclass
class PoolSource:
    hosts: list[tuple[str, int | None]] = field(default_factory=list)
    dir: str | None = None  # netfs: the exported directory
    devices: list[str] = field(default_factory=list)  # fs, logical
    name: str | None = None  # logical: volume group; rbd: Ceph pool
    format: str | None = None
    protocol_version: str | None = None  # netfs nfs: <protocol ver=.../>
    auth: PoolAuth | None = None

    def is_empty(self) -> bool:
        return self == PoolSource()


@dataclass
class PoolSpec:
    name: str
    type: str
    target: str | None = None
    source: PoolSource = field(default_factory=PoolSource)
    uuid: str | None = None

    # -- XML ---------------------------------------------------------------------------

    @classmethod
    def from_xml(cls, text: str | bytes) -> PoolSpec:
        root = _xml.parse(text, "storage pool XML")
        src = root.find("source")
        source = PoolSource()
        if src is not None:
            for host in src.findall("host"):
                port = host.get("port")
                source.hosts.append((host.get("name"), int(port) if port else None))
            source.dir = _xml.attr(src, "dir", "path")
            source.devices = [d.get("path") for d in src.findall("device") if d.get("path")]
            source.name = _xml.text(src, "name")
            source.format = _xml.attr(src, "format", "type")
            source.protocol_version = _xml.attr(src, "protocol", "ver")
            auth = src.find("auth")
            if auth is not None:
                source.auth = PoolAuth(
                    username=auth.get("username"),
                    secret_usage=_xml.attr(auth, "secret", "usage"),
                    secret_uuid=_xml.attr(auth, "secret", "uuid"),
                    type=auth.get("type") or "ceph",
                )
        return cls(
            name=_xml.text(root, "name"),
            type=root.get("type"),
            target=_xml.text(root, "target/path"),
            source=source,
            uuid=_xml.text(root, "uuid"),
        )

    def to_xml(self) -> str:
        root = _xml.etree.Element("pool", type=self.type)
        _xml.sub(root, "name", self.name)
        if self.uuid:
            _xml.sub(root, "uuid", self.uuid)
        src = _xml.sub(root, "source")
        s = self.source
        for host, port in s.hosts:
            _xml.sub(src, "host", name=host, port=port)
        if s.dir:
            _xml.sub(src, "dir", path=s.dir)
        for dev in s.devices:
            _xml.sub(src, "device", path=dev)
        if s.auth is not None:
            auth = _xml.sub(src, "auth", type=s.auth.type, username=s.auth.username)
            _xml.sub(auth, "secret", uuid=s.auth.secret_uuid, usage=s.auth.secret_usage)
        if s.name:
            _xml.sub(src, "name", s.name)
        if s.format:
            _xml.sub(src, "format", type=s.format)
        if s.protocol_version:
            _xml.sub(src, "protocol", ver=s.protocol_version)
        if self.target and self.type != "rbd":
            tgt = _xml.sub(root, "target")
            _xml.sub(tgt, "path", self.target)
        return _xml.to_string(root)


def pool_spec_from_params(
    params: dict[str, Any], ptype: str | None = None, *, complete: bool = True
) -> PoolSpec:
    """Validate the pool module's options and build the desired pool model.

    ``ptype`` is the type when the ``xml`` option gives it. With ``complete=False`` (an
    ``xml`` option completes the definition) only contradictions are refused here; what a
    type requires is checked on the merged definition with ``check_required``.
    """
    ptype = ptype or params["type"]
    name = params["name"]
    src = params.get("source") or {}
    target = params.get("target")
    hosts = [_parse_host(h) for h in src.get("hosts") or []]
    devices = list(src.get("devices") or [])
    source = PoolSource(
        hosts=hosts,
        dir=src.get("dir"),
        devices=devices,
        name=src.get("name"),
        format=src.get("format"),
        protocol_version=src.get("protocol_version"),
    )
    auth = src.get("auth")
    if auth:
        source.auth = PoolAuth(
            username=auth["username"],
            secret_usage=auth.get("secret_usage"),
            secret_uuid=auth.get("secret_uuid"),
        )
        if not source.auth.secret_usage and not source.auth.secret_uuid:
            source.auth.secret_usage = f"client.{auth['username']} secret"

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise KvmValidationError(f"Storage pool '{name}' of type '{ptype}': {msg}")

    if target is not None:
        need(ptype != "rbd", "option 'target' does not apply to rbd pools")
        need(target.startswith("/"), f"option 'target' must be an absolute path, got '{target}'")
    if ptype in XML_POOL_TYPES:
        need(
            source.is_empty(),
            "option 'source' covers the typed pool types only: give the "
            "source of this type in the xml option",
        )
        return PoolSpec(name=name, type=ptype, target=target, source=source)
    if ptype == "dir":
        need(source.is_empty(), "option 'source' does not apply to dir pools")
    if ptype == "logical":
        if source.name is None:
            source.name = name
        if target is None:
            target = f"/dev/{source.name}"
    if ptype != "rbd":
        need(source.auth is None, "option 'source.auth' applies to rbd pools only")
    if ptype not in ("netfs",):
        need(source.protocol_version is None, "'source.protocol_version' is for netfs only")
    if ptype not in ("netfs", "rbd"):
        need(not hosts, "option 'source.hosts' applies to netfs and rbd pools only")
    if ptype not in ("fs", "logical"):
        need(not devices, "option 'source.devices' applies to fs and logical pools only")
    if source.format is not None:
        allowed = POOL_SOURCE_FORMATS.get(ptype, ())
        need(
            source.format in allowed,
            f"'source.format' must be one of {', '.join(allowed) or 'nothing'}",
        )
    elif ptype == "netfs":
        source.format = "nfs"
    spec = PoolSpec(name=name, type=ptype, target=target, source=source)
    if complete:
        check_required(spec)
    return spec


def check_required(spec: PoolSpec) -> None:
    """What each typed pool type needs (on the options, or on the merged definition)."""
    s = spec.source

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise KvmValidationError(f"Storage pool '{spec.name}' of type '{spec.type}': {msg}")

    if spec.type in ("dir", "fs", "netfs"):
        need(bool(spec.target), "option 'target' (the directory of the pool) is required")
    if spec.type == "fs":
        need(len(s.devices) == 1, "option 'source.devices' must name exactly one block device")
    if spec.type == "netfs":
        need(len(s.hosts) == 1, "option 'source.hosts' must name exactly one server")
        need(bool(s.dir), "option 'source.dir' (the exported directory) is required")
    if spec.type == "rbd":
        need(bool(s.hosts), "option 'source.hosts' must name at least one Ceph monitor")
        need(bool(s.name), "option 'source.name' (the Ceph pool) is required")


def _parse_host(value: str) -> tuple[str, int | None]:
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return host.strip("[]"), int(port)
    return value, None


def pool_source_view(source: PoolSource) -> dict[str, Any]:
    """The source of a pool as plain data for results and diffs (empty fields left out)."""
    data: dict[str, Any] = {}
    if source.hosts:
        data["hosts"] = [f"{h}:{p}" if p else h for h, p in source.hosts]
    for key in ("dir", "name", "format", "protocol_version"):
        if getattr(source, key):
            data[key] = getattr(source, key)
    if source.devices:
        data["devices"] = list(source.devices)
    if source.auth:
        data["auth"] = {k: v for k, v in asdict(source.auth).items() if v}
    return data


def pool_view(pool) -> dict[str, Any]:
    """What modules return about a pool: settings, state and capacities in bytes."""
    spec = PoolSpec.from_xml(pool.XMLDesc(0))
    state, capacity, allocation, available = pool.info()
    active = bool(pool.isActive())
    return {
        "name": pool.name(),
        "uuid": pool.UUIDString(),
        "type": spec.type,
        "target": spec.target,
        "source": pool_source_view(spec.source),
        "state": pool_state_name(state),
        "active": active,
        "autostart": bool(pool.autostart()),
        "persistent": bool(pool.isPersistent()),
        "capacity": capacity,
        "allocation": allocation,
        "available": available,
        "volume_count": pool.numOfVolumes() if active else None,
    }


class StorageManager:
    """What the pool and volume managers share: the module's parameters and connection, the
    differences found and the result with the list of actions taken (or, in check mode,
    that would be taken)."""

    def __init__(self, kvm) -> None:
        self.kvm = kvm
        self.params = kvm.params
        self.conn = kvm.conn
        self.check = kvm.check_mode
        self.diff = DifferenceTracker()
        self.result: dict[str, Any] = {"changed": False, "actions": []}

    def _act(self, action: str) -> None:
        self.result["actions"].append(action)

    def _finish(self) -> dict[str, Any]:
        """The result: changed when anything differed or was done, with the diff if asked."""
        self.result["changed"] = bool(self.diff) or bool(self.result["actions"])
        if self.kvm.diff_mode:
            self.result["diff"] = self.diff.diff()
        return self.result


def lookup_pool(conn, name: str, *, required: bool = True):
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            if required:
                raise KvmValidationError(f"Storage pool '{name}' does not exist") from exc
            return None
        raise from_libvirt(exc, f"look up storage pool '{name}'") from exc


def lookup_volume(pool, name: str):
    """The volume ``name`` of a running pool, or None."""
    return lookup_or_none(
        lambda: pool.storageVolLookupByName(name),
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        f"look up volume '{name}' in pool '{pool.name()}'",
    )


# --------------------------------------------------------------------------- volumes


@dataclass
class BackingStore:
    path: str
    format: str | None = None


@dataclass
class VolumeSpec:
    name: str
    capacity: int
    format: str | None = None
    allocation: int | None = None
    backing: BackingStore | None = None
    # read-only facts filled from libvirt's XML
    key: str | None = None
    path: str | None = None
    type: str | None = None
    physical: int | None = None

    @classmethod
    def from_xml(cls, text: str | bytes) -> VolumeSpec:
        root = _xml.parse(text, "storage volume XML")
        backing = None
        if root.find("backingStore/path") is not None:
            backing = BackingStore(
                path=_xml.text(root, "backingStore/path"),
                format=_xml.attr(root, "backingStore/format", "type"),
            )
        return cls(
            name=_xml.text(root, "name"),
            capacity=_bytes(root, "capacity"),
            allocation=_bytes(root, "allocation"),
            physical=_bytes(root, "physical"),
            format=_xml.attr(root, "target/format", "type"),
            backing=backing,
            key=_xml.text(root, "key"),
            path=_xml.text(root, "target/path"),
            type=root.get("type"),
        )

    def to_xml(self) -> str:
        root = _xml.etree.Element("volume")
        _xml.sub(root, "name", self.name)
        _xml.sub(root, "capacity", self.capacity, unit="bytes")
        if self.allocation is not None:
            _xml.sub(root, "allocation", self.allocation, unit="bytes")
        if self.format:
            tgt = _xml.sub(root, "target")
            _xml.sub(tgt, "format", type=self.format)
        if self.backing is not None:
            bs = _xml.sub(root, "backingStore")
            _xml.sub(bs, "path", self.backing.path)
            if self.backing.format:
                _xml.sub(bs, "format", type=self.backing.format)
        return _xml.to_string(root)


def _bytes(root, tag: str) -> int | None:
    """A size element in bytes, honouring its ``unit`` attribute."""
    elem = root.find(tag)
    if elem is None or not (elem.text or "").strip():
        return None
    unit = (elem.get("unit") or "bytes").lower()
    scale = _UNIT_SCALE.get(unit)
    if scale is None:
        raise KvmValidationError(f"Unknown size unit '{unit}' in <{tag}>")
    return int(elem.text.strip()) * scale


_UNIT_SCALE = {"b": 1, "bytes": 1}
for _i, _p in enumerate("kmgtpe", start=1):
    _UNIT_SCALE[_p] = _UNIT_SCALE[f"{_p}ib"] = 1024**_i
    _UNIT_SCALE[f"{_p}b"] = 1000**_i


def volume_view(vol) -> dict[str, Any]:
    spec = VolumeSpec.from_xml(vol.XMLDesc(0))
    vtype, capacity, allocation = vol.info()
    data = {
        "name": vol.name(),
        "key": vol.key(),
        "path": vol.path(),
        "type": VOLUME_TYPES.get(vtype, str(vtype)),
        "format": spec.format,
        "capacity": capacity,
        "allocation": allocation,
        "physical": spec.physical,
        "backing_store": None,
    }
    if spec.backing is not None:
        data["backing_store"] = {"path": spec.backing.path, "format": spec.backing.format}
    return data


def round_up(value: int, step: int = SECTOR) -> int:
    return -(-value // step) * step


def human(num: int | None) -> str:
    if num is None:
        return "unknown"
    size = float(num)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{num} B"  # pragma: no cover


# --------------------------------------------------------------------------- info


def pools_info(conn, name: str | None = None, *, refresh: bool = False) -> list[dict[str, Any]]:
    """Views of one pool (``name``) or all pools, sorted by name."""
    if name is not None:
        pool = lookup_pool(conn, name, required=False)
        pools = [pool] if pool is not None else []
    else:
        try:
            pools = conn.listAllStoragePools(0)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, "list storage pools") from exc
    views = []
    for pool in pools:
        try:
            if refresh and pool.isActive():
                pool.refresh(0)
            views.append(pool_view(pool))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                continue  # removed while we listed
            raise from_libvirt(exc, f"read storage pool '{pool.name()}'") from exc
    return sorted(views, key=lambda v: v["name"])


def volumes_info(
    conn, pool_name: str, name: str | None = None, *, refresh: bool = False
) -> list[dict[str, Any]]:
    """Views of one volume (``name``) or all volumes of a running pool, sorted by name."""
    pool = lookup_pool(conn, pool_name)
    if not pool.isActive():
        raise KvmValidationError(f"Storage pool '{pool_name}' is not running: no volumes to list")
    try:
        if refresh:
            pool.refresh(0)
        if name is not None:
            vol = lookup_volume(pool, name)
            vols = [vol] if vol is not None else []
        else:
            vols = pool.listAllVolumes(0)
        return sorted((volume_view(v) for v in vols), key=lambda v: v["name"])
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, f"read the volumes of storage pool '{pool_name}'") from exc
