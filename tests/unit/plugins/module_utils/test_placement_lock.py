"""The migration placement lock: a private directory, no symlinks, a bounded wait."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _migrate_place
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmError,
    KvmTimeoutError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._migrate_place import (
    PlacementLock,
    lock_directory,
)

HOSTS = ["qemu+ssh://a/system", "qemu+ssh://b/system"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_lock_directory_is_under_run_for_root_and_private_for_users(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert lock_directory() == "/run/virtops-kvm"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert lock_directory() == "/run/user/1000/virtops-kvm"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("HOME", "/home/u")
    assert lock_directory() == "/home/u/.cache/virtops-kvm/locks"


def test_directory_is_made_0700_and_the_lock_file_0600_with_its_holder(tmp_path):
    directory = tmp_path / "locks"
    lock = PlacementLock(HOSTS, directory=str(directory))
    lock.acquire("migration of guest web1")
    try:
        assert mode(directory) == 0o700
        assert mode(lock.path) == 0o600
        assert os.path.dirname(lock.path) == str(directory)
        with open(lock.path, encoding="utf-8") as fh:
            assert fh.read() == f"pid {os.getpid()} migration of guest web1"
    finally:
        lock.release()


def test_a_loose_directory_is_tightened(tmp_path):
    directory = tmp_path / "locks"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    lock = PlacementLock(HOSTS, directory=str(directory))
    lock.acquire()
    lock.release()
    assert mode(directory) == 0o700


def test_a_second_run_times_out_naming_the_lock_and_its_holder(tmp_path):
    first = PlacementLock(HOSTS, directory=str(tmp_path))
    first.acquire("migration of guest web1")
    clock = FakeClock()
    second = PlacementLock(
        list(reversed(HOSTS)), directory=str(tmp_path), timeout=5, clock=clock, sleep=clock.sleep
    )
    assert second.path == first.path  # the same candidates, in any order
    try:
        with pytest.raises(KvmTimeoutError) as err:
            second.acquire("migration of guest web2")
    finally:
        first.release()
    msg = str(err.value)
    assert first.path in msg
    assert f"pid {os.getpid()} migration of guest web1" in msg
    assert "5 s" in msg
    assert clock.now >= 5
    assert clock.sleeps == pytest.approx(5 / _migrate_place.PLACEMENT_LOCK_POLL, abs=1)


def test_the_lock_is_taken_once_the_holder_releases_it(tmp_path):
    first = PlacementLock(HOSTS, directory=str(tmp_path))
    first.acquire("one")
    clock = FakeClock()
    second = PlacementLock(HOSTS, directory=str(tmp_path), timeout=60, clock=clock)

    def sleep(seconds):
        clock.sleep(seconds)
        if clock.sleeps == 3:
            first.release()

    second._sleep = sleep
    second.acquire("two")
    try:
        assert clock.sleeps == 3
        with open(second.path, encoding="utf-8") as fh:
            assert fh.read().endswith(" two")
    finally:
        second.release()


def test_a_symlink_in_place_of_the_lock_file_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    lock = PlacementLock(HOSTS, directory=str(tmp_path / "locks"))
    os.makedirs(lock.directory, mode=0o700)
    os.symlink(victim, lock.path)
    with pytest.raises(KvmError, match="Cannot open the placement lock"):
        lock.acquire()
    assert victim.read_text() == "keep"


def test_a_symlinked_directory_is_refused(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    link = tmp_path / "locks"
    link.symlink_to(real)
    with pytest.raises(KvmError, match="not a directory owned by this user"):
        PlacementLock(HOSTS, directory=str(link)).acquire()
