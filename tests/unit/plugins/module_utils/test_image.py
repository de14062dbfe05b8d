"""The image recipe, its hash, the cache and the build plan (no build: see
tests/integration/test_image.py for real ones)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _image, _image_build
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmError,
    KvmValidationError,
)
from tests.lab import images as lab_images

# The hashes of the images the test lab has built since before the module existed. A change
# here rebuilds every cached image (minutes each): change them only on purpose.
LAB_DEBIAN_HASH = "1bd9dcf0ef1b"
LAB_DEBIAN_SELINUX_HASH = "358ab6a627a0"


def fake_image(cache: Path, plan: _image.ImagePlan) -> None:
    plan.dir.mkdir(parents=True)
    plan.disk.write_bytes(b"QFI\xfb")
    (plan.dir / "recipe.json").write_text("{}")


# --- recipe and hash ---------------------------------------------------------------------------


def test_default_recipe_keeps_the_lab_hash():
    assert _image.recipe_digest(_image.recipe(_image.image_spec())) == LAB_DEBIAN_HASH
    assert _image.recipe_digest(lab_images.debian_recipe()) == LAB_DEBIAN_HASH


def test_selinux_lab_recipe_keeps_its_hash():
    recipe = lab_images.debian_selinux_recipe()
    assert _image.recipe_digest(recipe) == LAB_DEBIAN_SELINUX_HASH
    assert recipe["selinux"]["packages"][: len(_image.SELINUX_PACKAGES)] == _image.SELINUX_PACKAGES
    assert "python3-libvirt" in recipe["selinux"]["packages"]
    assert recipe["cmdline"].endswith("security=selinux selinux=1 enforcing=1")


def test_size_has_one_spelling_and_one_hash():
    specs = [_image.image_spec(size=s) for s in ("6GiB", "6G", "6144MiB", str(6 * 1024**3))]
    assert {s.size for s in specs} == {"6G"}
    assert _image.image_spec(size="1536MiB").size == "1536M"
    assert len({_image.recipe_digest(_image.recipe(s)) for s in specs}) == 1


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"suite": "trixie"}, "suite"),
        ({"mirror": "http://apt.example.com/debian"}, "mirror"),
        ({"size": "8GiB"}, "size"),
        ({"format": "raw"}, "format"),
        ({"extra_packages": ["nginx"]}, "extra_packages"),
        ({"selinux": True}, "selinux"),
    ],
)
def test_every_option_but_name_changes_the_recipe(options, key):
    changed = _image.recipe(_image.image_spec(**options))
    assert key in changed
    assert _image.recipe_digest(changed) != LAB_DEBIAN_HASH


def test_name_is_not_part_of_the_recipe():
    named = _image.image_spec(name="web")
    assert _image.recipe(named) == _image.recipe(_image.image_spec())
    assert _image.image_spec(selinux=True).name == "debian_selinux"


def test_mirror_and_suite_reach_sources_list():
    recipe = _image.recipe(_image.image_spec(suite="trixie", mirror="http://m.example/debian"))
    assert recipe["files"]["etc/apt/sources.list"] == "deb http://m.example/debian trixie main\n"
    assert recipe["mirror"] == "http://m.example/debian"


def test_extra_packages_without_selinux_are_installed_by_apt_after_debootstrap():
    recipe = _image.recipe(_image.image_spec(extra_packages=["nginx", "less"]))
    assert recipe["extra_packages"] == ["nginx", "less"]
    assert "nginx" not in recipe["packages"]  # not debootstrap --include
    with_selinux = _image.recipe(_image.image_spec(extra_packages=["nginx"], selinux=True))
    assert "extra_packages" not in with_selinux
    assert with_selinux["selinux"]["packages"][-1] == "nginx"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"suite": "Bookworm!"}, "suite"),
        ({"mirror": "ftp://ftp.debian.org/debian"}, "mirror"),
        ({"mirror": "deb.debian.org"}, "mirror"),
        ({"extra_packages": ["nginx", "Foo Bar"]}, "Foo Bar"),
        ({"name": "../etc"}, "name"),
        ({"format": "vmdk"}, "format"),
        ({"size": "512MiB"}, "less than 1GiB"),
        ({"size": "1.5GB"}, "whole number of MiB"),
        ({"size": "huge"}, "size"),
    ],
)
def test_bad_options_are_refused(options, words):
    with pytest.raises(KvmValidationError) as err:
        _image.image_spec(**options)
    assert words in err.value.msg


# --- plan and check mode ----------------------------------------------------------------------


def test_plan_names_the_files(tmp_path):
    plan = _image.plan_image(_image.image_spec(format="raw"), tmp_path)
    assert plan.dir.parent == tmp_path
    assert plan.dir.name == f"debian-{plan.digest}"
    assert plan.disk.name == "disk.raw"
    assert plan.exists is False
    result = plan.result(changed=True)
    assert result["image"] == {
        "path": str(plan.disk),
        "format": "raw",
        "kernel": str(plan.dir / "vmlinuz"),
        "initrd": str(plan.dir / "initrd.img"),
        "cmdline": _image.CMDLINE,
    }


def test_check_mode_predicts_a_build_and_makes_nothing(tmp_path):
    cache = tmp_path / "cache"
    result = _image.ensure_image(_image.image_spec(), cache, check_mode=True)
    assert result["changed"] is True
    assert result["recipe_hash"] == LAB_DEBIAN_HASH
    assert not cache.exists()


def test_a_built_image_is_found_unchanged(tmp_path):
    spec = _image.image_spec()
    plan = _image.plan_image(spec, tmp_path)
    fake_image(tmp_path, plan)
    old = time.time() - 3600
    os.utime(plan.dir / "recipe.json", (old, old))
    checked = _image.ensure_image(spec, tmp_path, check_mode=True)
    assert checked["changed"] is False
    assert (plan.dir / "recipe.json").stat().st_mtime == old  # check mode touches nothing
    result = _image.ensure_image(spec, tmp_path)
    assert result["changed"] is False
    assert "build_seconds" not in result
    assert result["disk"] == str(plan.disk)
    assert (plan.dir / "recipe.json").stat().st_mtime > old  # marked as used


def test_a_directory_without_its_disk_is_not_an_image(tmp_path):
    spec = _image.image_spec()
    plan = _image.plan_image(spec, tmp_path)
    fake_image(tmp_path, plan)
    plan.disk.unlink()
    assert _image.plan_image(spec, tmp_path).exists is False
    with pytest.raises(KvmError, match=r"has no disk\.qcow2"):
        _image.ensure_image(spec, tmp_path, check_mode=True)


# --- the build host ---------------------------------------------------------------------------


def test_missing_tools_are_named_with_their_packages():
    recipe = _image.recipe(_image.image_spec())

    def which(tool, path=None):
        return None if tool in ("debootstrap", "qemu-img") else f"/usr/bin/{tool}"

    with pytest.raises(KvmError) as err:
        _image_build.check_build_host(recipe, which=which, euid=0)
    assert err.value.details["missing_tools"] == ["debootstrap", "qemu-img"]
    assert "debootstrap, qemu-utils" in err.value.msg


def test_building_needs_root():
    recipe = _image.recipe(_image.image_spec())
    with pytest.raises(KvmError, match="needs root"):
        _image_build.check_build_host(recipe, which=lambda tool, path=None: "/x", euid=1000)
    _image_build.check_build_host(recipe, which=lambda tool, path=None: "/x", euid=0)


def test_required_tools_follow_the_recipe():
    raw = _image.recipe(_image.image_spec(format="raw"))
    assert "qemu-img" not in _image_build.required_tools(raw)
    selinux = _image.recipe(_image.image_spec(selinux=True))
    assert {"debugfs", "mount", "qemu-img"} <= set(_image_build.required_tools(selinux))


def test_check_mode_fails_like_the_build_on_a_host_that_cannot_build(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_image_build, "_SBIN", ())
    with pytest.raises(KvmError, match="debootstrap"):
        _image.ensure_image(_image.image_spec(), tmp_path / "cache", check_mode=True)


def test_tool_path_adds_sbin(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert _image_build.tool_path().split(":")[:2] == ["/usr/bin", "/bin"]
    assert "/usr/sbin" in _image_build.tool_path().split(":")


def test_a_failed_command_says_what_and_why():
    with pytest.raises(KvmError) as err:
        _image_build.run(["sh", "-c", "echo out; echo broken >&2; exit 3"])
    assert err.value.details["rc"] == 3
    assert "broken" in err.value.msg


# --- the cache --------------------------------------------------------------------------------


def test_cached_build_builds_once(tmp_path):
    calls = []

    def builder(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "disk.qcow2").write_text("image")

    path, seconds = _image.cached_build("k", {"a": 1}, builder, tmp_path / "c")
    assert seconds is not None
    assert (path / "disk.qcow2").read_text() == "image"
    assert json.loads((path / "recipe.json").read_text())["recipe"] == {"a": 1}
    assert oct((path / "disk.qcow2").stat().st_mode & 0o777) == "0o644"
    again, seconds2 = _image.cached_build("k", {"a": 1}, builder, tmp_path / "c")
    assert (again, seconds2) == (path, None)
    assert len(calls) == 1


def test_a_failed_build_leaves_nothing(tmp_path):
    def builder(tmp: Path) -> None:
        (tmp / "disk.qcow2").write_text("half")
        raise KvmError("debootstrap failed")

    with pytest.raises(KvmError):
        _image.cached_build("k", {"a": 1}, builder, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".k-{_image.recipe_digest({'a': 1})}.lock"
    ]


def test_the_leftover_of_a_crashed_build_is_removed(tmp_path):
    name = f"k-{_image.recipe_digest({'a': 1})}"
    crashed = tmp_path / f".{name}.tmp-99999"
    crashed.mkdir()
    (crashed / "disk.qcow2").write_text("half")
    _image.cached_build("k", {"a": 1}, lambda tmp: (tmp / "f").write_text("x"), tmp_path)
    assert not crashed.exists()
    assert (tmp_path / name / "f").is_file()


def test_prune_removes_only_old_images_of_other_recipes(tmp_path):
    old = time.time() - 20 * 86400
    for name in ("k-old", "k-recent", "other-old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "recipe.json").write_text("{}")
        if name.endswith("old"):
            os.utime(tmp_path / name / "recipe.json", (old, old))
    os.utime(tmp_path / "k-recent" / "recipe.json")
    _image.cached_build("k", {"a": 2}, lambda tmp: None, tmp_path, prune_days=14)
    assert not (tmp_path / "k-old").exists()
    assert (tmp_path / "k-recent").is_dir()
    assert (tmp_path / "other-old").is_dir()
