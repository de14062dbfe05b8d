# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Checksums of volume imports, and the digests of volume contents recorded on the host the
module runs on, so that check mode can compare a checksum without reading the volume and a
compressed image's checksum can be compared with the decompressed volume.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from . import _xml
from ._errors import KvmValidationError
from ._storage import VolumeSpec

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
        self._save(data)

    # A compressed image's checksum is of the file as published; the volume holds its
    # decompressed content. Which content digest a compressed file expands to is a fact of
    # the file (not of a volume), so it is recorded by the file's checksum alone.

    def expanded(self, checksum: str) -> str | None:
        """The digest (same algorithm) of the decompressed content of the compressed file
        with ``checksum`` (V(ALGORITHM:HEX)), when recorded."""
        entry = self._load().get(f"expanded {checksum}")
        return entry.get("content") if isinstance(entry, dict) else None

    def put_expanded(self, checksum: str, content: str) -> None:
        if self.expanded(checksum) == content:
            return
        data = self._load()
        data.pop(f"expanded {checksum}", None)
        data[f"expanded {checksum}"] = {"content": content, "at": int(time.time())}
        self._save(data)

    def _save(self, data: dict[str, Any]) -> None:
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
