"""Import sources as streams: compression by magic bytes, decompression on the fly with the
checksum of the file as published, checksum files (SHA512SUMS) and recorded digests."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._volume_digests import DigestRecords
from ansible_collections.virtops.kvm.plugins.module_utils._volume_source import (
    CHUNK,
    HOLE_BLOCK,
    RawSource,
    SourceError,
    compression_by_name,
    detect,
    expand,
    parse_checksum_url,
    pick_entry,
    source_name,
    zero_runs,
)

DATA = os.urandom(300_000) + b"\0" * 3_000_000 + b"end"
COMPRESSORS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


def _read(data: bytes, algorithm: str | None = "sha256", **kwargs) -> tuple[bytes, RawSource]:
    raw = RawSource(io.BytesIO(data), "img", algorithm, **kwargs)
    return b"".join(expand(raw)), raw


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_compressed_sources_are_expanded_and_hashed_as_published(kind):
    packed = COMPRESSORS[kind](DATA)
    assert detect(packed[:6]) == kind
    content, raw = _read(packed)
    assert content == DATA
    assert raw.compression == kind
    assert raw.digest == hashlib.sha256(packed).hexdigest()  # of the compressed file
    assert raw.count == len(packed)


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_multi_stream_files(kind):
    """pigz/pbzip2/pixz and cat make files of several streams: all of them are content."""
    pack = COMPRESSORS[kind]
    packed = pack(DATA[:1000]) + pack(DATA[1000:])
    content, raw = _read(packed)
    assert content == DATA and raw.digest == hashlib.sha256(packed).hexdigest()


def test_plain_sources_pass_through_and_chunks_are_bounded():
    content, raw = _read(DATA)
    assert raw.compression is None and content == DATA
    big = lzma.compress(b"\0" * (8 * CHUNK))  # a small file that expands a lot
    raw = RawSource(io.BytesIO(big), "zeros", None)
    sizes = [len(chunk) for chunk in expand(raw)]
    assert sum(sizes) == 8 * CHUNK and max(sizes) <= CHUNK


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_truncated_or_corrupt_files_fail(kind):
    packed = COMPRESSORS[kind](DATA)
    with pytest.raises(SourceError, match=f"not a valid {kind} file"):
        _read(packed[: len(packed) // 2])
    corrupt = packed[:10] + bytes(b ^ 0x5A for b in packed[10:200]) + packed[200:]
    with pytest.raises(SourceError, match=f"not a valid {kind} file"):
        _read(corrupt)


def test_a_download_cut_short_is_an_error():
    with pytest.raises(SourceError, match="closed 100 bytes before the end"):
        _read(DATA, announced=len(DATA) + 100)
    content, _raw = _read(DATA, announced=len(DATA))
    assert content == DATA


def test_compression_hints_and_names():
    assert detect(b"\x1f\x8b\x08\0") == "gzip"
    assert detect(b"BZh91A") == "bzip2"
    assert detect(b"\xfd7zXZ\0") == "xz"
    assert detect(b"QFI\xfb\0\0") is None
    assert compression_by_name("debian.raw.XZ") == "xz"
    assert compression_by_name("debian.qcow2") is None
    assert source_name(None, "https://h/a/b/img%201.qcow2.gz?x=1") == "img 1.qcow2.gz"
    assert source_name("/srv/img.raw.bz2", None) == "img.raw.bz2"


def test_checksum_url_forms():
    assert parse_checksum_url("url:https://h/SHA512SUMS") == (None, "https://h/SHA512SUMS")
    assert parse_checksum_url("sha256:https://h/SUMS") == ("sha256", "https://h/SUMS")
    assert parse_checksum_url("sha256:" + "a" * 64) is None
    assert parse_checksum_url("no-colon") is None


H512 = hashlib.sha512(b"x").hexdigest()
H256 = hashlib.sha256(b"x").hexdigest()


def test_pick_entry_line_styles():
    sums = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
        f"{'a' * 128}  other.qcow2\n"
        f"{H512}  debian-12.qcow2\n"
        f"{'b' * 128} *debian-12.raw\n"
        f"SHA512 (debian-12.tar.xz) = {'c' * 128}\n"
        f"{'d' * 128}  ./images/alpine.qcow2\n"
        "-----BEGIN PGP SIGNATURE-----\nxyz\n"
    )
    url = "https://h/SHA512SUMS"
    assert pick_entry(sums, "debian-12.qcow2", url, None) == ("sha512", H512)
    assert pick_entry(sums, "debian-12.raw", url, None) == ("sha512", "b" * 128)
    assert pick_entry(sums, "debian-12.tar.xz", url, None) == ("sha512", "c" * 128)
    assert pick_entry(sums, "alpine.qcow2", url, None) == ("sha512", "d" * 128)
    with pytest.raises(KvmValidationError, match=r"has no entry for 'debian-11\.qcow2'"):
        pick_entry(sums, "debian-11.qcow2", url, None)


def test_pick_entry_algorithm():
    # named by the BSD line, by the file name, or implied by the length
    assert pick_entry(f"SHA256 (a.img) = {H256}\n", "a.img", "https://h/CHECKSUM", None) == (
        "sha256",
        H256,
    )
    assert pick_entry(f"{H256}  a.img\n", "a.img", "https://h/sha256sum.txt", None)[0] == "sha256"
    assert pick_entry(f"{H512}  a.img\n", "a.img", "https://h/CHECKSUMS", None)[0] == "sha512"
    with pytest.raises(KvmValidationError, match="is not a sha256 digest"):
        pick_entry(f"{H512}  a.img\n", "a.img", "https://h/SUMS", "sha256")
    with pytest.raises(KvmValidationError, match="2 different entries"):
        pick_entry(f"{H256}  a.img\n{'e' * 64}  a.img\n", "a.img", "https://h/SUMS", None)


def test_expanded_digests_are_recorded_by_the_checksum(tmp_path):
    records = DigestRecords(str(tmp_path / "d.json"))
    assert records.expanded("sha256:" + H256) is None
    records.put_expanded("sha256:" + H256, "f" * 64)
    assert DigestRecords(str(tmp_path / "d.json")).expanded("sha256:" + H256) == "f" * 64
    records.put("uri key", {"mtime": "1", "ctime": "1"}, "sha256", "0" * 64)
    assert records.expanded("sha256:" + H256) == "f" * 64  # both kinds of record kept


def test_zero_runs_make_holes_of_whole_zero_blocks():
    block = HOLE_BLOCK
    data = b"\0" * (2 * block) + b"x" + b"\0" * (block - 1) + b"\0" * block + b"y" * 10
    runs = [(hole, bytes(part)) for hole, part in zero_runs(data)]
    assert b"".join(part for _hole, part in runs) == data
    assert [(hole, len(part)) for hole, part in runs] == [
        (True, 2 * block),
        (False, block),  # a block with one byte of data is written whole
        (True, block),
        (False, 10),
    ]
    assert [(h, len(p)) for h, p in zero_runs(b"\0" * 100)] == [(True, 100)]  # a zero tail
    assert list(zero_runs(b"")) == []
