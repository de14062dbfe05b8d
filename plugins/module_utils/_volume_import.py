# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Volumes made from images: import from a local file or URL (streamed with
``virStorageVolUpload``, verified against a checksum, given or picked from a checksum file),
compressed images decompressed on the way, and replacing a volume whose content differs.
Checksums and recorded digests are in ``_volume_digests``; reading the sources (checksum
files, downloads, decompression) in ``_volume_stream`` and ``_volume_source``.

``VolumeImporter`` is the base of the volume manager (``_volume.VolumeManager``): it also
holds what every volume change uses, the space guard and the pool calls.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ._errors import KvmError, KvmValidationError, from_libvirt
from ._libvirt import libvirt
from ._storage import (
    FILE_POOL_TYPES,
    PoolSpec,
    StorageManager,
    VolumeSpec,
    human,
    lookup_volume,
    round_up,
    volume_view,
)
from ._storage_users import StorageUsers
from ._units import parse_size
from ._volume_digests import Checksum, DigestRecords, volume_fingerprint
from ._volume_source import detect, parse_checksum_url
from ._volume_stream import CHUNK, ImportFile, StreamImport, qcow2_virtual_size

NEW_SUFFIX = ".virtops-new"  # a replacement is uploaded under this name first


class VolumeImporter(StreamImport, StorageManager):
    def __init__(
        self,
        kvm,
        fetch: Callable[..., Any] | None = None,
        digests: DigestRecords | None = None,
    ) -> None:
        super().__init__(kvm)
        self.pool: Any = None  # the pool and its settings: set by run()
        self.pool_spec: PoolSpec | None = None
        self._fetch = fetch  # injectable downloader (tests); fetch_url by default
        self.digests = digests or DigestRecords()
        self.users = StorageUsers(self.conn)
        value = self.params["checksum"]
        # ALGORITHM:HEX now; url:URL (or ALGORITHM:URL) once the checksum file is read
        self.checksum_url = parse_checksum_url(value) if value else None
        self.checksum = Checksum.parse(value) if value and not self.checksum_url else None
        self.capacity = self._capacity()

    def _capacity(self) -> int | None:
        value = self.params["capacity"]
        if value is None:
            return None
        size = parse_size(value, default_unit="B", what="capacity")
        if size <= 0:
            raise KvmValidationError(f"capacity must be positive, got '{value}'")
        return round_up(size)

    def _sparse(self) -> bool:
        return self.pool_spec.type in (*FILE_POOL_TYPES, "rbd") and (
            self.params["preallocation"] != "falloc"
        )

    # ------------------------------------------------------------------ space guard

    def _guard(self, *, written: int, capacity: int, sparse: bool, what: str) -> None:
        """Refuse what does not fit the pool's available space.

        ``written`` bytes are written at once (never overcommitted); the rest up to
        ``capacity`` is allocated later by a sparse volume, which ``allow_overcommit`` permits.
        """
        try:
            self.pool.refresh(0)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"refresh storage pool '{self.pool.name()}'") from exc
        available = self.pool.info()[3]
        name = f"Volume '{self.params['name']}'"
        where = f"pool '{self.pool.name()}' has {human(available)} ({available} bytes) available"
        if written > available:
            raise KvmValidationError(
                f"{name} does not fit: {what} writes {human(written)} ({written} bytes) but "
                f"{where}. Free space in the pool or use another pool (allow_overcommit does "
                "not apply to data written now).",
                needed=written,
                available=available,
            )
        if capacity > available:
            if not sparse:
                raise KvmValidationError(
                    f"{name} does not fit: {what} needs {human(capacity)} ({capacity} bytes) "
                    f"allocated but {where}. Preallocated volumes cannot be overcommitted.",
                    needed=capacity,
                    available=available,
                )
            if not self.params["allow_overcommit"]:
                raise KvmValidationError(
                    f"{name} does not fit: {what} has a capacity of {human(capacity)} "
                    f"({capacity} bytes) but {where}. It is sparse, so set "
                    "allow_overcommit=true to create it anyway (writes fail once the pool "
                    "is full).",
                    needed=capacity,
                    available=available,
                )
            self.kvm.warn(
                f"{name} overcommits pool '{self.pool.name()}': capacity {human(capacity)}, "
                f"available {human(available)}"
            )

    # ------------------------------------------------------------------ import

    def _import_new(self, *, replacing=None) -> None:
        """Import into a new volume, or into the place of ``replacing`` (an existing volume)."""
        p = self.params
        self._act("import")
        if replacing is None:
            self.diff.add("state", "absent", "present")
        self.result["volume"] = None
        if self.check:
            # Nothing is downloaded in check mode; a local file is verified now.
            if p["source_path"]:
                self._local_file()
                self.result["compression"] = self._local_compression()
            self.diff.add("format", None, p["format"])
            self.diff.add("checksum", None, str(self.checksum) if self.checksum else None)
            return
        what = f"importing {p['source_path'] or p['source_url']}"
        vol = None
        if p["source_path"] and self._local_compression() is None:
            src = self._local_file()
        else:
            raw = self._open_source(replacing)
            if raw.compression and replacing is None and self.pool_spec.type in FILE_POOL_TYPES:
                vol, src = self._stream_new(raw, what)
            else:
                src = self._to_temp(raw, replacing)
        try:
            if vol is not None:
                pass  # uploaded while it was read
            elif replacing is None:
                self._guard(
                    written=src.size,
                    capacity=max(src.virtual_size, src.size),
                    sparse=self._sparse(),
                    what=what,
                )
                spec = VolumeSpec(name=p["name"], capacity=src.size, format="raw", allocation=0)
                vol = self._upload_new(spec, src)
            else:
                vol = self._replace(replacing, src, what)
        finally:
            src.cleanup()
        if self.checksum and src.content_digest:
            self._record_digest(vol, src.content_digest)
            if src.compression:
                self.digests.put_expanded(str(self.checksum), src.content_digest)
        view = volume_view(vol)
        view["checksum"] = f"{self.checksum.algorithm}:{src.digest}" if self.checksum else None
        self.result["compression"] = src.compression
        self.diff.add("format", None, view["format"])
        self.diff.add("capacity", None, view["capacity"])
        self.diff.add("checksum", None, view["checksum"])
        self.result["volume"] = view

    def _local_compression(self) -> str | None:
        try:
            with open(self.params["source_path"], "rb") as fh:
                return detect(fh.read(8))
        except OSError:
            return None  # _local_file reports it

    def _local_file(self) -> ImportFile:
        path = self.params["source_path"]
        if not os.path.isfile(path):
            raise KvmValidationError(f"source_path '{path}' is not a file on the managed host")
        try:
            with open(path, "rb") as fh:
                header = fh.read(32)
            digest = None
            if self.checksum:
                digest = self._hash_file(path)
                self._verify(digest, path)
            size = os.path.getsize(path)
        except OSError as exc:
            raise KvmValidationError(
                f"Cannot read source_path '{path}': {exc.strerror or exc}",
                option="source_path",
                path=path,
            ) from exc
        return ImportFile(path, size, qcow2_virtual_size(header) or size, digest)

    def _hash_file(self, path: str) -> str:
        h = self.checksum.new()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()

    def _verify(self, digest: str, what: str) -> None:
        if digest != self.checksum.digest:
            raise KvmValidationError(
                f"Checksum mismatch for {what}: expected {self.checksum}, got "
                f"{self.checksum.algorithm}:{digest}. Nothing was imported.",
                expected=str(self.checksum),
                actual=f"{self.checksum.algorithm}:{digest}",
            )

    def _replace(self, old, src: ImportFile, what: str):
        """Put ``src`` in the place of the volume ``old``, the new before the old goes.

        The image is uploaded (and its format checked) as ``NAME.virtops-new`` while the old
        volume is still there, so a failed upload leaves the old one as it was. Only then is
        the old volume deleted and the image uploaded again under its name (a byte copy, so
        that the checksum of the volume is the image's); the new copy is deleted last.
        """
        name = self.params["name"]
        old_allocation = old.info()[2]
        self._guard(
            written=max(src.size, 2 * src.size - old_allocation),
            capacity=max(src.virtual_size, src.size),
            sparse=self._sparse(),
            what=f"{what} (a new copy is made before the old volume is deleted)",
        )
        staged = f"{name}{NEW_SUFFIX}"
        self._delete_quietly(staged)  # left by an earlier run that failed at the last step
        spec = VolumeSpec(name=staged, capacity=src.size, format="raw", allocation=0)
        self._upload_new(spec, src)
        try:
            self._pool_call(lambda: old.delete(0), "delete (to replace)")
        except KvmError:
            self._delete_quietly(staged)
            raise
        spec = VolumeSpec(name=name, capacity=src.size, format="raw", allocation=0)
        try:
            vol = self._upload_new(spec, src)
        except KvmError as exc:
            raise KvmError(
                f"{exc.msg}. The old volume '{name}' was deleted; the new image is complete "
                f"in volume '{staged}' of pool '{self.pool.name()}'.",
                staged_volume=staged,
            ) from exc
        self._delete_quietly(staged)
        return vol

    def _upload_new(self, spec: VolumeSpec, src: ImportFile):
        """Create a raw volume of the file's size and stream the file into it.

        libvirt probes the file's real format (raw or qcow2) when the pool is refreshed.
        On any failure the new volume is deleted.
        """
        if self.pool_spec.type in ("logical", "rbd"):
            spec.format = None
        vol = self._pool_call(lambda: self.pool.createXML(spec.to_xml(), 0), "create")
        try:
            stream = self.conn.newStream(0)
            vol.upload(stream, 0, src.size, 0)
            with open(src.path, "rb") as fh:
                try:
                    stream.sendAll(lambda _stream, n, f: f.read(min(n, CHUNK)), fh)
                    stream.finish()
                except libvirt.libvirtError:
                    stream.abort()
                    raise
            vol = self._probed(spec.name)
        except (KvmError, libvirt.libvirtError) as exc:
            self._delete_quietly(spec.name)
            if isinstance(exc, KvmError):
                raise
            raise from_libvirt(exc, f"upload into volume '{spec.name}'") from exc
        return vol

    def _probed(self, name: str):
        """The uploaded volume once libvirt has probed its format, which must be the one
        asked for."""
        self.pool.refresh(0)
        vol = self.pool.storageVolLookupByName(name)
        actual_format = VolumeSpec.from_xml(vol.XMLDesc(0)).format
        wanted = self.params["format"]
        if wanted and actual_format and actual_format != wanted:
            raise KvmValidationError(
                f"The imported image is {actual_format}, but format={wanted} was asked. "
                "Nothing was imported."
            )
        return vol

    def _delete_quietly(self, name: str) -> None:
        try:
            self.pool.refresh(0)
            vol = lookup_volume(self.pool, name)
            if vol is not None:
                vol.delete(0)
        except (KvmError, libvirt.libvirtError):
            pass

    def volume_digest(self, vol) -> str:
        """Hash a volume's content as stored (``virStorageVolDownload``)."""
        h = self.checksum.new()
        stream = self.conn.newStream(0)
        try:
            vol.download(stream, 0, 0, 0)
            stream.recvAll(lambda _stream, data, hh: hh.update(data), h)
            stream.finish()
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"read volume '{vol.name()}' to verify its checksum") from exc
        return h.hexdigest()

    def _digest_ident(self, vol) -> str:
        return f"{self.conn.getURI()} {vol.key()}"

    def _recorded_digest(self, vol) -> str | None:
        fingerprint = volume_fingerprint(vol.XMLDesc(0))
        return self.digests.get(self._digest_ident(vol), fingerprint, self.checksum.algorithm)

    def _record_digest(self, vol, digest: str) -> None:
        fingerprint = volume_fingerprint(vol.XMLDesc(0))
        self.digests.put(self._digest_ident(vol), fingerprint, self.checksum.algorithm, digest)

    def _pool_call(self, func, action: str):
        try:
            return func()
        except libvirt.libvirtError as exc:
            raise from_libvirt(
                exc, f"{action} volume '{self.params['name']}' in pool '{self.pool.name()}'"
            ) from exc
