# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Reconcile a storage volume (module ``virtops.kvm.volume``).

Creation paths: empty raw/qcow2 volume, qcow2 overlay on a backing image, import from a
local file or URL (streamed with ``virStorageVolUpload``), clone (``createXMLFrom``).
Existing volumes: grow (``blockResize`` when a running guest uses the volume, so that the
guest sees the new size; ``virStorageVolResize`` otherwise), shrink only when asked.
Imports, checksums and the space guard are in ``_volume_import``.
"""

from __future__ import annotations

from typing import Any

from ._check_mode import assumed_in_check_mode
from ._errors import KvmValidationError, from_libvirt
from ._libvirt import libvirt
from ._storage import (
    BackingStore,
    PoolSpec,
    VolumeSpec,
    human,
    lookup_pool,
    lookup_volume,
    round_up,
    volume_view,
)
from ._storage_users import StorageUser, describe_users
from ._volume_import import VolumeImporter
from ._volume_source import compression_by_name, source_name


class VolumeManager(VolumeImporter):
    # ------------------------------------------------------------------ entry

    def run(self) -> dict[str, Any]:
        self._validate()
        if self.params["state"] == "present":
            self.resolve_checksum()  # checksum url:URL - read in check mode too (it is small)
        self.pool = lookup_pool(self.conn, self.params["pool"], required=not self.check)
        if self.pool is None or (self.check and not self.pool.isActive()):
            return self._check_without_pool()
        if not self.pool.isActive():
            raise KvmValidationError(
                f"Storage pool '{self.params['pool']}' is not running: start it first "
                "(virtops.kvm.pool with active=true)"
            )
        self.pool_spec = PoolSpec.from_xml(self.pool.XMLDesc(0))
        vol = lookup_volume(self.pool, self.params["name"])
        if self.params["state"] == "absent":
            self.absent(vol)
        elif vol is None:
            self.create()
        else:
            self.update(vol)
        return self._finish()

    def _check_without_pool(self) -> dict[str, Any]:
        """Check mode, pool missing or stopped: an earlier task of the play may create it."""
        self.kvm.warn(
            assumed_in_check_mode(
                f"Storage pool '{self.params['pool']}'",
                "does not exist or is not running",
                "creates or starts",
            )
        )
        present = self.params["state"] == "present"
        self.diff.add("state", "absent", "present" if present else "absent")
        self.result.update(changed=present, volume=None)
        if present:
            self._act("create")
        if self.kvm.diff_mode:
            self.result["diff"] = self.diff.diff()
        return self.result

    def _validate(self) -> None:
        p = self.params
        importing = p["source_path"] or p["source_url"]
        if p["state"] == "absent":
            return
        if importing and self.capacity is not None:
            raise KvmValidationError(
                "capacity cannot be combined with source_path/source_url: the imported "
                "volume keeps the image's size so that its checksum can be verified later. "
                "Create an overlay (backing) of the size you need on the imported volume."
            )
        if p["checksum"] and not importing:
            raise KvmValidationError("checksum applies to source_path or source_url imports")
        if p["preallocation"] == "metadata" and self._format() != "qcow2":
            raise KvmValidationError("preallocation=metadata needs format=qcow2")
        if p["backing"] and p["format"] == "raw":
            raise KvmValidationError("an overlay on a backing image must be format=qcow2")
        if p["source_url"] and not p["source_url"].startswith(("http://", "https://", "ftp://")):
            raise KvmValidationError(f"source_url must be an http(s) or ftp URL: {p['source_url']}")

    def _format(self) -> str:
        if self.params["format"]:
            return self.params["format"]
        return "qcow2" if self.params["backing"] else "raw"

    # ------------------------------------------------------------------ create

    def create(self) -> None:
        p = self.params
        if p["source_path"] or p["source_url"]:
            self._import_new()
            return
        if p["clone_from"]:
            self._clone_new()
            return
        fmt = self._format()
        spec = VolumeSpec(name=p["name"], capacity=0, format=fmt, allocation=0)
        if p["backing"]:
            backing = self._backing()
            spec.backing = BackingStore(path=backing["path"], format=backing["format"])
            spec.capacity = self.capacity or backing["capacity"]
            if spec.capacity < backing["capacity"]:
                raise KvmValidationError(
                    f"capacity {spec.capacity} is smaller than the backing image "
                    f"({backing['capacity']} bytes): an overlay cannot be smaller than its base"
                )
        else:
            if self.capacity is None:
                raise KvmValidationError(
                    f"Volume '{p['name']}' does not exist: capacity is required to create it"
                )
            spec.capacity = self.capacity
        flags = 0
        if p["preallocation"] == "falloc":
            spec.allocation = spec.capacity
        if p["preallocation"] in ("metadata", "falloc") and fmt == "qcow2":
            flags |= libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA
        if self.pool_spec.type in ("logical", "rbd"):
            spec.format = None  # block and RBD volumes are raw; libvirt rejects a file format
        self._guard(
            written=spec.allocation or 0,
            capacity=spec.capacity,
            sparse=self._sparse(),
            what="creating it",
        )
        self._record_new(spec)
        self._act("create")
        if self.check:
            return
        vol = self._pool_call(lambda: self.pool.createXML(spec.to_xml(), flags), "create")
        self.result["volume"] = volume_view(vol)

    def _record_new(self, spec: VolumeSpec) -> None:
        self.diff.add("state", "absent", "present")
        self.diff.add("format", None, spec.format)
        self.diff.add("capacity", None, spec.capacity)
        self.diff.add(
            "backing_store",
            None,
            {"path": spec.backing.path, "format": spec.backing.format} if spec.backing else None,
        )
        self.result["volume"] = None

    def _backing(self) -> dict[str, Any]:
        """Path, format and capacity of the backing image named by the ``backing`` option."""
        b = self.params["backing"]
        if b.get("path"):
            vol = self._lookup_path(b["path"])
        else:
            pool = self.pool
            if b.get("pool") and b["pool"] != self.pool.name():
                pool = lookup_pool(self.conn, b["pool"])
            vol = lookup_volume(pool, b["volume"]) if pool.isActive() else None
            if vol is None and self.check:
                self.kvm.warn(assumed_in_check_mode(f"Backing volume '{b['volume']}'"))
                return {"path": None, "format": b.get("format") or "qcow2", "capacity": 0}
            if vol is None:
                raise KvmValidationError(
                    f"Backing volume '{b['volume']}' not found in pool '{pool.name()}'"
                )
        spec = VolumeSpec.from_xml(vol.XMLDesc(0))
        fmt = b.get("format") or spec.format or "raw"
        if b.get("format") and spec.format and spec.format != b["format"]:
            raise KvmValidationError(
                f"Backing image {spec.path} is {spec.format}, not {b['format']}"
            )
        return {"path": vol.path(), "format": fmt, "capacity": spec.capacity}

    def _lookup_path(self, path: str):
        try:
            return self.conn.storageVolLookupByPath(path)
        except libvirt.libvirtError as exc:
            raise KvmValidationError(
                f"Backing image '{path}' is not a volume of a running storage pool "
                f"({exc.get_error_message()})"
            ) from exc

    def _clone_new(self) -> None:
        c = self.params["clone_from"]
        pool = self.pool
        if c.get("pool") and c["pool"] != self.pool.name():
            pool = lookup_pool(self.conn, c["pool"])
        src = lookup_volume(pool, c["volume"]) if pool.isActive() else None
        if src is None:
            raise KvmValidationError(
                f"Volume to clone '{c['volume']}' not found in '{pool.name()}'"
            )
        src_spec = VolumeSpec.from_xml(src.XMLDesc(0))
        fmt = self.params["format"] or src_spec.format or "raw"
        capacity = self.capacity or src_spec.capacity
        if capacity < src_spec.capacity:
            raise KvmValidationError(
                f"capacity {capacity} is smaller than the volume to clone "
                f"({src_spec.capacity} bytes)"
            )
        spec = VolumeSpec(name=self.params["name"], capacity=capacity, format=fmt, allocation=0)
        if self.pool_spec.type in ("logical", "rbd"):
            spec.format = None
        self._guard(
            written=src_spec.allocation or 0,
            capacity=capacity,
            sparse=self._sparse(),
            what=f"cloning '{c['volume']}'",
        )
        self._record_new(spec)
        self.result["cloned_from"] = src.path()
        self._act("clone")
        if self.check:
            return
        vol = self._pool_call(lambda: self.pool.createXMLFrom(spec.to_xml(), src, 0), "clone")
        self.result["volume"] = volume_view(vol)

    # ------------------------------------------------------------------ update

    def update(self, vol) -> None:
        p = self.params
        actual = VolumeSpec.from_xml(vol.XMLDesc(0))
        self.diff.add("state", "present", "present")
        self.result["volume"] = volume_view(vol)
        if p["format"] and actual.format and p["format"] != actual.format:
            raise KvmValidationError(
                f"Volume '{p['name']}' exists as {actual.format}, not {p['format']}: the "
                "format of a volume cannot change. Delete it or use another name."
            )
        if p["backing"]:
            want = self._backing()
            have = actual.backing.path if actual.backing else None
            if have != want["path"]:
                raise KvmValidationError(
                    f"Volume '{p['name']}' exists with backing store {have or 'none'}, not "
                    f"{want['path']}: the backing store cannot change. Delete it first."
                )
        if self.checksum is not None:
            if self.check:
                digest = self._recorded_digest(vol)
            else:
                digest = self.volume_digest(vol)
                self._record_digest(vol, digest)
            expected = self._expected_content(digest)
            if digest is None or expected is None:
                self._predict_unverified(vol)
                return
            before = f"{self.checksum.algorithm}:{digest}"
            self.result["checksum_verified"] = digest == expected
            if digest != expected:
                if not p["force"]:
                    of = (
                        f"the decompressed content of the image with {self.checksum}"
                        if expected != self.checksum.digest
                        else str(self.checksum)
                    )
                    raise KvmValidationError(
                        f"Volume '{p['name']}' exists but its content does not match "
                        f"{of} (it has {before}). Set force=true to replace it "
                        "with a new import (its data is lost), or use another name.",
                        actual=before,
                    )
                self.diff.add("checksum", before, str(self.checksum))
                self._act("replace")
                self._forced_over_users(vol, "replacing")
                self._import_new(replacing=vol)
                return
        if self.capacity is not None:
            self._resize(vol, actual)
        self.result["volume"] = volume_view(vol)

    def _expected_content(self, digest: str | None) -> str | None:
        """The digest the volume's content must have: the checksum's own, or for a
        compressed image that of its decompressed content (recorded at the import, or learnt
        by reading the source again without storing it). None when check mode cannot tell
        (a compressed download whose content digest is not recorded on this host)."""
        expanded = self.digests.expanded(str(self.checksum))
        if expanded is not None:
            return expanded
        if digest is None or digest == self.checksum.digest:
            return self.checksum.digest
        if self.check and self.params["source_url"]:
            name = source_name(None, self.params["source_url"])
            return None if compression_by_name(name) else self.checksum.digest
        return self.source_content_digest() or self.checksum.digest

    def _predict_unverified(self, vol) -> None:
        """Check mode without a recorded digest: the volume is not read to compare it."""
        p = self.params
        self.result["checksum_verified"] = None
        if p["force"]:
            outcome = "the real run reads it and replaces it when it differs (force=true)"
            self.diff.add("checksum", "(not verified)", str(self.checksum))
            self._act("replace")
            self._forced_over_users(vol, "replacing")
            self._import_new(replacing=vol)
        else:
            outcome = "the real run reads it and fails when it differs"
        self.kvm.warn(
            f"Check mode does not read volume '{p['name']}' to compare it with {self.checksum} "
            f"(no digest of its current content is recorded on this host); {outcome}."
        )

    def _resize(self, vol, actual: VolumeSpec) -> None:
        p = self.params
        want = self.capacity
        have = actual.capacity
        if self.pool_spec.type == "logical":
            want = round_up(want, 4 * 1024 * 1024)  # LVM extents; libvirt rounds up too
        if want == have:
            self.diff.add("capacity", have, have)
            return
        if want < have and not p["allow_shrink"]:
            raise KvmValidationError(
                f"Refusing to shrink volume '{p['name']}' from {human(have)} ({have} bytes) to "
                f"{human(want)} ({want} bytes): data past the new end would be lost. Set "
                "allow_shrink=true to shrink it, or leave capacity as it is.",
                capacity=have,
                requested=want,
            )
        self.diff.add("capacity", have, want)
        if want > have:
            allocate = p["preallocation"] == "falloc"
            self._guard(
                written=want - have if allocate else 0,
                capacity=want - have,
                sparse=self._sparse() and not allocate,
                what=f"growing it by {human(want - have)}",
            )
        live = [
            u for u in self._users(vol) if u.guest is not None and u.running and u.how == "direct"
        ]
        action = "grow" if want > have else "shrink"
        if live:
            guest, target = live[0].guest, live[0].disk
            self.result["resized_via"] = f"blockResize of {target} in running guest {guest}"
            self._act(f"{action} (live, guest {guest})")
            if self.check:
                return
            try:
                dom = self.conn.lookupByName(guest)
                dom.blockResize(target, want, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"resize disk {target} of guest '{guest}'") from exc
            return
        self._act(action)
        if self.check:
            return
        flags = 0
        if want < have:
            flags |= libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK
        elif p["preallocation"] == "falloc":
            flags |= libvirt.VIR_STORAGE_VOL_RESIZE_ALLOCATE
        try:
            vol.resize(want, flags)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"resize volume '{p['name']}'") from exc

    # ------------------------------------------------------------------ in use

    def _users(self, vol) -> list[StorageUser]:
        return self.users.of_volume(vol, pool=self.pool)

    def _forced_over_users(self, vol, doing: str) -> None:
        """Fail when guests or volumes use ``vol``, unless force=true (then warn)."""
        users = self._users(vol)
        if not users:
            return
        p = self.params
        where = f"Volume '{p['name']}' of pool '{self.pool.name()}'"
        self.result["users"] = [u.as_dict() for u in users]
        if not p["force"]:
            raise KvmValidationError(
                f"{where} is in use: {describe_users(users)}. Nothing was changed. Detach it "
                "from the guests (or delete what backs onto it) first, or set force=true to "
                f"go on {doing} it: its users lose this data.",
                users=[u.as_dict() for u in users],
            )
        self.kvm.warn(f"{where} is in use, {doing} it anyway (force=true): {describe_users(users)}")

    # ------------------------------------------------------------------ absent

    def absent(self, vol) -> None:
        p = self.params
        if vol is None:
            self.diff.add("state", "absent", "absent")
            self.result["volume"] = None
            return
        self._forced_over_users(vol, "deleting")
        self.diff.add("state", "present", "absent")
        if p["wipe"]:
            self._act("wipe")
        self._act("delete")
        self.result["volume"] = None
        if self.check:
            return
        if p["wipe"]:
            try:
                vol.wipe(0)
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, f"wipe volume '{p['name']}'") from exc
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"delete volume '{p['name']}'") from exc
