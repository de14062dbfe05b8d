"""virtops.kvm.image for real: from the collection as users install it (the built tarball), a
failed build, and (lab) a whole build run four times: check, apply, check, apply."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, VENV_BIN, failed, four_times, run_playbook

pytestmark = pytest.mark.integration

DEMO_IMAGE_TASK = "Build or reuse the local Debian 12 image (debootstrap, cached)"
DEMO_CHOOSE_TASK = "Choose the image of the guests (the built one boots its kernel directly)"


@dataclass(frozen=True)
class Installed:
    collections: Path  # the ANSIBLE_COLLECTIONS_PATH holding only the installed tarball
    members: list[str]
    seconds: float

    def env(self, tmp: Path) -> dict[str, str]:
        """Ansible with the installed copy alone: no checkout ansible.cfg, no link to it."""
        cfg = tmp / "ansible.cfg"
        cfg.write_text("[defaults]\ninterpreter_python = auto_silent\n")
        return {"ANSIBLE_CONFIG": str(cfg), "ANSIBLE_COLLECTIONS_PATH": str(self.collections)}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """``ansible-galaxy collection build`` of the checkout, installed into a temporary path."""
    top = tmp_path_factory.mktemp("installed")
    started = time.monotonic()
    # not the checkout's ansible.cfg (its collections path links to the checkout)
    (top / "ansible.cfg").write_text("[defaults]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_CONFIG"] = str(top / "ansible.cfg")
    subprocess.run(
        [
            str(VENV_BIN / "ansible-galaxy"),
            "collection",
            "build",
            "--output-path",
            str(top),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=top,
        env=env,
    )
    (tarball,) = top.glob("virtops-kvm-*.tar.gz")
    with tarfile.open(tarball) as tar:
        members = tar.getnames()
    subprocess.run(
        [
            str(VENV_BIN / "ansible-galaxy"),
            "collection",
            "install",
            "--force",  # another virtops.kvm 0.1.0 in ~/.ansible would make it do nothing
            "-p",
            str(top / "c"),
            str(tarball),
        ],
        check=True,
        capture_output=True,
        cwd=top,
        env=env,
    )
    return Installed(top / "c", members, time.monotonic() - started)


def test_the_tarball_has_the_builder_and_no_test_lab(installed):
    assert "plugins/modules/image.py" in installed.members
    assert "plugins/module_utils/_image.py" in installed.members
    assert "plugins/module_utils/_image_build.py" in installed.members
    assert "playbooks/demo.yml" in installed.members
    assert "inventory/demo.libvirt.yml" in installed.members  # the demo's inventory plugin file
    assert not [m for m in installed.members if m == "tests" or m.startswith("tests/")]
    demo = (
        installed.collections / "ansible_collections/virtops/kvm/playbooks/demo.yml"
    ).read_text()
    assert "virtops.kvm.image" in demo
    assert "tests.lab" not in demo


def test_installed_module_finds_the_lab_image(installed, debian_image, tmp_path):
    """From the installed copy: the lab's default image is the module's default recipe, a cache
    hit in check mode and in a real run (nothing built: fast)."""
    listing = subprocess.run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "list", "virtops.kvm", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **installed.env(tmp_path)},
    )
    assert list(json.loads(listing.stdout)) == [str(installed.collections / "ansible_collections")]
    task = {
        "name": "image",
        "virtops.kvm.image": {"cache_dir": str(debian_image.dir.parent)},
    }
    for check in (True, False):
        started = time.monotonic()
        run = run_playbook(tmp_path, [task], check=check, env=installed.env(tmp_path))
        assert run.rc == 0, run.stdout + run.stderr
        result = run.task("image")
        assert result["changed"] is False
        assert result["dir"] == str(debian_image.dir)
        assert result["image"]["path"] == str(debian_image.disk)
        assert debian_image.cmdline.startswith(result["cmdline"])
        assert time.monotonic() - started < 60


def test_installed_demo_takes_its_image_from_the_module(installed, debian_image, tmp_path):
    """`ansible-playbook virtops.kvm.demo --check` of the installed copy from its image task on,
    with no guests (the host role before it, and the guest role's use of an image, are tested
    on their own): the demo's image comes from virtops.kvm.image, with no image URL."""
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(demo_dir / "id_ed25519")],
        check=True,
    )
    extra = {
        "demo_dir": str(demo_dir),
        "demo_guests": [],
        "demo_image_cache": str(debian_image.dir.parent),
        "ansible_python_interpreter": str(VENV_BIN / "python"),
    }
    results = tmp_path / "results.json"
    env = {
        **os.environ,
        **installed.env(tmp_path),
        "ANSIBLE_CALLBACK_PLUGINS": str(ROOT / "tests/integration/callback_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": "virtops_results",
        "VIRTOPS_RESULTS_FILE": str(results),
        "ANSIBLE_NOCOLOR": "1",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "virtops.kvm.demo",
            "--check",
            "--start-at-task",
            DEMO_IMAGE_TASK,
            "-e",
            json.dumps(extra),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=280,
        check=False,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    done = {e["task"]: e["result"] for e in json.loads(results.read_text())}
    assert done[DEMO_IMAGE_TASK]["changed"] is False
    assert done[DEMO_IMAGE_TASK]["disk"] == str(debian_image.disk)
    chosen = done[DEMO_CHOOSE_TASK]["ansible_facts"]["demo_image"]
    assert chosen["path"] == str(debian_image.disk)
    assert chosen["kernel"] == str(debian_image.kernel)
    assert chosen["initrd"] == str(debian_image.initrd)
    assert chosen["cmdline"] == debian_image.cmdline  # the image's own plus no_timer_check
    print(f"installed demo --check from its image task on: {seconds:.1f} s")


def test_check_mode_predicts_a_build_and_makes_nothing(playbook, tmp_path):
    cache = tmp_path / "cache"
    task = {"name": "image", "virtops.kvm.image": {"cache_dir": str(cache), "size": "3GiB"}}
    result = playbook([task], check=True).task("image")
    assert result["changed"] is True
    assert result["dir"] == f"{cache}/debian-{result['recipe_hash']}"
    assert not cache.exists()


def test_a_failed_build_leaves_nothing(playbook, tmp_path):
    """debootstrap fails (no archive at the mirror): a clear error, no image, no temporary files."""
    cache = tmp_path / "cache"
    run = playbook(
        [
            {
                "name": "image",
                "virtops.kvm.image": {
                    "cache_dir": str(cache),
                    "mirror": "http://127.0.0.1:9/debian",
                },
                "ignore_errors": True,
            }
        ]
    )
    result = failed(run, "image")
    assert "debootstrap" in result["msg"]
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.lab
@pytest.mark.image_build
@pytest.mark.timeout(1500)
def test_a_real_build_check_apply_check_apply(playbook, tmp_path):
    """A raw 2 GiB image with one more package: built once, then found; check mode predicts."""
    cache = tmp_path / "cache"
    task = {
        "name": "image",
        "virtops.kvm.image": {
            "name": "probe",
            "cache_dir": str(cache),
            "format": "raw",
            "size": "2GiB",
            "extra_packages": ["less"],
        },
    }

    # 3-4 minutes on an idle 2-core machine, 16 under a load average of 16
    def slow(tasks, **kwargs):
        return playbook(tasks, timeout=1400, **kwargs)

    first_check, made, second_check, again = (
        run.task("image") for run in four_times(slow, [task], diff=False)
    )
    assert made["build_seconds"] > 0
    assert made["dir"] == first_check["dir"]
    disk = Path(made["disk"])
    assert disk.name == "disk.raw"
    assert disk.stat().st_size == 2 * 1024**3
    assert Path(made["kernel"]).stat().st_size > 1_000_000
    assert Path(made["initrd"]).stat().st_size > 1_000_000
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        Path(made["dir"]).name
    ]
    for path in ("/usr/bin/less", "/usr/bin/cloud-init"):
        stat = subprocess.run(
            ["debugfs", "-R", f"stat {path}", str(disk)], capture_output=True, text=True, check=True
        )
        assert "Type: regular" in stat.stdout, (path, stat.stderr)
    sources = subprocess.run(
        ["debugfs", "-R", "cat /etc/apt/sources.list", str(disk)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sources.stdout == "deb http://deb.debian.org/debian bookworm main\n"
    assert "build_seconds" not in again
    assert second_check["dir"] == again["dir"] == made["dir"]
