"""Storage in use (issue 13, items 1-4 and 10) against the real local libvirtd.

A dir pool with v1.qcow2 and v2.qcow2; guest A uses both as pool/volume disks, guest B uses
v2.qcow2 too. Removing storage that a guest uses fails before any change, naming the guest
and the disk, unless force=true; each test writes a marker into the volumes and reads it
back after the refused call. The lab tests at the end do the same with a booted tiny guest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from devtools.libvirt_cleanup import remove_domain_named
from tests.helpers import four_times, http_gets, make_qcow2

MiB = 1024 * 1024


# ------------------------------------------------------------------ helpers


def make_volume(pool, name: str, fmt: str = "qcow2", backing: str | None = None):
    store = f"<backingStore><path>{backing}</path><format type='qcow2'/></backingStore>"
    xml = (
        f"<volume><name>{name}</name><capacity>{16 * MiB}</capacity>"
        f"<target><format type='{fmt}'/></target>{store if backing else ''}</volume>"
    )
    return pool.createXML(xml, 0)


def write_marker(path: str, pattern: int, fmt: str = "qcow2") -> None:
    """Write 64 KiB of ``pattern`` at 1 MiB into the image (as the guest would see it)."""
    subprocess.run(
        ["qemu-io", "-f", fmt, "-c", f"write -P {pattern} 1M 64k", path],
        check=True,
        capture_output=True,
    )


def marker_intact(path: str, pattern: int, fmt: str = "qcow2") -> bool:
    out = subprocess.run(
        ["qemu-io", "-r", "-U", "-f", fmt, "-c", f"read -P {pattern} 1M 64k", path],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.returncode == 0 and "Pattern verification failed" not in out.stdout + out.stderr


def volume_disk(pool: str, volume: str, target: str, fmt: str = "qcow2") -> str:
    return (
        f"<disk type='volume' device='disk'><driver name='qemu' type='{fmt}' cache='none'/>"
        f"<source pool='{pool}' volume='{volume}'/><target dev='{target}' bus='virtio'/></disk>"
    )


def file_disk(path: str, target: str, fmt: str = "qcow2") -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{path}'/><target dev='{target}' bus='virtio'/></disk>"
    )


@pytest.fixture
def guests(conn):
    """Factory: ``guests(name, *disk_xml)`` defines a shut-off guest; all removed after."""
    made = []

    def define(name: str, *disks: str):
        xml = (
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<os><type arch='x86_64'>hvm</type></os><devices>{''.join(disks)}</devices>"
            "</domain>"
        )
        made.append(name)
        return conn.defineXML(xml)

    yield define
    for name in made:
        remove_domain_named([conn], name)


@pytest.fixture
def issue_setup(conn, dir_pool, guests, name_prefix):
    """The issue's situation: v1, v2 with markers; A uses both, B uses v2 (both shut off)."""
    pool = dir_pool.name()
    paths = {}
    for name, pattern in (("v1.qcow2", 0x11), ("v2.qcow2", 0x22)):
        paths[name] = make_volume(dir_pool, name).path()
        write_marker(paths[name], pattern)
    a, b = f"{name_prefix}-a", f"{name_prefix}-b"
    guests(a, volume_disk(pool, "v1.qcow2", "vda"), volume_disk(pool, "v2.qcow2", "vdb"))
    guests(b, volume_disk(pool, "v2.qcow2", "vdc"))
    return pool, paths, a, b


def vol_task(pool: str, name: str, **extra) -> list[dict]:
    return [{"name": "v", "virtops.kvm.volume": {"pool": pool, "name": name, **extra}}]


# ------------------------------------------------------------------ item 1: shut-off users


@pytest.mark.integration
def test_volume_absent_refused_while_a_shut_off_guest_uses_it(playbook, dir_pool, issue_setup):
    pool, paths, a, _b = issue_setup
    for check in (True, False):
        run = playbook(vol_task(pool, "v1.qcow2", state="absent"), check=check)
        assert run.rc != 0
        msg = run.task("v")["msg"]
        assert f"guest {a} (shut off) disk vda uses v1.qcow2" in msg and "force=true" in msg
        assert run.task("v")["users"] == [
            {"guest": a, "disk": "vda", "how": "direct", "running": False, "volume": "v1.qcow2"}
        ]
    dir_pool.refresh(0)
    assert "v1.qcow2" in dir_pool.listVolumes()
    assert marker_intact(paths["v1.qcow2"], 0x11)

    forced = playbook(vol_task(pool, "v1.qcow2", state="absent", force=True))
    assert forced.rc == 0, forced.stdout
    result = forced.task("v")
    assert result["changed"] and result["actions"] == ["delete"]
    assert result["users"][0]["guest"] == a
    assert any("deleting it anyway (force=true)" in w for w in result["warnings"])
    dir_pool.refresh(0)
    assert "v1.qcow2" not in dir_pool.listVolumes() and not os.path.exists(paths["v1.qcow2"])


@pytest.mark.integration
def test_volume_used_as_a_file_disk_is_in_use(playbook, dir_pool, guests, name_prefix):
    path = make_volume(dir_pool, "data.raw", fmt="raw").path()
    write_marker(path, 0x33, "raw")
    guests(f"{name_prefix}-f", file_disk(path, "vdb", "raw"))
    run = playbook(vol_task(dir_pool.name(), "data.raw", state="absent"))
    assert run.rc != 0
    assert f"guest {name_prefix}-f (shut off) disk vdb uses data.raw" in run.task("v")["msg"]
    assert marker_intact(path, 0x33, "raw")


# ------------------------------------------------------------------ backing chains


@pytest.mark.integration
def test_backing_chain_through_another_pool_keeps_the_base(
    playbook, conn, dir_pool, guests, name_prefix
):
    """v1 is the base of an overlay in another pool, used by a shut-off guest: the guest's
    chain is read from the overlay's volume XML (no volume of v1's pool backs onto it)."""
    base = make_volume(dir_pool, "v1.qcow2").path()
    write_marker(base, 0x44)
    other_dir = Path(base).parent.parent / "other"  # beside the pool's directory
    other = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{name_prefix}-other</name>"
        f"<target><path>{other_dir}</path></target></pool>",
        libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD,
    )
    try:
        overlay = make_volume(other, "ov.qcow2", backing=base)
        guests(f"{name_prefix}-c", file_disk(overlay.path(), "vda"))
        run = playbook(vol_task(dir_pool.name(), "v1.qcow2", state="absent"))
        assert run.rc != 0
        assert run.task("v")["users"] == [
            {
                "guest": f"{name_prefix}-c",
                "disk": "vda",
                "how": "backing chain",
                "running": False,
                "volume": "v1.qcow2",
            }
        ]
        assert f"guest {name_prefix}-c (shut off) disk vda (backing chain)" in run.task("v")["msg"]
        assert marker_intact(base, 0x44)
        assert marker_intact(overlay.path(), 0x44)  # read through the overlay
    finally:
        for vol in other.listAllVolumes(0):
            vol.delete(0)
        other.destroy()


# ------------------------------------------------------------------ item 3: pool absent


@pytest.mark.integration
def test_pool_delete_storage_refused_while_used(playbook, dir_pool, issue_setup):
    pool, paths, a, b = issue_setup
    task = [
        {
            "name": "p",
            "virtops.kvm.pool": {"name": pool, "state": "absent", "delete_storage": True},
        }
    ]
    for check in (True, False):
        run = playbook(task, check=check)
        assert run.rc != 0
        msg = run.task("p")["msg"]
        for who in (f"guest {a} (shut off) disk vda uses v1.qcow2", f"guest {b} (shut off)"):
            assert who in msg
    assert dir_pool.isActive()
    dir_pool.refresh(0)
    assert sorted(dir_pool.listVolumes()) == ["v1.qcow2", "v2.qcow2"]
    assert marker_intact(paths["v1.qcow2"], 0x11) and marker_intact(paths["v2.qcow2"], 0x22)

    # stopped, the pool is judged by what the guests name in it: refused before it starts
    dir_pool.destroy()
    run = playbook(task)
    assert run.rc != 0 and f"guest {a} (shut off) disk vda uses v1.qcow2" in run.task("p")["msg"]
    assert not dir_pool.isActive()
    assert marker_intact(paths["v1.qcow2"], 0x11)

    forced = playbook(
        [{**task[0], "virtops.kvm.pool": {**task[0]["virtops.kvm.pool"], "force": True}}]
    )
    assert forced.rc == 0, forced.stdout
    assert forced.task("p")["deleted_volumes"] == ["v1.qcow2", "v2.qcow2"]
    assert not os.path.exists(paths["v1.qcow2"])


# ------------------------------------------------------------------ item 4: domain absent


@pytest.mark.integration
def test_domain_remove_storage_keeps_the_volume_another_guest_uses(
    playbook, dir_pool, issue_setup, guests, name_prefix
):
    pool, paths, a, _b = issue_setup
    own = make_volume(dir_pool, "own.qcow2").path()
    guests(
        f"{name_prefix}-d",
        volume_disk(pool, "v2.qcow2", "vda"),
        volume_disk(pool, "own.qcow2", "vdb"),
    )
    task = [
        {
            "name": "d",
            "virtops.kvm.domain": {
                "name": f"{name_prefix}-d",
                "state": "absent",
                "remove_storage": True,
            },
        }
    ]
    reason = f"in use: guest {a} (shut off) disk vdb uses v2.qcow2"
    for check in (True, False):
        run = playbook(task, check=check)
        assert run.rc == 0, run.stdout
        result = run.task("d")
        assert result["removed_volumes"] == [own]
        assert result["kept_volumes"][0]["path"] == paths["v2.qcow2"]
        assert result["kept_volumes"][0]["reason"].startswith(reason)
        assert any(w.startswith(f"Volume {paths['v2.qcow2']} is kept") for w in result["warnings"])
        assert os.path.exists(own) is check  # check mode deletes nothing
    assert marker_intact(paths["v2.qcow2"], 0x22)
    dir_pool.refresh(0)
    assert sorted(dir_pool.listVolumes()) == ["v1.qcow2", "v2.qcow2"]


# ------------------------------------------------------------------ item 10: check mode


@pytest.mark.integration
def test_check_mode_of_pool_absent_on_an_inactive_pool_predicts_its_volumes(
    playbook, conn, dir_pool
):
    pool = dir_pool.name()
    paths = [
        make_volume(dir_pool, n, fmt=f).path() for n, f in (("a.raw", "raw"), ("b.qcow2", "qcow2"))
    ]
    dir_pool.destroy()
    task = [
        {
            "name": "p",
            "virtops.kvm.pool": {"name": pool, "state": "absent", "delete_storage": True},
        }
    ]

    def after(index, run):
        if index == 0:  # check mode changed nothing
            assert all(os.path.exists(p) for p in paths) and not dir_pool.isActive()

    runs = four_times(playbook, task, after_each=after)
    predicted, done = runs[0].task("p"), runs[1].task("p")
    assert predicted["deleted_volumes"] == done["deleted_volumes"] == ["a.raw", "b.qcow2"]
    assert (
        predicted["actions"] == done["actions"] == ["start", "stop", "delete storage", "undefine"]
    )
    assert not any(os.path.exists(p) for p in paths)


@pytest.mark.integration
def test_check_mode_with_checksum_neither_downloads_nor_reads_the_volume(
    playbook, dir_pool, http_server, tmp_path
):
    root, url, log = http_server
    pool = dir_pool.name()
    first = make_qcow2(root / "one.qcow2", "8M")
    second = make_qcow2(root / "two.qcow2", "4M")
    imp = {"format": "qcow2", "source_url": f"{url}/one.qcow2", "checksum": first}
    assert playbook(vol_task(pool, "img.qcow2", **imp)).rc == 0
    assert http_gets(log, "one.qcow2") == 1

    # the digest this host recorded at the import answers check mode
    same = playbook(vol_task(pool, "img.qcow2", **imp), check=True).task("v")
    assert same["changed"] is False and same["checksum_verified"] is True
    newer = {**imp, "source_url": f"{url}/two.qcow2", "checksum": second, "force": True}
    predicted = playbook(vol_task(pool, "img.qcow2", **newer), check=True).task("v")
    assert predicted["changed"] and predicted["actions"] == ["replace", "import"]
    assert predicted["checksum_verified"] is False

    # a volume made behind the module's back has no record: predicted with a warning
    plain = root.parent / "plain.qcow2"
    checksum = make_qcow2(plain, "8M")
    target = Path(dir_pool.storageVolLookupByName("img.qcow2").path()).parent
    shutil.copyfile(plain, target / "plain.qcow2")
    dir_pool.refresh(0)
    unknown = playbook(
        vol_task(pool, "plain.qcow2", **{**newer, "checksum": checksum}), check=True
    ).task("v")
    assert unknown["changed"] and unknown["checksum_verified"] is None
    assert any("Check mode does not read volume 'plain.qcow2'" in w for w in unknown["warnings"])
    assert http_gets(log, "two.qcow2") == 0

    # the real run replaces it, and agrees with the prediction
    done = playbook(vol_task(pool, "img.qcow2", **newer)).task("v")
    assert done["actions"] == predicted["actions"] and done["volume"]["checksum"] == second
    assert http_gets(log, "two.qcow2") == 1
    dir_pool.refresh(0)
    assert "img.qcow2.virtops-new" not in dir_pool.listVolumes()


# ------------------------------------------------------------------ failure order of a re-import


@pytest.fixture
def broken_server(tmp_path):
    """An HTTP server on 127.0.0.1 that announces 8 MiB and closes after 1 MiB; stopped by PID."""
    script = tmp_path / "broken.py"
    script.write_text(
        "import socket, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 0)); s.listen(5)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        "    c.recv(65536)\n"
        "    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 8388608\\r\\n\\r\\n')\n"
        "    c.sendall(b'\\x5a' * 1048576)\n"
        "    c.close()\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    try:
        yield f"http://127.0.0.1:{port}/image.qcow2"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _sha256(path: str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.integration
def test_failed_replacement_leaves_the_old_volume(
    playbook, dir_pool, http_server, broken_server, tmp_path
):
    root, url, _log = http_server
    pool = dir_pool.name()
    old = make_qcow2(root / "old.qcow2", "8M")
    assert (
        playbook(vol_task(pool, "img.qcow2", source_url=f"{url}/old.qcow2", checksum=old)).rc == 0
    )
    path = dir_pool.storageVolLookupByName("img.qcow2").path()
    write_marker(path, 0x55)
    old = _sha256(path)
    new = "sha256:" + "1" * 64

    # the download breaks off midway
    run = playbook(vol_task(pool, "img.qcow2", source_url=broken_server, checksum=new, force=True))
    assert run.rc != 0
    msg = run.task("v")["msg"]
    assert "Failed to download" in msg and "volume 'img.qcow2' is unchanged" in msg
    # the upload of a complete download fails (it is raw, not the qcow2 asked for)
    (root / "other.raw").write_bytes(os.urandom(MiB))
    run = playbook(
        vol_task(
            pool,
            "img.qcow2",
            source_url=f"{url}/other.raw",
            checksum=_sha256(str(root / "other.raw")),
            format="qcow2",
            force=True,
        )
    )
    assert run.rc != 0 and "The imported image is raw" in run.task("v")["msg"]
    dir_pool.refresh(0)
    assert sorted(dir_pool.listVolumes()) == ["img.qcow2"]  # no partial or staged volume
    assert _sha256(path) == old and marker_intact(path, 0x55)
    assert not list(tmp_path.glob("**/virtops-volume-*"))


@pytest.fixture
def small_tmp(tmp_path):
    """A 6 MiB tmpfs for Ansible's remote temporary directory (a disk that fills up)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.integration
def test_download_onto_a_full_disk_leaves_nothing(playbook, dir_pool, http_server, small_tmp):
    root, url, _log = http_server
    big = root / "big.raw"
    big.write_bytes(os.urandom(16 * MiB))
    checksum = _sha256(str(big))
    run = playbook(
        vol_task(dir_pool.name(), "big.raw", source_url=f"{url}/big.raw", checksum=checksum),
        env={"ANSIBLE_REMOTE_TMP": str(small_tmp / "ansible")},
    )
    assert run.rc != 0
    msg = run.task("v")["msg"]
    assert "Failed to download" in msg and "No space left on device" in msg
    assert "no volume was created" in msg
    dir_pool.refresh(0)
    assert dir_pool.listVolumes() == []
    assert not list(small_tmp.glob("**/virtops-volume-*"))


# ------------------------------------------------------------------ item 2: a running guest (lab)


def guest_write(guest, text: str, offset: int = 4096) -> None:
    guest.check(f"printf '{text}' | dd of=/dev/vdb bs=1 seek={offset} conv=notrunc && sync")


def guest_read(guest, size: int, offset: int = 4096) -> str:
    return guest.check(f"dd if=/dev/vdb bs=1 skip={offset} count={size} 2>/dev/null")


def host_read(path: str, size: int, offset: int = 4096) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


@pytest.mark.lab
def test_running_guest_with_a_volume_disk(playbook, lab_pool, tiny_guest, guests, name_prefix):
    conn, pool, target, _made = lab_pool
    xml = f"<pool type='dir'><name>{pool}</name><target><path>{target}</path></target></pool>"
    dir_pool = conn.storagePoolDefineXML(xml, 0)
    dir_pool.build(0)
    dir_pool.create(0)
    target.chmod(0o755)
    for name in ("v1.raw", "v2.raw", "base.raw"):
        make_volume(dir_pool, name, fmt="raw")
    # an overlay outside every pool: only the running guest's live XML shows its chain
    outside = target.parent.parent / "guests" / name_prefix  # lab_pool removes it
    outside.mkdir(mode=0o755, parents=True)
    overlay = outside / "overlay.qcow2"
    base = dir_pool.storageVolLookupByName("base.raw").path()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", str(overlay)],
        check=True,
    )
    guest = tiny_guest(
        f"{name_prefix}-a",
        extra_devices=[
            volume_disk(pool, "v1.raw", "vdb", "raw"),
            volume_disk(pool, "v2.raw", "vdc", "raw"),
            file_disk(str(overlay), "vdd"),
        ],
    )
    marker = f"in-use-{name_prefix}"
    guest_write(guest, marker)
    path = dir_pool.storageVolLookupByName("v1.raw").path()
    assert host_read(path, len(marker)) == marker.encode()
    guests(f"{name_prefix}-b", volume_disk(pool, "v2.raw", "vdc", "raw"))

    refused = playbook(vol_task(pool, "v1.raw", state="absent"))
    assert refused.rc != 0
    assert f"guest {guest.name} (running) disk vdb uses v1.raw" in refused.task("v")["msg"]
    refused = playbook(vol_task(pool, "base.raw", state="absent"))
    assert refused.rc != 0
    assert refused.task("v")["users"] == [
        {
            "guest": guest.name,
            "disk": "vdd",
            "how": "backing chain",
            "running": True,
            "volume": "base.raw",
        }
    ]
    pool_task = [
        {"name": "p", "virtops.kvm.pool": {"name": pool, "state": "absent", "delete_storage": True}}
    ]
    refused = playbook(pool_task)
    assert refused.rc != 0 and f"guest {guest.name} (running) disk vdc" in refused.task("p")["msg"]
    kept = playbook(
        [
            {
                "name": "d",
                "virtops.kvm.domain": {
                    "name": f"{name_prefix}-b",
                    "state": "absent",
                    "remove_storage": True,
                },
            }
        ]
    )
    assert kept.rc == 0, kept.stdout
    assert kept.task("d")["removed_volumes"] == []
    assert f"guest {guest.name} (running) disk vdc" in kept.task("d")["kept_volumes"][0]["reason"]

    # the data is still there, for the guest and on the host
    assert guest_read(guest, len(marker)) == marker
    assert host_read(path, len(marker)) == marker.encode()
    dir_pool.refresh(0)
    assert sorted(dir_pool.listVolumes()) == ["base.raw", "v1.raw", "v2.raw"]

    forced = playbook(vol_task(pool, "v1.raw", state="absent", force=True))
    assert forced.rc == 0 and forced.task("v")["users"][0]["running"] is True
    dir_pool.refresh(0)
    assert sorted(dir_pool.listVolumes()) == ["base.raw", "v2.raw"]
