"""Integration tests of virtops.kvm.backup / backup_info / backup_restore on the real libvirtd.

The ``lab`` tests back up running tiny guests (markers on their marker disk vda, mounted at
/mnt/marker; raw data written to an extra disk vdb with dd), restore the backups into new
guests and boot them. Module calls go through ansible-playbook (the abort test runs it in a
thread and aborts the libvirt job from here while it runs).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from xml.etree import ElementTree

import libvirt
import pytest
import yaml

from ansible_collections.virtops.kvm.plugins.module_utils._backup import job_active
from ansible_collections.virtops.kvm.plugins.modules import backup, backup_info, backup_restore
from tests.helpers import failed, wait_for
from tests.lab.guests import TinyGuest, disk_xml
from tests.lab.images import lab_dir
from tests.module_runner import run_module

URI = "qemu:///system"
ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
# make test runs these beside the main suite (side_stream): they share none of its guests
pytestmark = [pytest.mark.timeout(600), pytest.mark.side_stream]


@pytest.fixture
def backup_dir(name_prefix):
    """A backup directory (``dest``) and a directory for restored images, removed after."""
    root = lab_dir() / "backups" / name_prefix
    (root / "dest").mkdir(parents=True)
    (root / "restored").mkdir()
    for path in (root, root / "dest", root / "restored"):
        path.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def backup_task(name: str, dest: Path, **args) -> dict:
    return {"name": "backup", "virtops.kvm.backup": {"name": name, "dest": str(dest), **args}}


def ok(run, task: str) -> dict:
    result = run.task(task)
    assert not result.get("failed"), (result.get("msg"), run.stdout[-3000:])
    return result


def extra_disk(path: Path, size: str, *, fill_mib: int = 0) -> str:
    """A qcow2 image at ``path`` (``fill_mib`` MiB of pattern data written), as vdb."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    if fill_mib:
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {fill_mib}M", str(path)],
            check=True,
            capture_output=True,
        )
    path.chmod(0o644)
    return disk_xml(path, "vdb")


def play_file(name: str) -> list[dict]:
    return yaml.safe_load((ROOT / "playbooks" / name).read_text())


def checkpoints(guest: TinyGuest) -> list[str]:
    return [c.getName() for c in guest.dom.listAllCheckpoints(0)]


def seq_markers(guest: TinyGuest) -> list[int]:
    out = guest.check("ls /mnt/marker")
    return sorted(int(n[4:]) for n in out.split() if n.startswith("seq-"))


@pytest.mark.lab
def test_full_and_incremental_of_a_running_guest_restore_into_a_new_guest_with_its_markers(
    tiny_guest, playbook, backup_dir, name_prefix, libvirt_conn
):
    """Markers written continuously; full backup, more markers, incremental, more markers;
    the restored guest boots with every marker up to the incremental and none after. Then
    one changed byte: backup_info reports the chain broken and the restore refuses it."""
    guest = tiny_guest(f"{name_prefix}-a")
    dest = backup_dir / "dest"
    guest.write_marker("before-full", "one")
    # a writer in the guest: seq-1, seq-2... each synced before the next
    guest.check(
        "(i=0; while true; do i=$((i+1)); echo $i > /mnt/marker/seq-$i; sync; sleep 0.2;"
        " done) >/dev/null 2>&1 &"
    )
    wait_for(lambda: len(seq_markers(guest)) >= 3, 60, "the writer's first markers")

    run = playbook(
        [
            {**backup_task(guest.name, dest), "name": "check", "check_mode": True},
            backup_task(guest.name, dest),
        ]
    )
    check, full = ok(run, "check"), ok(run, "backup")
    assert check["changed"] and check["plan"]["mode"] == "full"
    assert "no earlier backup" in check["plan"]["reason"]
    assert full["changed"] and full["backup"]["mode"] == "full"
    assert full["backup"]["quiesced"] is False
    assert "no guest agent channel" in full["backup"]["quiesce_detail"]
    assert checkpoints(guest) == [full["backup"]["checkpoint"]]
    assert full["backup"]["id"] in os.listdir(dest / guest.name)  # check mode took nothing

    guest.write_marker("after-full", "two")
    seen = seq_markers(guest)[-1]  # synced before the incremental starts: must be in it
    # the incremental through playbooks/backup.yml, limited to this guest (others run here)
    run = playbook(
        plays=play_file("backup.yml"),
        extra_vars={"backup_dest": str(dest), "backup_guests": [guest.name], "backup_keep": 2},
    )
    [inc] = ok(run, "Back up each of them")["results"]
    assert inc["backup"]["mode"] == "incremental"
    assert inc["backup"]["parent"] == full["backup"]["id"]
    assert inc["backup"]["disks"][0]["backing"] == f"../{full['backup']['id']}/vda.qcow2"
    assert checkpoints(guest) == [inc["backup"]["checkpoint"]]  # the older one is dropped
    guest.write_marker("after-inc", "three")
    during = seq_markers(guest)[-1]

    # the original's console log and command socket are the clone's too: stop it first
    guest.dom.destroy()
    target = f"{name_prefix}-r"
    restored_dir = backup_dir / "restored"
    run = playbook(  # playbooks/restore.yml: backup_info, then backup_restore
        plays=play_file("restore.yml"),
        extra_vars={
            "restore_guest": guest.name,
            "restore_dest": str(dest),
            "restore_target": target,
            "restore_disk_dir": str(restored_dir),
            "restore_start": True,
        },
    )
    restore = ok(run, "Restore")
    try:
        assert restore["changed"] and restore["chain"] == [
            full["backup"]["id"],
            inc["backup"]["id"],
        ]
        clone = TinyGuest(target, guest.files, libvirt_conn)
        assert clone.dom.UUIDString() != guest.dom.UUIDString()  # a guest of its own
        offset = len(clone.console())
        wait_for(lambda: b"TINY CMD READY" in clone.console()[offset:], 240, "the clone's boot")
        assert clone.read_marker("before-full").strip() == "one"
        assert clone.read_marker("after-full").strip() == "two"
        assert clone.run("test -e /mnt/marker/after-inc")[0] != 0
        got = seq_markers(clone)
        assert got == list(range(1, got[-1] + 1)), got  # no gap
        assert seen <= got[-1] < during + 1
        clone.dom.destroy()

        # one changed byte in the incremental: the chain is broken, the restore refuses
        image = dest / guest.name / inc["backup"]["id"] / "vda.qcow2"
        with open(image, "r+b") as handle:
            handle.seek(os.path.getsize(image) // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))
        run = playbook(
            [
                {
                    "name": "info",
                    "virtops.kvm.backup_info": {"dest": str(dest), "name": guest.name},
                },
                {
                    "name": "restore",
                    "virtops.kvm.backup_restore": {
                        "name": guest.name,
                        "dest": str(dest),
                        "target": f"{name_prefix}-s",
                        "disk_dir": str(restored_dir),
                    },
                    "ignore_errors": True,
                },
            ]
        )
        [chain] = ok(run, "info")["guests"][0]["chains"]
        assert chain["intact"] is False and chain["verified"] is False
        assert chain["problems"] == [
            f"{inc['backup']['id']}: vda.qcow2 does not match its SHA-256 checksum"
        ]
        refused = failed(run, "restore")
        assert "does not verify, nothing was restored" in refused["msg"]
        assert sorted(os.listdir(restored_dir)) == [f"{target}-vda.qcow2"]
        assert f"{name_prefix}-s" not in [d.name() for d in libvirt_conn.listAllDomains(0)]
    finally:
        from devtools.libvirt_cleanup import remove_domain_named  # noqa: PLC0415

        remove_domain_named([libvirt_conn], target)


@pytest.mark.lab
def test_incremental_sizes_compression_quiesce_required_retention_and_a_restores_new_mac(
    tiny_guest, backup_dir, name_prefix, libvirt_conn
):
    """1, 8 and 64 MiB written to a 2 GiB disk between backups: each incremental image is
    the size of what was written (plus qcow2 metadata), not of the disk. Then on the same
    guest and directory: quiesce=required fails before anything is taken (no agent);
    a compressed chain (full and incremental) verifies and restores into a new guest
    identical to the disk, with a new MAC; retention deletes whole older chains by keep and
    by max_age and never the newest. (The module runs in-process here: ansible-playbook
    starts would double the test's time.)"""
    vdb = backup_dir / "vdb.qcow2"
    guest = tiny_guest(f"{name_prefix}-b", extra_devices=[extra_disk(vdb, "2G")])
    dest = backup_dir / "dest"
    args = {"name": guest.name, "dest": str(dest), "disks": ["vdb"]}
    guest.check("dd if=/dev/urandom of=/tmp/random bs=1M count=1 2>/dev/null")
    full = run_module(backup, args)
    assert full["backup"]["mode"] == "full", full
    sizes = {}
    offset = 0
    for mib in (1, 8, 64):
        # 1 MiB of random data repeated (urandom is slow under TCG; qcow2 does not dedupe)
        guest.check(
            f"for i in $(seq {mib}); do cat /tmp/random; done"
            f" | dd of=/dev/vdb bs=1M seek={offset} 2>/dev/null && sync",
            timeout=120,
        )
        offset += mib + 16
        inc = run_module(backup, args)
        assert inc["backup"]["mode"] == "incremental", inc
        sizes[mib] = inc["backup"]["disks"][0]["size"]
    for mib, size in sizes.items():
        assert mib * MIB <= size <= mib * MIB + 2 * MIB, sizes
    assert sizes[64] < 2048 * MIB / 20
    info = run_module(backup_info, {"dest": str(dest)})
    [entry] = info["guests"]
    [chain] = entry["chains"]
    assert len(chain["backups"]) == 4 and chain["intact"] and chain["verified"]
    assert entry["next_incremental_possible"] is True
    print(f"incremental sizes (MiB written -> bytes): {sizes}")
    first_chain = chain["backups"]
    guest_dir = dest / guest.name

    # quiesce=required without a guest agent: fails before anything is taken
    refused = run_module(backup, {**args, "quiesce": "required"})
    assert refused.get("failed") and "Cannot quiesce" in refused["msg"], refused
    assert "no guest agent channel" in refused["msg"]
    assert sorted(os.listdir(guest_dir)) == sorted(first_chain)
    assert checkpoints(guest) == [inc["backup"]["checkpoint"]]

    # a NIC in the guest's definition (not started: the saved domain.xml is the inactive one)
    nic = "<interface type='network'><source network='default'/><model type='virtio'/></interface>"
    guest.dom.attachDeviceFlags(nic, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    [mac] = [m.get("address") for m in _inactive(guest.dom).findall("devices/interface/mac")]

    # a compressed chain: a full one, then 4 MiB of text (compressible) and an incremental;
    # fsync, not sync: only a flush of /dev/vdb makes QEMU write its qcow2 metadata into
    # vdb.qcow2, which the restored image is compared with
    cfull = run_module(backup, {**args, "mode": "full", "compress": True})
    assert cfull["backup"]["mode"] == "full" and cfull["backup"]["compressed"] is True, cfull
    guest.check(
        f"yes virtops-backup-compressed | head -c {4 * MIB}"
        f" | dd of=/dev/vdb bs=1M seek={offset} conv=notrunc,fsync 2>/dev/null",
        timeout=120,
    )
    cinc = run_module(backup, {**args, "compress": True})
    assert cinc["backup"]["mode"] == "incremental", cinc
    assert cinc["backup"]["parent"] == cfull["backup"]["id"]
    assert cinc["backup"]["compressed"] is True
    assert cinc["backup"]["disks"][0]["size"] < MIB, cinc  # 4 MiB of text, compressed
    cimage = guest_dir / cinc["backup"]["id"] / "vdb.qcow2"
    checked = subprocess.run(  # exit status 0: no errors, no leaks
        ["qemu-img", "check", "--output=json", str(cimage)], check=True, capture_output=True
    )
    assert json.loads(checked.stdout)["compressed-clusters"] >= 4 * MIB // (64 * 1024)
    info = run_module(backup_info, {"dest": str(dest), "name": guest.name})
    assert [(c["backups"], c["intact"], c["verified"]) for c in info["guests"][0]["chains"]] == [
        (first_chain, True, True),
        ([cfull["backup"]["id"], cinc["backup"]["id"]], True, True),
    ]
    target = f"{name_prefix}-bc"
    try:
        restored = run_module(
            backup_restore,
            {
                "name": guest.name,
                "dest": str(dest),
                "target": target,
                "disk_dir": str(backup_dir / "restored"),
            },
        )
        assert restored["changed"] and restored["chain"] == [
            cfull["backup"]["id"],
            cinc["backup"]["id"],
        ], restored
        image = backup_dir / "restored" / f"{target}-vdb.qcow2"
        same = subprocess.run(  # nothing writes to vdb any more: the disk as backed up
            ["qemu-img", "compare", "-U", str(vdb), str(image)], check=False, capture_output=True
        )
        assert same.returncode == 0, same.stdout + same.stderr
        macs = _inactive(libvirt_conn.lookupByName(target)).findall("devices/interface/mac")
        assert len(macs) == 1 and macs[0].get("address") not in (mac, None), (mac, macs)
    finally:
        from devtools.libvirt_cleanup import remove_domain_named  # noqa: PLC0415

        remove_domain_named([libvirt_conn], target)

    # retention: keep=2 after a third full backup deletes the first chain, all four backups
    third = run_module(backup, {**args, "mode": "full", "keep": 2, "label": "third"})
    third_id = third["backup"]["id"]
    second_chain = [cfull["backup"]["id"], cinc["backup"]["id"]]
    assert third["retention"]["deleted"] == [first_chain], third["retention"]
    assert third["retention"]["kept"] == [second_chain, [third_id]]
    assert sorted(os.listdir(guest_dir)) == sorted([*second_chain, third_id])
    # max_age=1d with the second chain two days old: it goes; the newest chain stays whole
    _backdate(guest_dir, second_chain, days=2)
    aged = run_module(backup, {**args, "max_age": "1d"})
    assert aged["backup"]["mode"] == "incremental" and aged["backup"]["parent"] == third_id
    newest = [third_id, aged["backup"]["id"]]
    assert aged["retention"]["deleted"] == [second_chain], aged["retention"]
    assert sorted(os.listdir(guest_dir)) == sorted(newest)
    # the newest chain is older than max_age too (nothing taken: its label exists): kept
    _backdate(guest_dir, newest, days=2)
    again = run_module(backup, {**args, "max_age": "1d", "keep": 1, "label": "third"})
    assert again["changed"] is False and again["retention"]["deleted"] == [], again
    assert again["retention"]["kept"] == [newest]
    info = run_module(backup_info, {"dest": str(dest), "name": guest.name})
    [entry] = info["guests"]
    assert [(c["backups"], c["intact"], c["verified"]) for c in entry["chains"]] == [
        (newest, True, True)
    ]
    assert entry["next_incremental_possible"] is True


def _inactive(dom):
    return ElementTree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def _backdate(guest_dir: Path, ids: list[str], *, days: int) -> None:
    """Make backups look ``days`` older: their manifests' times (what retention reads)."""
    for backup_id in ids:
        path = guest_dir / backup_id / "manifest.json"
        data = json.loads(path.read_text())
        for key in ("started", "finished"):
            when = datetime.datetime.fromisoformat(data[key]) - datetime.timedelta(days=days)
            data[key] = when.isoformat()
        path.write_text(json.dumps(data))


@pytest.mark.lab
def test_an_aborted_job_leaves_the_guest_running_no_checkpoint_and_the_next_auto_is_full(
    tiny_guest, playbook, backup_dir, name_prefix
):
    vdb = backup_dir / "vdb.qcow2"
    guest = tiny_guest(f"{name_prefix}-c", extra_devices=[extra_disk(vdb, "512M", fill_mib=384)])
    dest = backup_dir / "dest"
    tasks = [{**backup_task(guest.name, dest, disks=["vdb"]), "ignore_errors": True}]
    runs = []
    worker = threading.Thread(target=lambda: runs.append(playbook(tasks)))
    worker.start()
    dom = guest.dom

    def halfway() -> bool:
        try:
            stats = dom.jobStats()
        except libvirt.libvirtError:  # "backup job data missing" while the job starts
            return False
        total = stats.get("disk_total") or 0
        return bool(total) and 0 < stats.get("disk_processed", 0) < total // 2

    wait_for(halfway, 60, "the backup job halfway", interval=0.02)
    assert checkpoints(guest)  # libvirt made the job's checkpoint when the job started
    dom.abortJob()
    worker.join(120)
    aborted = failed(runs[0], "backup")
    assert "Operation canceled" in aborted["msg"], aborted
    beat = guest.last_heartbeat()
    guest.wait_heartbeat(beat, timeout=30)  # still running
    assert checkpoints(guest) == []
    assert os.listdir(dest / guest.name) == []  # neither a backup nor a .partial directory

    # a killed module: the job goes on without it, its checkpoint has no backup
    args = {"name": guest.name, "dest": str(dest), "disks": ["vdb"]}
    code = (
        "from ansible_collections.virtops.kvm.plugins.modules import backup\n"
        "from tests.module_runner import run_module\n"
        f"run_module(backup, {args!r})\n"
    )
    proc = subprocess.Popen(  # the module in a process of its own, killed by its PID
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / '.venv' / 'collections'}:{ROOT}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:  # killed once its job has started (the checkpoint is there): before its manifest,
        # which waits for the job's end and the image's checksum
        wait_for(lambda: checkpoints(guest), 60, "the second job's start", interval=0.02)
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not job_active(dom), 60, "the orphaned job's end")
    stray = checkpoints(guest)
    assert len(stray) == 1
    [partial] = os.listdir(dest / guest.name)
    assert partial.startswith(".") and partial.endswith(".partial")

    run = playbook([backup_task(guest.name, dest, disks=["vdb"])])
    taken = ok(run, "backup")
    assert taken["plan"]["mode"] == "full"
    assert taken["cleaned"] == {"partial": [str(dest / guest.name / partial)], "checkpoints": stray}
    assert checkpoints(guest) == [taken["backup"]["checkpoint"]]
    assert os.listdir(dest / guest.name) == [taken["backup"]["id"]]
    image = dest / guest.name / taken["backup"]["id"] / "vdb.qcow2"
    compare = subprocess.run(
        ["qemu-img", "compare", "-U", str(vdb), str(image)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert guest.dom.isActive()


@pytest.mark.integration
def test_shut_off_guest_raw_disks_and_restore_into_the_original(
    tiny_guest, tiny_image, playbook, backup_dir, name_prefix
):
    """A shut-off guest is copied with qemu-img (full, compressed); a raw disk gets no
    incremental; the original is restored only with force and only while shut off."""
    raw = backup_dir / "data.raw"
    shutil.copyfile(tiny_image.marker_template_raw, raw)
    raw.chmod(0o644)
    guest = tiny_guest(f"{name_prefix}-d", start=False, extra_devices=[disk_xml(raw, "vdb", "raw")])
    dest = backup_dir / "dest"
    original = guest.files.marker_disk.read_bytes()
    restore = {
        "name": "restore",
        "virtops.kvm.backup_restore": {"name": guest.name, "dest": str(dest)},
        "ignore_errors": True,
    }
    forced = {**restore, "name": "forced"}
    forced["virtops.kvm.backup_restore"] = {**restore["virtops.kvm.backup_restore"], "force": True}
    write = ["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 1M", str(guest.files.marker_disk)]
    run = playbook(  # one ansible-playbook run for the lot
        [
            {
                **backup_task(guest.name, dest, mode="incremental"),
                "name": "inc",
                "ignore_errors": True,
            },
            backup_task(guest.name, dest, mode="auto", label="first", compress=True),
            {**backup_task(guest.name, dest, label="first"), "name": "again"},
            {"name": "write", "ansible.builtin.command": {"argv": write}},
            restore,
            forced,
            {**forced, "name": "forced again"},
        ]
    )
    refused = failed(run, "inc")
    assert "raw disks get full backups only" in refused["msg"]
    full = ok(run, "backup")
    assert full["plan"]["mode"] == "full" and full["plan"]["method"] == "qemu-img"
    assert full["backup"]["checkpoint"] is None and full["backup"]["compressed"] is True
    assert ok(run, "again")["changed"] is False  # same label: nothing taken
    assert len(os.listdir(dest / guest.name)) == 1
    assert "set force=true" in failed(run, "restore")["msg"]
    assert ok(run, "forced")["changed"] is True
    assert ok(run, "forced again")["changed"] is False
    probe = backup_dir / "orig.qcow2"
    probe.write_bytes(original)
    same = subprocess.run(
        ["qemu-img", "compare", str(probe), str(guest.files.marker_disk)],
        check=False,
        capture_output=True,
    )
    assert same.returncode == 0, same.stdout
    # written since the restore, then running: the restore refuses its disks in use
    subprocess.run(write, check=True, capture_output=True)
    guest.dom.create()
    try:
        result = run_module(backup_restore, forced["virtops.kvm.backup_restore"])
        assert "is running: its disks are in use" in result["msg"], result
    finally:
        guest.dom.destroy()
