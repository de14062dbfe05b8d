"""Compressed imports (gzip, bzip2, xz) and checksums picked from a checksum file, served by
a local HTTP server, into a dir pool of the real local libvirtd (qcow2:///system)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.virtops.kvm.plugins.modules import volume as volume_module
from tests.helpers import four_times, http_gets

# make test runs these beside the main suite (side_stream): they share none of its guests
pytestmark = [pytest.mark.integration, pytest.mark.side_stream]

MiB = 1024 * 1024


def _images(root: Path) -> dict[str, bytes]:
    """A raw image (random data, then zeros) and a qcow2 made from it: unique contents, so
    that no digest recorded by an earlier test applies."""
    raw = root / "disk.raw"
    raw.write_bytes(os.urandom(MiB) + b"\0" * (3 * MiB))
    qcow2 = root / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    return {"raw": raw.read_bytes(), "qcow2": qcow2.read_bytes()}


def _sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def _volume_sha256(pool, name: str) -> str:
    pool.refresh(0)
    return hashlib.sha256(Path(pool.storageVolLookupByName(name).path()).read_bytes()).hexdigest()


def _task(pool: str, name: str, **options) -> dict:
    return {"name": name, "virtops.kvm.volume": {"pool": pool, "name": name, **options}}


def test_compressed_imports_with_checksum_files(playbook, dir_pool, http_server, tmp_path):
    root, url, log = http_server
    images = _images(tmp_path)
    files = {
        "disk.qcow2.gz": gzip.compress(images["qcow2"]),
        "disk.qcow2.bz2": bz2.compress(images["qcow2"]),
        # no suffix: known by its magic bytes; two xz streams, as pixz or cat make them
        "disk-raw-xz": lzma.compress(images["raw"][:MiB]) + lzma.compress(images["raw"][MiB:]),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    local = tmp_path / "local.raw.gz"
    local.write_bytes(gzip.compress(images["raw"]))
    sums = {name: _sha512(data) for name, data in files.items()}
    # the three line styles of checksum files, with other images around them
    (root / "SHA512SUMS").write_text(
        f"{'1' * 128}  other.qcow2\n"
        f"{sums['disk.qcow2.gz']}  disk.qcow2.gz\n"
        f"{sums['disk.qcow2.bz2']} *disk.qcow2.bz2\n"
        f"SHA512 (disk-raw-xz) = {sums['disk-raw-xz']}\n"
    )
    pool = dir_pool.name()
    tasks = [
        _task(
            pool,
            "disk.qcow2.gz",
            format="qcow2",
            source_url=f"{url}/disk.qcow2.gz",
            checksum=f"url:{url}/SHA512SUMS",
        ),
        _task(
            pool,
            "disk.qcow2.bz2",
            format="qcow2",
            source_url=f"{url}/disk.qcow2.bz2",
            checksum=f"sha512:{url}/SHA512SUMS",
        ),
        _task(
            pool, "disk-raw-xz", source_url=f"{url}/disk-raw-xz", checksum=f"url:{url}/SHA512SUMS"
        ),
        _task(
            pool,
            "local.raw",
            source_path=str(local),
            checksum="sha256:" + hashlib.sha256(local.read_bytes()).hexdigest(),
        ),
    ]
    runs = four_times(playbook, tasks)
    for name in files:
        assert http_gets(log, name) == 1, name  # downloaded once, by the apply
    assert runs[0].task("disk.qcow2.gz")["volume"] is None  # check mode made nothing
    assert runs[0].task("local.raw")["compression"] == "gzip"
    for name, data in files.items():
        done = runs[1].task(name)
        kind = "qcow2" if "qcow2" in name else "raw"
        assert done["compression"] == {"gz": "gzip", "bz2": "bzip2"}.get(name[-3:].strip("."), "xz")
        assert done["checksum_entry"]["checksum"] == f"sha512:{sums[name]}"
        assert done["volume"]["checksum"] == f"sha512:{sums[name]}"  # of the published file
        assert done["volume"]["format"] == kind
        assert done["downloaded_bytes"] == len(data)
        # the volume holds the decompressed image, byte for byte
        assert _volume_sha256(dir_pool, name) == hashlib.sha256(images[kind]).hexdigest()
        assert runs[3].task(name)["checksum_verified"] is True
    assert runs[1].task("local.raw")["volume"]["capacity"] == 4 * MiB
    # zeros are holes: the 3 MiB of zeros of the raw image take no space in the volume
    xz_volume = runs[1].task("disk-raw-xz")["volume"]
    assert xz_volume["capacity"] == 4 * MiB and xz_volume["allocation"] < 2 * MiB
    assert _volume_sha256(dir_pool, "local.raw") == hashlib.sha256(images["raw"]).hexdigest()

    # on a controller without the records of this host (another HOME): the volume is read,
    # the compressed image downloaded again and decompressed (not stored) to compare with;
    # and a volume replaced (force) by another compressed image
    home = tmp_path / "home"
    home.mkdir()
    newer = tmp_path / "newer.raw.bz2"
    new_raw = os.urandom(2 * MiB)
    newer.write_bytes(bz2.compress(new_raw))
    replace = _task(
        pool,
        "local.raw",
        source_path=str(newer),
        checksum="sha256:" + hashlib.sha256(newer.read_bytes()).hexdigest(),
        force=True,
    )
    again = playbook([tasks[0], replace], env={"HOME": str(home)})
    assert again.rc == 0, again.stdout[-3000:]
    assert again.task("disk.qcow2.gz")["changed"] is False
    assert again.task("disk.qcow2.gz")["checksum_verified"] is True
    assert http_gets(log, "disk.qcow2.gz") == 2
    replaced = again.task("local.raw")
    assert replaced["changed"] and replaced["actions"] == ["replace", "import"]
    assert replaced["checksum_verified"] is False and replaced["compression"] == "bzip2"
    assert _volume_sha256(dir_pool, "local.raw") == hashlib.sha256(new_raw).hexdigest()
    dir_pool.refresh(0)
    assert sorted(dir_pool.listVolumes()) == sorted([*files, "local.raw"])


def test_failed_compressed_imports_leave_nothing(playbook, dir_pool, http_server, tmp_path):
    root, url, log = http_server
    images = _images(tmp_path)
    good = lzma.compress(images["raw"])
    (root / "cut.raw.xz").write_bytes(good[: len(good) // 2])  # truncated
    (root / "good.raw.xz").write_bytes(good)
    (root / "SHA256SUMS").write_text(
        f"{hashlib.sha256(good[: len(good) // 2]).hexdigest()}  cut.raw.xz\n"
    )
    pool = dir_pool.name()

    tasks = [
        # no entry for the image: a clear error before anything is downloaded
        _task(pool, "missing", source_url=f"{url}/good.raw.xz", checksum=f"url:{url}/SHA256SUMS"),
        # a wrong checksum is known only at the end of the stream: the volume goes
        _task(pool, "wrong", source_url=f"{url}/good.raw.xz", checksum="sha256:" + "0" * 64),
        # a truncated xz file whose checksum matches
        _task(pool, "cut", source_url=f"{url}/cut.raw.xz", checksum=f"url:{url}/SHA256SUMS"),
    ]
    run = playbook([dict(t, ignore_errors=True) for t in tasks])
    assert [e["status"] for e in run.results] == ["failed"] * 3
    missing, wrong, cut = (run.task(t["name"]) for t in tasks)
    assert "has no entry for 'good.raw.xz'" in missing["msg"]
    assert "Checksum mismatch" in wrong["msg"]
    assert "not a valid xz file" in cut["msg"]
    assert "no volume was created" in cut["msg"]
    assert http_gets(log, "good.raw.xz") == 1  # by the second task only
    dir_pool.refresh(0)
    assert dir_pool.listVolumes() == []
    assert not list(tmp_path.glob("**/virtops-volume-*"))


def test_the_modules_compressed_import_example_runs(playbook, dir_pool, http_server, tmp_path):
    """volume's EXAMPLE of FreeBSD's xz-compressed image and its published checksum list, with
    this test's pool and the local server in place of download.freebsd.org (its files named
    as there, the list in FreeBSD's BSD style)."""
    root, url, log = http_server
    images = _images(tmp_path)
    image = "FreeBSD-14.1-RELEASE-amd64.qcow2.xz"
    (root / image).write_bytes(lzma.compress(images["qcow2"]))
    (root / "CHECKSUM.SHA512").write_text(
        f"SHA512 (FreeBSD-14.1-RELEASE-amd64.raw.xz) = {'2' * 128}\n"
        f"SHA512 ({image}) = {_sha512((root / image).read_bytes())}\n"
    )
    title = "Import FreeBSD's xz-compressed image, its checksum picked from the published list"
    [task] = [t for t in yaml.safe_load(volume_module.EXAMPLES) if t["name"] == title]
    assert task["virtops.kvm.volume"]["pool"] == "images"
    assert task["vars"]["freebsd_images"].startswith("https://download.freebsd.org/")
    task["virtops.kvm.volume"]["pool"] = dir_pool.name()
    task["vars"]["freebsd_images"] = url
    run = playbook([task])
    assert run.rc == 0, run.stdout[-4000:]
    assert run.last["changed"] is True and run.last["compression"] == "xz"
    assert run.last["volume"]["format"] == "qcow2"
    assert http_gets(log, image) == 1 and http_gets(log, "CHECKSUM.SHA512") == 1
    volume = "freebsd-14.1-base.qcow2"
    assert _volume_sha256(dir_pool, volume) == hashlib.sha256(images["qcow2"]).hexdigest()
