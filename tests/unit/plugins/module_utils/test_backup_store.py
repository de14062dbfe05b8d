"""The backup directory of virtops.kvm.backup: manifests, chains, verification, retention
(files only; the libvirt side is in tests/integration/test_backup.py)."""

from __future__ import annotations

import datetime
import json
import os

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._backup_store import (
    MANIFEST,
    Backup,
    DiskEntry,
    GuestBackups,
    id_key,
    new_id,
    parse_age,
    retention_plan,
    sha256_file,
    verify_chain,
    write_json_atomic,
)
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError

T0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)


def make(dest, backup_id, parent=None, *, hours=0, data=b"data", manifest=True):
    folder = dest / "g1" / backup_id
    folder.mkdir(parents=True)
    (folder / "vda.qcow2").write_bytes(data)
    (folder / "domain.xml").write_text("<domain/>")
    when = (T0 + datetime.timedelta(hours=hours)).isoformat()
    backup = Backup(
        id=backup_id,
        guest="g1",
        mode="incremental" if parent else "full",
        path=str(folder),
        parent=parent,
        checkpoint=f"virtops-backup-{backup_id}",
        started=when,
        finished=when,
        disks=[
            DiskEntry("vda", "vda.qcow2", len(data), sha256_file(str(folder / "vda.qcow2")), 1024)
        ],
        domain_xml_sha256=sha256_file(str(folder / "domain.xml")),
    )
    if manifest:
        write_json_atomic(str(folder / MANIFEST), backup.manifest())
    return backup


@pytest.fixture
def dest(tmp_path):
    make(tmp_path, "20261201T000000Z-full")
    make(tmp_path, "20261201T010000Z-inc", "20261201T000000Z-full", hours=1)
    make(tmp_path, "20261201T020000Z-inc", "20261201T010000Z-inc", hours=2)
    make(tmp_path, "20261201T030000Z-full", hours=3)
    make(tmp_path, "20261201T040000Z-inc", "20261201T030000Z-full", hours=4)
    make(tmp_path, "20261201T050000Z-full", hours=5)
    return tmp_path


def test_chains_group_incrementals_under_their_full_backup(dest):
    store = GuestBackups.load(str(dest), "g1")
    assert [[b.id[9:15] for b in c] for c in store.chains()] == [
        ["000000", "010000", "020000"],
        ["030000", "040000"],
        ["050000"],
    ]
    chain = store.chain(store.by_id("20261201T020000Z-inc"))
    assert [b.id for b in chain] == [
        "20261201T000000Z-full",
        "20261201T010000Z-inc",
        "20261201T020000Z-inc",
    ]


def test_a_backup_without_manifest_or_a_partial_one_is_not_a_backup(tmp_path):
    make(tmp_path, "20261201T000000Z-full")
    make(tmp_path, "20261201T010000Z-inc", "20261201T000000Z-full", manifest=False)
    (tmp_path / "g1" / ".20261201T020000Z-inc.partial").mkdir()
    store = GuestBackups.load(str(tmp_path), "g1")
    assert [b.id for b in store.backups] == ["20261201T000000Z-full"]
    assert sorted(os.path.basename(p) for p in store.partial) == [
        ".20261201T020000Z-inc.partial",
        "20261201T010000Z-inc",
    ]
    assert new_id(store.dir, "incremental", T0.replace(hour=2)) == "20261201T020000Z-2-inc"


def test_backups_of_the_same_second_are_ordered_by_their_number_not_their_text(tmp_path):
    """Three backups in one second (as a test or a loop takes them): "-2-inc" sorts before
    "-inc" as text, yet it is the later one, the latest, the one the next builds on."""
    make(tmp_path, "20261201T000000Z-full")
    make(tmp_path, "20261201T000001Z-inc", "20261201T000000Z-full")
    make(tmp_path, "20261201T000001Z-2-inc", "20261201T000001Z-inc")
    make(tmp_path, "20261201T000001Z-10-inc", "20261201T000001Z-2-inc")
    store = GuestBackups.load(str(tmp_path), "g1")
    order = [
        "20261201T000000Z-full",
        "20261201T000001Z-inc",
        "20261201T000001Z-2-inc",
        "20261201T000001Z-10-inc",
    ]
    assert [b.id for b in store.backups] == order
    assert store.latest.id == "20261201T000001Z-10-inc"
    assert [[b.id for b in c] for c in store.chains()] == [order]
    assert sorted(reversed(order), key=id_key) == order
    # a full backup in that second too comes after all of them, whatever its kind
    second = T0.replace(second=1)
    assert new_id(store.dir, "full", second) == "20261201T000001Z-11-full"
    (tmp_path / "g1" / ".20261201T000002Z-inc.partial").mkdir()
    assert new_id(store.dir, "full", T0.replace(second=2)) == "20261201T000002Z-2-full"
    assert new_id(store.dir, "incremental", T0.replace(second=3)) == "20261201T000003Z-inc"


def test_one_changed_byte_breaks_the_chain_and_a_missing_parent_too(dest):
    store = GuestBackups.load(str(dest), "g1")
    leaf = store.by_id("20261201T020000Z-inc")
    assert verify_chain(store, leaf) == []
    middle = dest / "g1" / "20261201T010000Z-inc" / "vda.qcow2"
    middle.write_bytes(b"dbta")  # same size: only the checksum sees it
    assert verify_chain(store, leaf, checksums=False) == []
    [problem] = verify_chain(store, leaf)
    assert problem.backup == "20261201T010000Z-inc"
    assert "SHA-256" in problem.detail
    (dest / "g1" / "20261201T000000Z-full" / MANIFEST).unlink()
    store = GuestBackups.load(str(dest), "g1")
    [problem] = verify_chain(store, store.by_id("20261201T020000Z-inc"))
    assert "chain is broken" in problem.detail
    with pytest.raises(KvmValidationError, match="chain is broken"):
        store.chain(store.by_id("20261201T020000Z-inc"))


def test_a_manifest_naming_another_backup_is_unreadable(dest):
    path = dest / "g1" / "20261201T050000Z-full" / MANIFEST
    data = json.loads(path.read_text())
    data["id"] = "20261201T060000Z-full"
    path.write_text(json.dumps(data))
    store = GuestBackups.load(str(dest), "g1")
    assert [p.backup for p in store.unreadable] == ["20261201T050000Z-full"]


@pytest.mark.parametrize(
    ("keep", "age", "kept"),
    [
        (1, None, ["050000"]),
        (2, None, ["030000", "050000"]),
        (5, None, ["000000", "030000", "050000"]),
        (None, "3h", ["030000", "050000"]),  # the 03-04 chain ended 2 h before "now" (06:00)
        (None, "2h", ["050000"]),
        (None, "1h", ["050000"]),
        (1, "3h", ["030000", "050000"]),  # either rule keeps a chain
        (None, "1m", ["050000"]),  # the newest chain always stays
    ],
)
def test_retention_deletes_whole_chains_only(dest, keep, age, kept):
    store = GuestBackups.load(str(dest), "g1")
    now = T0 + datetime.timedelta(hours=6)
    max_age = parse_age(age) if age else None
    got_kept, got_deleted = retention_plan(store, keep=keep, max_age=max_age, now=now)
    assert [c[0].id[9:15] for c in got_kept] == kept
    assert len(got_kept) + len(got_deleted) == 3
    assert all(c[0].mode == "full" for c in got_deleted)


def test_retention_keeps_the_chain_in_use(dest):
    store = GuestBackups.load(str(dest), "g1")
    kept, _deleted = retention_plan(
        store, keep=1, max_age=None, now=T0, in_use="20261201T040000Z-inc"
    )
    assert [c[0].id for c in kept] == ["20261201T030000Z-full", "20261201T050000Z-full"]


@pytest.mark.parametrize("bad", ["", "7", "7 days", "-1d", "1y"])
def test_bad_ages_are_refused(bad):
    with pytest.raises(KvmValidationError, match="max_age"):
        parse_age(bad)
