# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Reading the source of a volume import: the checksum file of ``checksum: url:URL``, the
local file or download opened as one stream, and a compressed image decompressed either
straight into a new volume (``virStorageVolUpload`` of unknown length) or into a temporary
file. ``StreamImport`` is mixed into ``_volume_import.VolumeImporter``, whose checksum,
pool, space guard and upload it uses.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

from ._errors import KvmError, KvmValidationError, from_libvirt
from ._libvirt import libvirt
from ._storage import VolumeSpec, human
from ._volume_digests import Checksum
from ._volume_source import (
    SUMS_MAX,
    RawSource,
    SourceError,
    compression_by_name,
    expand,
    pick_entry,
    source_name,
    zero_runs,
)

CHUNK = 1024 * 1024
QCOW2_MAGIC = b"QFI\xfb"


def qcow2_virtual_size(header: bytes) -> int | None:
    """The virtual size of a qcow2 image from its first 32 bytes, or None if not qcow2."""
    if len(header) >= 32 and header[:4] == QCOW2_MAGIC:
        return struct.unpack(">Q", header[24:32])[0]
    return None


@dataclass
class ImportFile:
    """An image ready for upload (or uploaded while it was read, then ``path`` is None): its
    size and virtual size, the digest of the source file and that of the content (they
    differ when the source was compressed)."""

    path: str | None
    size: int
    virtual_size: int
    digest: str | None
    temporary: bool = False
    content_digest: str | None = None
    compression: str | None = None

    def __post_init__(self) -> None:
        if self.content_digest is None and self.compression is None:
            self.content_digest = self.digest

    def cleanup(self) -> None:
        if self.temporary and self.path:
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


class StreamImport:
    """The source side of imports (mixed into ``VolumeImporter``)."""

    # ------------------------------------------------------------------ checksum file

    def resolve_checksum(self) -> None:
        """``checksum: url:URL``: read the checksum file and take the image's entry."""
        if self.checksum_url is None:
            return
        algorithm, url = self.checksum_url
        if not url.startswith(("http://", "https://", "ftp://")):
            raise KvmValidationError(f"checksum url must be an http(s) or ftp URL: {url}")
        p = self.params
        name = source_name(p["source_path"], p["source_url"])
        response = (self._fetch or self._fetch_url)(url)
        try:
            body = response.read(SUMS_MAX + 1)
        except OSError as exc:
            raise KvmError(f"Failed to read the checksum file {url}: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                response.close()
        if len(body) > SUMS_MAX:
            raise KvmValidationError(f"The checksum file {url} is bigger than {SUMS_MAX} bytes")
        text = body.decode("utf-8", errors="replace")
        algo, digest = pick_entry(text, name, url, algorithm)
        self.checksum = Checksum(algo, digest)
        self.result["checksum_entry"] = {"url": url, "name": name, "checksum": str(self.checksum)}

    # ------------------------------------------------------------------ sources as streams

    def _open_source(self, replacing=None) -> RawSource:
        """The source file opened for one read, its first bytes (the compression) read."""
        p = self.params
        algorithm = self.checksum.algorithm if self.checksum else None
        label = p["source_path"] or p["source_url"]
        if p["source_path"]:
            try:
                fileobj = open(label, "rb")  # RawSource reads it; closed by its reader
            except OSError as exc:
                raise KvmValidationError(
                    f"Cannot read source_path '{label}': {exc.strerror or exc}"
                ) from exc
            announced = None
        else:
            fileobj = (self._fetch or self._fetch_url)(label)
            announced = _content_length(fileobj)
        try:
            return RawSource(fileobj, label, algorithm, announced)
        except SourceError as exc:
            with contextlib.suppress(Exception):
                fileobj.close()
            raise self._source_failed(label, 0, exc, replacing) from exc

    def _source_failed(self, label: str, count: int, exc, replacing) -> KvmError:
        kept = (
            f"volume '{self.params['name']}' is unchanged"
            if replacing is not None
            else "no volume was created"
        )
        if isinstance(exc, OSError):
            exc = exc.strerror or repr(exc)
        if self.params["source_path"]:
            verb, removed = "read", ""
        else:
            verb, removed = "download", ", the partial download was removed"
        return KvmError(
            f"Failed to {verb} {label} after {count} bytes: {exc}. Nothing was imported "
            f"({kept}{removed}).",
            downloaded_bytes=count,
        )

    def _to_temp(self, raw: RawSource, replacing=None) -> ImportFile:
        """The source's content (decompressed when it is compressed) in a temporary file,
        hashed as it goes; verified before anything is uploaded."""
        fd, tmp = tempfile.mkstemp(prefix="virtops-volume-", dir=self.kvm.module.tmpdir)
        content = self.checksum.new() if self.checksum else None
        size = 0
        header = b""
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in expand(raw):
                    if len(header) < 32:
                        header += chunk[: 32 - len(header)]
                    size += len(chunk)
                    out.write(chunk)
                    if content is not None:
                        content.update(chunk)
            if size == 0:
                raise KvmValidationError(f"{raw.label} has no data")
            if self.checksum:
                self._verify(raw.digest, raw.label)
        except (KvmError, OSError, SourceError) as exc:
            os.unlink(tmp)
            if isinstance(exc, KvmError):
                raise
            raise self._source_failed(raw.label, raw.count, exc, replacing) from exc
        finally:
            raw.close()
        if self.params["source_url"]:
            self.result["downloaded_bytes"] = raw.count
        return ImportFile(
            tmp,
            size,
            qcow2_virtual_size(header) or size,
            raw.digest,
            temporary=True,
            content_digest=content.hexdigest() if content is not None else None,
            compression=raw.compression,
        )

    def _stream_new(self, raw: RawSource, what: str) -> tuple[Any, ImportFile]:
        """A compressed source decompressed straight into a new volume of a file pool.

        The decompressed size is known only at the end: the volume starts empty and grows
        as it is written, and the upload stops (and the volume is deleted) once it would
        write more than the pool had available, or when the checksum of the source does
        not match at its end. Blocks of zeros are sent as holes (a sparse volume, as the
        image was before it was compressed), unless preallocation=falloc.
        """
        name = self.params["name"]
        content = self.checksum.new() if self.checksum else None
        chunks = expand(raw)
        size = written = 0
        spec = VolumeSpec(name=name, capacity=0, format="raw", allocation=0)
        sparse = 0
        if self.params["preallocation"] != "falloc":
            sparse = getattr(libvirt, "VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM", 0)
        vol = None
        try:
            first = next(chunks, b"")
            virtual = qcow2_virtual_size(first[:32])
            self._guard(written=0, capacity=virtual or 0, sparse=self._sparse(), what=what)
            available = self.pool.info()[3]
            vol = self._pool_call(lambda: self.pool.createXML(spec.to_xml(), 0), "create")
            stream = self.conn.newStream(0)
            vol.upload(stream, 0, 0, sparse)
            try:
                for chunk in itertools.chain([first], chunks):
                    size += len(chunk)
                    if content is not None:
                        content.update(chunk)
                    for hole, part in zero_runs(chunk) if sparse else [(False, chunk)]:
                        if hole:
                            stream.sendHole(len(part), 0)
                            continue
                        written += len(part)
                        if written > available:
                            raise KvmValidationError(
                                f"Volume '{name}' does not fit: {what} writes more than "
                                f"the {human(available)} ({available} bytes) pool "
                                f"'{self.pool.name()}' has available. Nothing was imported."
                            )
                        _send(stream, bytes(part))
                if size == 0:
                    raise KvmValidationError(f"{raw.label} has no data")
                if self.checksum:
                    self._verify(raw.digest, raw.label)
                stream.finish()
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
            vol = self._probed(name)
        except (KvmError, libvirt.libvirtError, SourceError, OSError) as exc:
            if vol is not None:
                self._delete_quietly(name)
            if isinstance(exc, KvmError):
                raise
            if isinstance(exc, libvirt.libvirtError):
                raise from_libvirt(exc, f"upload into volume '{name}'") from exc
            raise self._source_failed(raw.label, raw.count, exc, None) from exc
        finally:
            raw.close()
        if self.params["source_url"]:
            self.result["downloaded_bytes"] = raw.count
        src = ImportFile(
            None,
            size,
            virtual or size,
            raw.digest,
            content_digest=content.hexdigest() if content is not None else None,
            compression=raw.compression,
        )
        return vol, src

    def source_content_digest(self) -> str | None:
        """The digest of the decompressed content of a compressed source, read (not stored)
        to compare an existing volume with when no record of it is on this host; None when
        the source is not compressed. The source must match the checksum."""
        p = self.params
        if p["source_path"]:
            if self._local_compression() is None:
                return None
        elif compression_by_name(source_name(None, p["source_url"])) is None:
            return None  # not read again: a plain download of another image proves nothing
        raw = self._open_source(replacing=True)
        content = self.checksum.new()
        try:
            if raw.compression is None:
                return None
            for chunk in expand(raw):
                content.update(chunk)
        except SourceError as exc:
            raise self._source_failed(raw.label, raw.count, exc, True) from exc
        finally:
            raw.close()
        self._verify(raw.digest, raw.label)
        self.digests.put_expanded(str(self.checksum), content.hexdigest())
        return content.hexdigest()

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


def _send(stream, data: bytes) -> None:
    while data:
        sent = stream.send(data)
        if sent < 0:
            raise libvirt.libvirtError("stream send failed")
        data = data[sent:]
