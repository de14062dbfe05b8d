"""Unit tests of the storage models and the pool/volume modules on libvirt's test driver."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._storage import (
    PoolSpec,
    VolumeSpec,
    pool_spec_from_params,
)
from ansible_collections.virtops.kvm.plugins.module_utils._volume_import import (
    Checksum,
    qcow2_virtual_size,
)
from ansible_collections.virtops.kvm.plugins.modules import pool as pool_module
from ansible_collections.virtops.kvm.plugins.modules import pool_info, volume_info
from ansible_collections.virtops.kvm.plugins.modules import volume as volume_module

TEST = "test:///default"


def test_pool_model_round_trip_keeps_sources():
    spec = pool_spec_from_params(
        {
            "name": "ceph",
            "type": "rbd",
            "source": {
                "name": "vms",
                "hosts": ["mon1", "mon2:6789", "[fd00::1]:3300"],
                "auth": {"username": "libvirt"},
            },
        }
    )
    assert spec.source.hosts == [("mon1", None), ("mon2", 6789), ("fd00::1", 3300)]
    assert spec.source.auth.secret_usage == "client.libvirt secret"
    assert PoolSpec.from_xml(spec.to_xml()) == spec


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"type": "dir"}, "'target' (the directory of the pool) is required"),
        ({"type": "dir", "target": "rel/path"}, "must be an absolute path"),
        ({"type": "fs", "target": "/m"}, "exactly one block device"),
        ({"type": "netfs", "target": "/m", "source": {"hosts": ["h"]}}, "exported directory"),
        ({"type": "rbd", "source": {"name": "p"}}, "at least one Ceph monitor"),
        ({"type": "dir", "target": "/x", "source": {"format": "ext4"}}, "does not apply to dir"),
        (
            {"type": "fs", "target": "/m", "source": {"devices": ["/dev/x"], "format": "nfs"}},
            "must be one of",
        ),
    ],
)
def test_pool_params_validated(params, message):
    with pytest.raises(KvmValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pool_spec_from_params({"name": "p", **params})


def test_logical_defaults():
    spec = pool_spec_from_params(
        {"name": "vg0", "type": "logical", "source": {"devices": ["/dev/sdb"]}}
    )
    assert spec.source.name == "vg0" and spec.target == "/dev/vg0"


def test_volume_xml_units_and_backing():
    xml = """<volume><name>v</name><capacity unit='G'>2</capacity>
      <allocation unit='KiB'>4</allocation><target><format type='qcow2'/></target>
      <backingStore><path>/p/base</path><format type='raw'/></backingStore></volume>"""
    spec = VolumeSpec.from_xml(xml)
    assert spec.capacity == 2 * 1024**3 and spec.allocation == 4096
    assert spec.backing.path == "/p/base" and spec.backing.format == "raw"
    assert VolumeSpec.from_xml(spec.to_xml()).capacity == spec.capacity


def test_checksum_parsing():
    assert Checksum.parse("SHA256:" + "A" * 64).digest == "a" * 64
    for bad in ("abc", "sha256:xyz", "nope:" + "0" * 64, "sha256:" + "0" * 10):
        with pytest.raises(KvmValidationError):
            Checksum.parse(bad)


def test_qcow2_header():
    header = b"QFI\xfb" + b"\0" * 20 + (5 * 1024**3).to_bytes(8, "big")
    assert qcow2_virtual_size(header) == 5 * 1024**3
    assert qcow2_virtual_size(b"\0" * 32) is None


# ------------------------------------------------------------------ modules on test:///default


def test_pool_module_on_test_driver(module_runner):
    args = {"uri": TEST, "name": "unit-pool", "type": "dir", "target": "/unit-pool"}
    check = module_runner(pool_module, args, check_mode=True, diff=True)
    assert check["changed"] and check["pool"] is None
    assert check["diff"]["after"]["state"] == "present"
    # test:///default state does not persist between connections: each run starts afresh,
    # so the second-run idempotence is covered by the integration tests on qemu:///system.
    applied = module_runner(pool_module, args)
    assert applied["changed"] and applied["pool"]["active"] and applied["pool"]["type"] == "dir"
    assert applied["pool"]["capacity"] > 0


def test_pool_module_on_existing_test_pool(module_runner):
    args = {"uri": TEST, "name": "default-pool", "type": "dir", "target": "/default-pool"}
    result = module_runner(pool_module, args, check_mode=True)
    assert result["changed"] is False and result["actions"] == []
    bad = module_runner(pool_module, {**args, "target": "/elsewhere"})
    assert bad["failed"] and "target of a pool cannot change" in bad["msg"]


def test_volume_module_on_test_driver(module_runner):
    args = {
        "uri": TEST,
        "pool": "default-pool",
        "name": "v.qcow2",
        "format": "qcow2",
        "capacity": "1MiB",
    }
    result = module_runner(volume_module, args)
    assert result["changed"] and result["volume"]["capacity"] == 1024**2
    again = module_runner(volume_module, {**args, "capacity": None})
    assert again["changed"] is False  # an existing volume needs no capacity
    missing = module_runner(volume_module, {**args, "name": "new.qcow2", "capacity": None})
    assert missing["failed"] and "capacity is required" in missing["msg"]
    both = module_runner(volume_module, {**args, "source_path": "/x"})
    assert both["failed"] and "capacity cannot be combined" in both["msg"]


def test_info_modules_on_test_driver(module_runner):
    pools = module_runner(pool_info, {"uri": TEST})["pools"]
    assert [p["name"] for p in pools] == ["default-pool"]
    assert pools[0]["capacity"] == 107374182400
    vols = module_runner(volume_info, {"uri": TEST, "pool": "default-pool"})
    assert vols["volumes"] == [] and vols["changed"] is False
