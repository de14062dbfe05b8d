# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The sources of volume imports as streams: a local file or a download, read once, hashed
as read (a checksum is of the file as published), and decompressed on the fly when the file
is gzip, bzip2 or xz (known by its magic bytes); and checksum files (``SHA512SUMS``) with
the entry for an image picked out.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import lzma
import posixpath
import re
import zlib
from collections.abc import Iterator
from urllib.parse import unquote, urlparse

from ._errors import KvmValidationError

CHUNK = 1024 * 1024
HEAD = 6  # bytes enough for every magic below
HOLE_BLOCK = 64 * 1024  # zero blocks of this size are sent as holes
ZEROS = bytes(HOLE_BLOCK)
MAGIC = (("gzip", b"\x1f\x8b"), ("bzip2", b"BZh"), ("xz", b"\xfd7zXZ\x00"))
SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}
# digest length (hex digits) -> algorithm, for sums files that do not name theirs
BY_LENGTH = {32: "md5", 40: "sha1", 56: "sha224", 64: "sha256", 96: "sha384", 128: "sha512"}
NAMED_ALGORITHM = re.compile(r"(sha(?:1|224|256|384|512)|md5|b2|blake2b)", re.IGNORECASE)
SUMS_MAX = 16 * 1024 * 1024
GNU_LINE = re.compile(r"^\\?([0-9a-fA-F]{32,128}) [ *](.+)$")
BSD_LINE = re.compile(r"^([A-Za-z0-9-]+) ?\((.+)\) ?= ?([0-9a-fA-F]{32,128})$")


class SourceError(Exception):
    """The source could not be read (I/O, HTTP, a corrupt or truncated compressed file)."""


def detect(head: bytes) -> str | None:
    """The compression of a file from its first bytes: V(gzip), V(bzip2), V(xz) or None."""
    for kind, magic in MAGIC:
        if head.startswith(magic):
            return kind
    return None


def compression_by_name(name: str) -> str | None:
    """What the file name's suffix says (only a hint: the import goes by the magic bytes)."""
    for suffix, kind in SUFFIXES.items():
        if name.lower().endswith(suffix):
            return kind
    return None


def source_name(source_path: str | None, source_url: str | None) -> str:
    """The file name of the image, as a checksum file lists it."""
    if source_path:
        return posixpath.basename(source_path)
    return posixpath.basename(unquote(urlparse(source_url or "").path))


class RawSource:
    """A source file read once, front to back: hashes what it reads (``digest``) and counts
    it; ``head`` is read at once so that the compression is known before anything else.

    ``announced`` is the length the server promised (Content-Length): a body cut short is
    an error, as http.client returns it as if it were whole.
    """

    def __init__(self, fileobj, label: str, algorithm: str | None, announced: int | None = None):
        self.fileobj = fileobj
        self.label = label
        self.announced = announced
        self.hash = hashlib.new(algorithm) if algorithm else None
        self.count = 0
        self._buffer = b""
        self._eof = False
        self._fill(HEAD)
        self.head = self._buffer[:HEAD]
        self.compression = detect(self.head)

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size and not self._eof:
            try:
                data = self.fileobj.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise SourceError(_reason(exc)) from exc
            if not data:
                self._eof = True
                if self.announced is not None and self.count != self.announced:
                    raise SourceError(
                        f"the connection closed {self.announced - self.count} bytes before the end"
                    )
                break
            self.count += len(data)
            if self.hash is not None:
                self.hash.update(data)
            self._buffer += data

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        self._fill(size)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readable(self) -> bool:  # for the decompressors' file wrappers
        return True

    def drain(self) -> None:
        """Read to the end (a decompressor may stop before trailing padding): the digest
        is of the whole file."""
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str | None:
        return self.hash.hexdigest() if self.hash is not None else None

    def close(self) -> None:
        close = getattr(self.fileobj, "close", None)
        if close is not None:
            close()


def expand(raw: RawSource) -> Iterator[bytes]:
    """The content of ``raw`` in chunks of at most ``CHUNK`` bytes: decompressed when it is
    compressed (every stream of a multi-stream file), as it is otherwise."""
    if raw.compression is None:
        yield from iter(lambda: raw.read(CHUNK), b"")
        return
    try:
        if raw.compression == "gzip":
            reader = gzip.GzipFile(fileobj=raw, mode="rb")
        elif raw.compression == "bzip2":
            reader = bz2.BZ2File(raw, mode="rb")
        else:
            reader = lzma.LZMAFile(raw, mode="rb")
        with reader:
            yield from iter(lambda: reader.read(CHUNK), b"")
        raw.drain()
    except SourceError:
        raise
    except (EOFError, OSError, lzma.LZMAError, zlib.error, ValueError) as exc:
        if isinstance(exc, EOFError):
            what = "it ends before the end of its compressed data (truncated)"
        else:
            what = str(exc) or type(exc).__name__
        raise SourceError(f"it is not a valid {raw.compression} file: {what}") from exc


def zero_runs(chunk: bytes) -> Iterator[tuple[bool, memoryview]]:
    """``chunk`` as runs of (is a hole, bytes): holes are whole ``HOLE_BLOCK``s of zeros (and
    a shorter tail of zeros), the rest is data."""
    view = memoryview(chunk)
    start, hole = 0, None
    for offset in range(0, len(chunk), HOLE_BLOCK):
        piece = view[offset : offset + HOLE_BLOCK]
        zero = piece == ZEROS[: len(piece)]
        if hole is None:
            hole = zero
        elif zero != hole:
            yield hole, view[start:offset]
            start, hole = offset, zero
    if hole is not None:
        yield hole, view[start:]


def _reason(exc: Exception) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed {exc.expected} bytes before the end"
    return getattr(exc, "strerror", None) or repr(exc)


# --------------------------------------------------------------------------- checksum files


def parse_checksum_url(value: str) -> tuple[str | None, str] | None:
    """``url:URL`` -> (None, URL); ``ALGORITHM:URL`` -> (algorithm, URL); else None."""
    head, sep, rest = value.partition(":")
    if not sep:
        return None
    if head.strip().lower() == "url":
        return None, rest.strip()
    if rest.strip().lower().startswith(("http://", "https://", "ftp://")):
        return head.strip().lower(), rest.strip()
    return None


def pick_entry(text: str, name: str, sums_url: str, algorithm: str | None) -> tuple[str, str]:
    """The (algorithm, hex digest) a checksum file lists for the file ``name``.

    Lines as ``sha512sum`` writes them (``HASH  name``, ``HASH *name``) and BSD style
    (``SHA512 (name) = HASH``); a PGP clear-signature around them is skipped. An entry with
    a path matches by its last component when no entry has the exact name.
    """
    exact: list[tuple[str | None, str]] = []
    by_base: list[tuple[str | None, str]] = []
    for text_line in text.splitlines():
        line = text_line.strip()
        gnu = GNU_LINE.match(line)
        bsd = None if gnu else BSD_LINE.match(line)
        if gnu:
            tag, digest, listed = None, gnu.group(1), gnu.group(2)
            if line.startswith("\\"):  # sha*sum escapes names with \ or newlines
                listed = listed.replace("\\n", "\n").replace("\\\\", "\\")
        elif bsd:
            tag, listed, digest = bsd.group(1), bsd.group(2), bsd.group(3)
        else:
            continue
        listed = listed.strip()
        listed = listed[2:] if listed.startswith("./") else listed
        if listed == name:
            exact.append((tag, digest.lower()))
        elif posixpath.basename(listed) == name:
            by_base.append((tag, digest.lower()))
    found = exact or by_base
    if not found:
        raise KvmValidationError(
            f"The checksum file {sums_url} has no entry for '{name}' (the file name of the "
            "image). Check the URL of the image and of the checksum file.",
            checksum_url=sums_url,
            image_name=name,
        )
    if len({digest for _tag, digest in found}) > 1:
        raise KvmValidationError(
            f"The checksum file {sums_url} has {len(found)} different entries for '{name}'",
            checksum_url=sums_url,
        )
    tag, digest = found[0]
    algo = algorithm or _algorithm(tag, sums_url, digest)
    if algo not in hashlib.algorithms_available:
        raise KvmValidationError(f"checksum algorithm '{algo}' of {sums_url} is not available")
    if len(digest) != hashlib.new(algo).digest_size * 2:
        raise KvmValidationError(
            f"The entry for '{name}' in {sums_url} is not a {algo} digest "
            f"({len(digest)} hexadecimal digits)"
        )
    return algo, digest


def _algorithm(tag: str | None, sums_url: str, digest: str) -> str:
    """The algorithm a BSD line names, else the file name (``SHA256SUMS``), else the length."""
    for hint in (tag, posixpath.basename(urlparse(sums_url).path)):
        found = NAMED_ALGORITHM.search(hint or "")
        if found:
            named = found.group(1).lower()
            return "blake2b" if named in ("b2", "blake2b") else named
    algo = BY_LENGTH.get(len(digest))
    if algo is None:
        raise KvmValidationError(
            f"Cannot tell the algorithm of the checksum file {sums_url}: give it as "
            "ALGORITHM:URL (for example sha256:https://.../SHA256SUMS)"
        )
    return algo
