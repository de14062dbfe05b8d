# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Volumes made from images: import from a local file or URL (streamed with
``virStorageVolUpload``, verified against a checksum), replacing a volume whose content
differs, and the digests of volume contents recorded so that check mode can compare a
checksum without reading the volume.

``VolumeImporter`` is the base of the volume manager (``_volume.VolumeManager``): it also
holds what every volume change uses, the space guard and the pool calls.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import _xml
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

CHUNK = 1024 * 1024
QCOW2_MAGIC = b"QFI\xfb"
NEW_SUFFIX = ".virtops-new"  # a replacement is uploaded under this name first
DIGEST_RECORDS = os.path.join("~", ".cache", "virtops-kvm", "volume-digests.json")
MAX_DIGEST_RECORDS = 1000


@dataclass
class Checksum:
    algorithm: str
    digest: str

    @classmethod
    def parse(cls, value: str) -> Checksum:
        algo, sep, digest = value.partition(":")
        if not sep or not digest:
            raise KvmValidationError(f"checksum must look like 'sha256:HEXDIGEST', got '{value}'")
        algo = algo.strip().lower()
        if algo not in hashlib.algorithms_available:
            raise KvmValidationError(f"checksum algorithm '{algo}' is not available")
        digest = digest.strip().lower()
        expected_len = hashlib.new(algo).digest_size * 2
        if len(digest) != expected_len or any(c not in "0123456789abcdef" for c in digest):
            raise KvmValidationError(
                f"checksum digest for {algo} must be {expected_len} hexadecimal digits"
            )
        return cls(algo, digest)

    def new(self):
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.digest}"


def qcow2_virtual_size(header: bytes) -> int | None:
    """The virtual size of a qcow2 image from its first 32 bytes, or None if not qcow2."""
    if len(header) >= 32 and header[:4] == QCOW2_MAGIC:
        return struct.unpack(">Q", header[24:32])[0]
    return None


@dataclass
class ImportFile:
    """A local file ready for upload: its path, size, virtual size and digest."""

    path: str
    size: int
    virtual_size: int
    digest: str | None
    temporary: bool = False

    def cleanup(self) -> None:
        if self.temporary:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _content_length(response) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def volume_fingerprint(xml: str) -> dict[str, Any] | None:
    """Size and modification/change times of a volume, or None where libvirt reports no
    times (block, RBD): any write to the volume changes its fingerprint."""
    root = _xml.parse(xml, "storage volume XML")
    mtime = _xml.text(root, "target/timestamps/mtime")
    ctime = _xml.text(root, "target/timestamps/ctime")
    if not mtime or not ctime:
        return None
    spec = VolumeSpec.from_xml(xml)
    return {
        "capacity": spec.capacity,
        "allocation": spec.allocation,
        "physical": spec.physical,
        "mtime": mtime,
        "ctime": ctime,
    }


class DigestRecords:
    """Digests of volume contents this module computed, on the host it runs on.

    A record holds while the volume's fingerprint (size, mtime, ctime) is the one recorded
    with it, so that check mode compares a checksum without reading the whole volume.
    """

    def __init__(self, path: str = DIGEST_RECORDS) -> None:
        self.path = os.path.expanduser(path)

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, ident: str, fingerprint: dict | None, algorithm: str) -> str | None:
        if fingerprint is None:
            return None
        entry = self._load().get(ident)
        if not isinstance(entry, dict) or entry.get("fingerprint") != fingerprint:
            return None
        return (entry.get("digests") or {}).get(algorithm)

    def put(self, ident: str, fingerprint: dict | None, algorithm: str, digest: str) -> None:
        """Record a digest; a record that cannot be written only costs a later check mode
        its prediction."""
        if fingerprint is None:
            return
        data = self._load()
        entry = data.get(ident)
        digests = {}
        if isinstance(entry, dict) and entry.get("fingerprint") == fingerprint:
            digests = dict(entry.get("digests") or {})
            if digests.get(algorithm) == digest:
                return  # recorded already
        digests[algorithm] = digest
        data.pop(ident, None)
        data[ident] = {"fingerprint": fingerprint, "digests": digests, "at": int(time.time())}
        while len(data) > MAX_DIGEST_RECORDS:
            data.pop(next(iter(data)))
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".digests-")
        except OSError:
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


class VolumeImporter(StorageManager):
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
        self.checksum = Checksum.parse(self.params["checksum"]) if self.params["checksum"] else None
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
            self.diff.add("format", None, p["format"])
            self.diff.add("checksum", None, str(self.checksum) if self.checksum else None)
            return
        src = self._local_file() if p["source_path"] else self._download(replacing)
        what = f"importing {p['source_path'] or p['source_url']}"
        try:
            if replacing is None:
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
        if self.checksum and src.digest:
            self._record_digest(vol, src.digest)
        view = volume_view(vol)
        view["checksum"] = f"{self.checksum.algorithm}:{src.digest}" if self.checksum else None
        self.diff.add("format", None, view["format"])
        self.diff.add("capacity", None, view["capacity"])
        self.diff.add("checksum", None, view["checksum"])
        self.result["volume"] = view

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

    def _download(self, replacing=None) -> ImportFile:
        """Stream the URL to a temporary file, hashing as it goes; verify before upload."""
        url = self.params["source_url"]
        fetch = self._fetch or self._fetch_url
        fd, tmp = tempfile.mkstemp(prefix="virtops-volume-", dir=self.kvm.module.tmpdir)
        h = self.checksum.new() if self.checksum else None
        size = 0
        header = b""
        try:
            with os.fdopen(fd, "wb") as out:
                response = fetch(url)
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    if len(header) < 32:
                        header += chunk[: 32 - len(header)]
                    size += len(chunk)
                    out.write(chunk)
                    if h is not None:
                        h.update(chunk)
            if size == 0:
                raise KvmValidationError(f"Download of {url} returned no data")
            announced = _content_length(response)
            if announced is not None and size != announced:
                # http.client returns a body cut short by the server as if it were whole
                raise http.client.IncompleteRead(b"", announced - size)
            digest = h.hexdigest() if h is not None else None
            if digest is not None:
                self._verify(digest, url)
        except (KvmError, OSError, http.client.HTTPException) as exc:
            os.unlink(tmp)
            if isinstance(exc, KvmError):
                raise
            kept = (
                f"volume '{self.params['name']}' is unchanged"
                if replacing is not None
                else "no volume was created"
            )
            if isinstance(exc, http.client.IncompleteRead):
                reason = f"the connection closed {exc.expected} bytes before the end"
            else:
                reason = getattr(exc, "strerror", None) or repr(exc)
            raise KvmError(
                f"Failed to download {url} after {size} bytes: {reason}. Nothing was imported "
                f"({kept}, the partial download was removed).",
                downloaded_bytes=size,
            ) from exc
        self.result["downloaded_bytes"] = size
        return ImportFile(tmp, size, qcow2_virtual_size(header) or size, digest, temporary=True)

    def _fetch_url(self, url: str):
        from ansible.module_utils.urls import fetch_url  # noqa: PLC0415 (only imports need it)

        module = self.kvm.module
        response, info = fetch_url(module, url, timeout=self.params["url_timeout"])
        if response is None or info.get("status") != 200:
            raise KvmError(
                f"Failed to download {url}: HTTP {info.get('status')} {info.get('msg', '')}",
                status=info.get("status"),
            )
        return response

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
            self.pool.refresh(0)
            vol = self.pool.storageVolLookupByName(spec.name)
            actual_format = VolumeSpec.from_xml(vol.XMLDesc(0)).format
            wanted = self.params["format"]
            if wanted and actual_format and actual_format != wanted:
                raise KvmValidationError(
                    f"The imported image is {actual_format}, but format={wanted} was asked. "
                    "Nothing was imported."
                )
        except (KvmError, libvirt.libvirtError) as exc:
            self._delete_quietly(spec.name)
            if isinstance(exc, KvmError):
                raise
            raise from_libvirt(exc, f"upload into volume '{spec.name}'") from exc
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
