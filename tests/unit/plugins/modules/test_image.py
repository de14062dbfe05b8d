"""virtops.kvm.image run in-process: options, check mode, a cache hit, errors (no build)."""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _image
from ansible_collections.virtops.kvm.plugins.modules import image


def test_check_mode_predicts_the_paths_and_builds_nothing(module_runner, tmp_path):
    cache = tmp_path / "cache"
    result = module_runner(image, {"cache_dir": str(cache), "size": "8GiB"}, check_mode=True)
    assert result.get("failed") is not True, result
    assert result["changed"] is True
    assert result["dir"] == str(cache / f"debian-{result['recipe_hash']}")
    assert result["image"]["path"] == f"{result['dir']}/disk.qcow2"
    assert not cache.exists()


def test_a_cached_image_is_unchanged(module_runner, tmp_path):
    plan = _image.plan_image(_image.image_spec(name="web", format="raw"), tmp_path)
    plan.dir.mkdir()
    plan.disk.write_bytes(b"")
    result = module_runner(image, {"cache_dir": str(tmp_path), "name": "web", "format": "raw"})
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert result["disk"] == str(plan.disk)
    assert result["cmdline"] == _image.CMDLINE


def test_bad_size_fails_before_anything(module_runner, tmp_path):
    result = module_runner(image, {"cache_dir": str(tmp_path / "c"), "size": "100M"})
    assert result["failed"] is True
    assert "less than 1GiB" in result["msg"]
    assert not (tmp_path / "c").exists()


def test_takes_no_connection_options(module_runner, tmp_path):
    result = module_runner(image, {"cache_dir": str(tmp_path), "uri": "qemu:///system"})
    assert result["failed"] is True
    assert "uri" in result["msg"]
