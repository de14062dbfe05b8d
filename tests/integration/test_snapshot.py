"""Integration tests of virtops.kvm.snapshot / snapshot_info against the real libvirtd.

The ``lab`` tests boot the lab's ``tiny`` guest and check data inside it (markers on its
marker disk mounted at /mnt/marker, the heartbeat counter in its memory); the
``integration`` tests use guests that are defined but never started.

Every module call goes through a real ``ansible-playbook``; a change is run four times in
one playbook (check, apply, check, apply) and ``changed`` is asserted each time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.helpers import four_results, wait_for
from tests.lab.guests import TinyGuest, disk_xml
from tests.lab.images import lab_dir

ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 420  # a tiny guest boots in seconds on an idle machine, minutes on a loaded one
URI = "qemu:///system"
# Reverting tests boot a guest again (up to BOOT_TIMEOUT under load) besides their module runs.
# make test runs these beside the main suite (side_stream): they share none of its guests
pytestmark = [pytest.mark.timeout(900), pytest.mark.side_stream]


# ---------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def tiny(tiny_guest, tiny_image, name_prefix):
    """``tiny(marker='qcow2'|'raw', start=True)``: a lab tiny guest (shared ``tiny_guest``
    fixture) whose marker disk vda is qcow2 (the lab's) or raw (a copy of the raw template in
    a directory of ours); ``guest.marker_path`` is its image."""
    made_dirs: list[Path] = []
    count = [0]

    def _make(marker: str = "qcow2", start: bool = True) -> TinyGuest:
        name = f"{name_prefix}-{count[0]}"
        count[0] += 1
        if marker == "raw":
            raw_dir = lab_dir() / "guests" / f"{name}-raw"
            raw_dir.mkdir(parents=True)
            raw_dir.chmod(0o755)
            made_dirs.append(raw_dir)
            raw = raw_dir / "marker.raw"
            shutil.copyfile(tiny_image.marker_template_raw, raw)
            raw.chmod(0o644)
            guest = tiny_guest(
                name, marker=False, start=False, extra_devices=[disk_xml(raw, "vda", "raw")]
            )
            guest.marker_path = raw
        else:
            guest = tiny_guest(name, start=False)
            guest.marker_path = guest.files.marker_disk
        if start:
            guest.dom.create()
            guest.wait_heartbeat(0, timeout=BOOT_TIMEOUT)
        return guest

    yield _make
    for path in made_dirs:
        shutil.rmtree(path, ignore_errors=True)


def marker_disk(guest: TinyGuest) -> Path:
    return guest.marker_path


def disk_source(dom, target: str = "vda") -> str:
    root = etree.fromstring(dom.XMLDesc(0))
    for disk in root.findall("devices/disk"):
        if disk.find("target").get("dev") == target:
            return disk.find("source").get("file")
    raise AssertionError(f"no disk {target}")


def boot_again(guest: TinyGuest, timeout: float = BOOT_TIMEOUT) -> None:
    """Start a stopped guest and wait for its command shell in the new part of the log."""
    offset = len(guest.console())
    guest.dom.create()
    wait_for(
        lambda: b"TINY CMD READY" in guest.console()[offset:],
        timeout,
        f"{guest.name} booting again",
    )


def image_files(guest: TinyGuest) -> list[str]:
    """The guest's files other than the console log and the command socket."""
    dirs = {guest.files.dir, guest.marker_path.parent}
    return sorted(
        str(p) for d in dirs for p in d.iterdir() if p.name not in ("console.log", "cmd.sock")
    )


def has_marker(guest: TinyGuest, name: str) -> bool:
    status, _output = guest.run(f"test -f /mnt/marker/{name}")
    return status == 0


def shutdown(guest: TinyGuest, timeout: float = 60) -> None:
    """ACPI power off (the tiny guest syncs and unmounts the marker disk first)."""
    dom = guest.dom
    dom.shutdown()
    try:
        wait_for(lambda: not dom.isActive(), timeout, "power off", error=TimeoutError)
    except TimeoutError:
        dom.destroy()


def image_markers(path: Path, tmp_path: Path) -> dict[str, str]:
    """Files on the marker disk image (ext4) read on the host, with their contents."""
    raw = tmp_path / f"{path.name}.flat.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), str(raw)], check=True)
    listing = subprocess.run(
        ["debugfs", "-R", "ls -p /", str(raw)], capture_output=True, text=True, check=True
    ).stdout
    names = [f.split("/")[5] for f in listing.splitlines() if f.count("/") >= 6]
    out = {}
    for n in names:
        if n in (".", "..", "lost+found") or not n:
            continue
        out[n] = subprocess.run(
            ["debugfs", "-R", f"cat /{n}", str(raw)], capture_output=True, text=True, check=True
        ).stdout
    raw.unlink()
    return out


def backing_file(path: str) -> str | None:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return info.get("backing-filename")


def task_result(run, name: str) -> dict:
    """A task's result, with ``failed`` set from the callback's status."""
    for entry in reversed(run.results):
        if entry["task"] == name:
            return {**entry["result"], "failed": entry["status"] == "failed"}
    raise AssertionError(f"no result for {name}: {run.stdout[-2000:]}")


def snapshot_task(args: dict) -> dict:
    return {"name": "t", "virtops.kvm.snapshot": args}


def one(playbook, args: dict, module: str = "virtops.kvm.snapshot", check: bool = False):
    run = playbook([{"name": "t", module: args, "ignore_errors": True}], check=check)
    return task_result(run, "t")


# ---------------------------------------------------------------------------------------
# lab: data checks inside a booted tiny guest


@pytest.mark.lab
def test_internal_snapshot_of_stopped_guest_reverts_disk_data(tiny, playbook, tmp_path):
    guest = tiny()
    guest.write_marker("A", "alpha")
    shutdown(guest)

    t0 = time.monotonic()
    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "s1", "description": "A only"})
    )
    snap = res[1]["snapshot"]
    assert snap["kind"] == "internal" and snap["memory"] is False and snap["state"] == "shutoff"
    assert res[3]["snapshot"]["current"] is True
    print(f"internal snapshot (stopped) 4 runs: {time.monotonic() - t0:.1f}s")

    boot_again(guest)
    guest.write_marker("B", "beta")
    assert has_marker(guest, "B")

    t0 = time.monotonic()
    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "s1", "state": "reverted"})
    )
    judged = res[2]["revert_judgement"]
    assert judged["unchanged"] is True and judged["method"] == "image-files", judged
    assert res[0]["revert_judgement"]["reason"].startswith("the guest is running")
    print(f"internal revert 4 runs: {time.monotonic() - t0:.1f}s")
    assert not guest.dom.isActive()  # a disk-only snapshot: the revert leaves it shut off

    # Started again, the image changes: a revert is due again.
    boot_again(guest)
    assert has_marker(guest, "A") and guest.read_marker("A").strip() == "alpha"
    assert not has_marker(guest, "B")


@pytest.mark.lab
def test_memory_snapshot_resumes_heartbeat(tiny, playbook):
    guest = tiny()
    guest.write_marker("A", "alpha")
    before = guest.wait_heartbeat(after=2)

    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "mem1", "memory": True})
    )
    # A running guest changes all the time, but the snapshot exists: present is idempotent.
    snap = res[1]["snapshot"]
    assert snap["memory"] is True and snap["state"] == "running" and snap["kind"] == "internal"
    at_snapshot = guest.last_heartbeat()
    assert at_snapshot >= before

    guest.write_marker("B", "beta")
    later = guest.wait_heartbeat(after=at_snapshot + 4, timeout=60)

    t0 = time.monotonic()
    res = four_results(
        playbook,
        snapshot_task(
            {"domain": guest.name, "name": "mem1", "state": "reverted", "running_state": "paused"}
        ),
    )
    print(f"memory revert 4 runs: {time.monotonic() - t0:.1f}s")
    assert res[2]["revert_judgement"]["method"] == "write-counters+vcpu-time"
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED

    log_size = len(guest.console())  # paused since the revert: nothing printed meanwhile
    guest.dom.resume()
    time.sleep(3)
    new_beats = [
        int(line.split()[1])
        for line in guest.console()[log_size:].decode(errors="replace").splitlines()
        if line.startswith("HEARTBEAT ")
    ]
    assert new_beats, "no heartbeat after resuming"
    # The counter continues from the snapshot's value, not from where the guest was.
    assert before <= new_beats[0] <= at_snapshot + 1 < later, (new_beats, at_snapshot, later)
    assert new_beats == list(range(new_beats[0], new_beats[0] + len(new_beats)))
    assert guest.read_marker("A").strip() == "alpha"
    assert not has_marker(guest, "B")

    # The guest ran since: reverting again is a change (and the judgement says why).
    again = one(playbook, {"domain": guest.name, "name": "mem1", "state": "reverted"}, check=True)
    assert again["changed"] is True
    assert again["revert_judgement"]["unchanged"] is False


@pytest.mark.lab
def test_external_snapshot_of_running_guest_then_delete_merges(tiny, playbook, tmp_path):
    guest = tiny()
    dom = guest.dom
    base = str(marker_disk(guest))
    guest.write_marker("A", "alpha")

    t0 = time.monotonic()
    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "e1", "kind": "external"})
    )
    print(f"external snapshot (running) 4 runs: {time.monotonic() - t0:.1f}s")
    overlay = res[1]["created"]["overlays"]["vda"]
    assert Path(overlay).exists() and disk_source(dom) == overlay
    assert backing_file(overlay) == base
    snap = res[3]["snapshot"]
    assert snap["kind"] == "external" and snap["disks"][0]["base"] == base

    guest.write_marker("B", "beta")  # lands in the overlay

    t0 = time.monotonic()
    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "e1", "state": "absent"})
    )
    print(f"external delete (running, active commit) 4 runs: {time.monotonic() - t0:.1f}s")
    assert res[1]["deleted"]["method"] == "libvirt"
    assert dom.isActive()
    assert disk_source(dom) == base
    assert not Path(overlay).exists()
    assert guest.read_marker("A").strip() == "alpha"
    assert guest.read_marker("B").strip() == "beta"
    shutdown(guest)
    assert backing_file(base) is None
    on_disk = image_markers(Path(base), tmp_path)
    assert on_disk.get("A", "").strip() == "alpha" and on_disk.get("B", "").strip() == "beta"
    assert sorted(p.name for p in guest.files.dir.glob("*.qcow2")) == ["marker.qcow2"]


@pytest.mark.lab
def test_external_snapshot_of_raw_disk_revert_and_bad_input(tiny, playbook, tmp_path):
    guest = tiny(marker="raw")
    dom = guest.dom
    base = str(marker_disk(guest))
    files_before = image_files(guest)

    # Bad input first: nothing may change.
    bad = one(playbook, {"domain": guest.name, "name": "m", "memory": True})
    assert bad.get("failed") and "qcow2" in bad["msg"] and "vda (raw)" in bad["msg"], bad
    bad = one(playbook, {"domain": guest.name, "name": "nope", "state": "reverted"})
    assert bad.get("failed") and "has no snapshot 'nope'" in bad["msg"], bad
    bad = one(playbook, {"domain": guest.name, "name": "q", "kind": "external", "quiesce": True})
    assert bad.get("failed") and "guest agent" in bad["msg"], bad
    assert dom.snapshotNum(0) == 0 and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert image_files(guest) == files_before

    guest.write_marker("A", "alpha")
    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "x1", "kind": "external"})
    )
    overlay = res[1]["created"]["overlays"]["vda"]
    guest.write_marker("B", "beta")

    t0 = time.monotonic()
    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "x1", "state": "reverted"})
    )
    print(f"external revert 4 runs: {time.monotonic() - t0:.1f}s")
    assert res[1]["revert_overlays"] == [
        {"disk": "vda", "base": base, "overlay": overlay, "new_file": False}
    ]
    assert res[2]["revert_judgement"]["unchanged"] is True
    assert not dom.isActive() and disk_source(dom) == overlay
    assert backing_file(overlay) == base

    boot_again(guest)
    assert guest.read_marker("A").strip() == "alpha"
    assert not has_marker(guest, "B")
    guest.write_marker("C", "gamma")

    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "x1", "state": "absent"})
    )
    assert not Path(overlay).exists() and disk_source(dom) == base
    assert guest.read_marker("C").strip() == "gamma"
    shutdown(guest)
    on_disk = image_markers(Path(base), tmp_path)
    assert set(on_disk) == {"A", "C"}, on_disk
    assert image_files(guest) == files_before


@pytest.mark.lab
def test_external_retention_keeps_n_and_all_data(tiny, playbook, tmp_path):
    guest = tiny()
    dom = guest.dom
    base = str(marker_disk(guest))
    args = {"domain": guest.name, "kind": "external", "retain": {"prefix": "n-", "keep": 2}}
    for i in range(1, 4):
        guest.write_marker(f"m{i}", f"data {i}")
        res = one(playbook, {**args, "name": f"n-{i}"})
        assert res["changed"] and not res.get("failed"), res.get("msg")
    assert sorted(s.getName() for s in dom.listAllSnapshots(0)) == ["n-2", "n-3"]
    assert res["retention"]["deleted"] == ["n-1"]
    guest.write_marker("m4", "data 4")

    t0 = time.monotonic()
    res = four_results(playbook, snapshot_task({**args, "name": "n-4"}))
    print(f"external snapshot + retention (running) 4 runs: {time.monotonic() - t0:.1f}s")
    assert res[0]["retention"]["deleted"] == ["n-2"]
    assert res[1]["retention"]["deleted"] == ["n-2"]
    assert res[2]["retention"]["deleted"] == []
    assert sorted(s.getName() for s in dom.listAllSnapshots(0)) == ["n-3", "n-4"]
    info = one(playbook, {"domain": guest.name}, module="virtops.kvm.snapshot_info")
    assert [s["name"] for s in info["snapshots"]] == ["n-3", "n-4"]
    assert info["snapshots"][0]["disks"][0]["base"] == base  # n-1, n-2 merged into the base
    assert info["tree"] == [
        {
            "name": "n-3",
            "current": False,
            "children": [{"name": "n-4", "current": True, "children": []}],
        }
    ]
    for i in range(1, 5):
        assert guest.read_marker(f"m{i}").strip() == f"data {i}"

    for name in ("n-4", "n-3"):
        res = one(playbook, {"domain": guest.name, "name": name, "state": "absent"})
        assert res["changed"] and not res.get("failed"), res.get("msg")
    shutdown(guest)
    on_disk = image_markers(Path(base), tmp_path)
    assert {k: v.strip() for k, v in on_disk.items()} == {f"m{i}": f"data {i}" for i in range(1, 5)}
    assert sorted(p.name for p in guest.files.dir.glob("*.qcow2")) == ["marker.qcow2"]


def failing_qemu_img(folder: Path) -> dict[str, str]:
    """The environment of a run whose ``qemu-img create`` fails (other commands work)."""
    folder.mkdir()
    wrapper = folder / "qemu-img"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = create ]; then echo "qemu-img: injected failure" >&2; exit 1; fi\n'
        f'exec {shutil.which("qemu-img")} "$@"\n'
    )
    wrapper.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.lab
def test_failed_overlay_create_in_a_revert_leaves_the_running_guest_on_its_overlay(
    tiny, playbook, tmp_path
):
    """Issue 13 item 7: qemu-img failing in an external revert. The new overlay is made
    before anything else changes, so the guest keeps running on its overlay, with the data
    written after the snapshot, and starts again afterwards."""
    guest = tiny()
    dom = guest.dom
    guest.write_marker("A", "alpha")
    assert one(playbook, {"domain": guest.name, "name": "x1", "kind": "external"})["changed"]
    overlay = disk_source(dom)
    guest.write_marker("B", "beta")  # after the snapshot: in the overlay
    files_before = image_files(guest)

    t0 = time.monotonic()
    run = playbook(
        [
            {
                "name": "t",
                "virtops.kvm.snapshot": {"domain": guest.name, "name": "x1", "state": "reverted"},
                "ignore_errors": True,
            }
        ],
        env=failing_qemu_img(tmp_path / "bin"),
    )
    res = task_result(run, "t")
    print(f"failed external revert: {time.monotonic() - t0:.1f}s")
    assert res["failed"], res
    assert "failed and was undone; the guest was not touched" in res["msg"], res["msg"]
    assert "injected failure" in res["msg"] and overlay in res["msg"], res["msg"]

    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING  # never stopped
    assert disk_source(dom) == overlay and Path(overlay).exists()
    assert image_files(guest) == files_before
    assert hidden_files(Path(overlay).parent) == []
    assert guest.read_marker("A").strip() == "alpha"
    assert guest.read_marker("B").strip() == "beta"

    shutdown(guest)
    boot_again(guest)
    assert guest.read_marker("A").strip() == "alpha"
    assert guest.read_marker("B").strip() == "beta"

    # With a working qemu-img the same revert goes through.
    res = one(playbook, {"domain": guest.name, "name": "x1", "state": "reverted"})
    assert res["changed"] and not res["failed"], res.get("msg")
    boot_again(guest)
    assert guest.read_marker("A").strip() == "alpha"
    assert not has_marker(guest, "B")


@pytest.fixture
def small_tmpfs(name_prefix):
    """``small_tmpfs(size)``: a tmpfs mounted on a new directory the guests' QEMU can reach;
    unmounted and removed at teardown (name it before ``tiny`` in a test's arguments: it is
    then torn down after the test's guests)."""
    mounts: list[Path] = []

    def _mount(size: str = "4m") -> Path:
        where = lab_dir() / "guests" / f"{name_prefix}-tmpfs{len(mounts)}"
        where.mkdir(parents=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            check=True,
        )
        mounts.append(where)
        return where

    yield _mount
    for where in mounts:
        subprocess.run(["umount", str(where)], check=False)
        if subprocess.run(["mountpoint", "-q", str(where)], check=False).returncode == 0:
            subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


@pytest.mark.lab
def test_revert_with_a_full_overlay_directory_fails_cleanly(small_tmpfs, tiny, playbook):
    """A revert whose overlay directory is full: the failed create's partial file is
    removed, the guest stays defined on its overlay, which keeps its data, and boots."""
    ovl_dir = small_tmpfs("4m")  # before the guest starts: QEMU gets its own mount namespace
    guest = tiny()
    dom = guest.dom
    guest.write_marker("A", "alpha")
    args = {"domain": guest.name, "name": "x1", "kind": "external", "overlay_dir": str(ovl_dir)}
    res = one(playbook, args)
    assert res["changed"] and not res["failed"], res.get("msg")
    overlay = disk_source(dom)
    assert Path(overlay).parent == ovl_dir
    guest.write_marker("B", "beta")
    shutdown(guest)  # a running guest would stop on its own I/O errors on a full disk
    overlay_bytes = Path(overlay).read_bytes()
    filler = ovl_dir / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False
    )
    assert os.statvfs(ovl_dir).f_bavail == 0

    res = one(playbook, {"domain": guest.name, "name": "x1", "state": "reverted"})
    assert res["failed"], res
    assert "failed and was undone; the guest was not touched" in res["msg"], res["msg"]
    assert "No space left on device" in res["msg"], res["msg"]
    assert sorted(p.name for p in ovl_dir.iterdir()) == sorted([Path(overlay).name, "filler"])
    assert Path(overlay).read_bytes() == overlay_bytes
    assert not dom.isActive() and disk_source(dom) == overlay

    filler.unlink()
    boot_again(guest)
    assert guest.read_marker("A").strip() == "alpha"
    assert guest.read_marker("B").strip() == "beta"
    shutdown(guest)


# ---------------------------------------------------------------------------------------
# integration: guests that are defined, never started


@pytest.mark.integration
def test_missing_guest_is_a_clear_error(playbook, name_prefix):
    res = one(playbook, {"domain": f"{name_prefix}-none", "name": "s"})
    assert res.get("failed") and res["msg"] == f"Guest '{name_prefix}-none' does not exist"
    info = one(playbook, {"domain": f"{name_prefix}-none"}, module="virtops.kvm.snapshot_info")
    assert info.get("failed") and "does not exist" in info["msg"]


@pytest.mark.integration
def test_internal_retention_and_tree_on_stopped_guest(tiny, playbook):
    guest = tiny(start=False)
    dom = guest.dom
    args = {"domain": guest.name, "retain": {"prefix": "nightly-", "keep": 3}}
    for i in range(1, 5):
        res = one(playbook, {**args, "name": f"nightly-{i}"})
        assert res["changed"] and not res.get("failed"), res.get("msg")
    one(playbook, {"domain": guest.name, "name": "manual"})  # no prefix: never retained
    assert sorted(s.getName() for s in dom.listAllSnapshots(0)) == [
        "manual",
        "nightly-2",
        "nightly-3",
        "nightly-4",
    ]
    res = four_results(playbook, snapshot_task({**args, "name": "nightly-5"}))
    assert res[1]["retention"]["deleted"] == ["nightly-2"]
    assert res[1]["retention"]["kept"] == ["nightly-3", "nightly-4", "nightly-5"]
    assert sorted(s.getName() for s in dom.listAllSnapshots(0)) == [
        "manual",
        "nightly-3",
        "nightly-4",
        "nightly-5",
    ]

    # tree: revert to nightly-3, take another: nightly-3 gets a second child
    res = one(playbook, {"domain": guest.name, "name": "nightly-3", "state": "reverted"})
    assert res["changed"] and not res.get("failed"), res.get("msg")
    one(playbook, {"domain": guest.name, "name": "branch"})
    info = one(playbook, {"domain": guest.name}, module="virtops.kvm.snapshot_info")
    by_name = {s["name"]: s for s in info["snapshots"]}
    assert by_name["nightly-3"]["children"] == ["branch", "nightly-4"]
    assert by_name["branch"]["parent"] == "nightly-3" and info["current"] == "branch"
    assert info["snapshots"][0]["name"] == "nightly-3"
    # deleting a parent keeps its children (libvirt reparents them)
    one(playbook, {"domain": guest.name, "name": "nightly-3", "state": "absent"})
    info = one(
        playbook, {"domain": guest.name, "name": "branch"}, module="virtops.kvm.snapshot_info"
    )
    assert info["snapshots"][0]["parent"] is None


@pytest.mark.integration
def test_playbook_create_list_revert_delete_is_idempotent(tiny, playbook, tmp_path):
    guest = tiny(start=False)
    book = ROOT / "playbooks" / "snapshot.yml"
    plays = [{"import_playbook": str(book)}]

    def run(action, **extra):
        result = playbook(
            plays=plays,
            extra_vars={
                "snapshot_domain": guest.name,
                "snapshot_name": "pb1",
                "snapshot_action": action,
                **extra,
            },
        )
        assert result.rc == 0, result.stdout[-3000:]
        return result

    def twice(action, first):
        first_run = run(action)
        assert first_run.changed is first, (action, first_run.results)
        again = run(action)
        assert again.changed is False, (action, again.results)

    twice("create", True)
    twice("list", False)
    twice("revert", False)  # just taken, image untouched since: already there
    # An offline write to the image (what a started guest would do): revert is due.
    subprocess.run(
        ["qemu-io", "-c", "write -P 0x5a 20M 64k", str(marker_disk(guest))],
        check=True,
        capture_output=True,
    )
    twice("revert", True)
    twice("delete", True)
    assert guest.dom.snapshotNum(0) == 0


def qemu_io(path: Path | str, command: str) -> str:
    proc = subprocess.run(
        ["qemu-io", "-c", command, str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def pattern_at(path: Path | str, pattern: int) -> bool:
    """Whether the 64 KiB at 16 MiB of the image (through its backing chain) hold ``pattern``."""
    out = subprocess.run(
        ["qemu-io", "-r", "-c", f"read -P {pattern:#x} 16M 64k", str(path)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return "Pattern verification failed" not in out and "read 65536/65536" in out


@pytest.mark.integration
def test_external_revert_to_older_snapshot_forks_and_deletes_cleanly(tiny, playbook):
    """External snapshots of a stopped guest, checked on the images with qemu-io: revert to
    a snapshot with a child (a new overlay is forked), back to the child, delete the child
    the guest was reverted away from (its overlays are discarded), delete the last one
    (libvirt commits it into the original image): right data each time, no file left."""
    guest = tiny(start=False)
    dom = guest.dom
    base = str(marker_disk(guest))
    gdir = guest.files.dir
    qemu_io(base, "write -P 0x11 16M 64k")
    ext = {"domain": guest.name, "kind": "external"}
    assert one(playbook, {**ext, "name": "e1"})["changed"]
    o1 = disk_source(dom)
    qemu_io(o1, "write -P 0x22 16M 64k")
    assert one(playbook, {**ext, "name": "e2"})["changed"]
    o2 = disk_source(dom)
    qemu_io(o2, "write -P 0x33 16M 64k")

    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "e1", "state": "reverted"})
    )
    fork = res[1]["revert_overlays"][0]
    assert fork["new_file"] is True and fork["overlay"] != o1 and fork["base"] == base
    assert disk_source(dom) == fork["overlay"] and pattern_at(fork["overlay"], 0x11)
    assert pattern_at(o2, 0x33) and pattern_at(o1, 0x22)  # e2's branch is intact

    res = one(playbook, {"domain": guest.name, "name": "e2", "state": "reverted"})
    assert res["changed"] and res["revert_overlays"][0]["new_file"] is False
    assert disk_source(dom) == o2 and pattern_at(o2, 0x22)  # e2's state: writes after it gone

    # e1 has two branches now: refused, with the way out in the message
    bad = one(playbook, {"domain": guest.name, "name": "e1", "state": "absent"})
    assert bad["failed"] and "e2" in bad["msg"], bad["msg"]

    assert one(playbook, {"domain": guest.name, "name": "e1", "state": "reverted"})["changed"]
    assert disk_source(dom) == fork["overlay"] and pattern_at(fork["overlay"], 0x11)
    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "e2", "state": "absent"})
    )
    assert res[1]["deleted"]["method"] == "discard"
    assert not Path(o2).exists() and not Path(o1).exists()  # e1's old overlay had no user left

    res = four_results(
        playbook, snapshot_task({"domain": guest.name, "name": "e1", "state": "absent"})
    )
    assert res[1]["deleted"]["method"] == "libvirt"
    assert dom.snapshotNum(0) == 0 and disk_source(dom) == base
    assert backing_file(base) is None and pattern_at(base, 0x11)
    assert sorted(p.name for p in gdir.glob("*.qcow2")) == ["marker.qcow2"]
