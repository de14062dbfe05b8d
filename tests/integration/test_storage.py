"""Storage pools and volumes against the real local libvirtd (qemu:///system)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_secret import (
    SecretSpec,
    apply_secret,
    find_secret,
    plan_secret,
)
from ansible_collections.virtops.kvm.plugins.module_utils._storage import (
    PoolSpec,
    pool_spec_from_params,
)
from devtools.libvirt_cleanup import remove_pool
from tests.helpers import four_times, http_gets, make_qcow2, validate_xml

pytestmark = pytest.mark.integration

# ------------------------------------------------------------------ pools


def test_dir_pool_lifecycle(playbook, conn, pool_dir):
    name, target = pool_dir
    task = {
        "name": "pool",
        "virtops.kvm.pool": {"name": name, "type": "dir", "target": target, "autostart": True},
    }
    runs = four_times(playbook, [task])
    assert runs[0].task("pool")["pool"] is None  # check mode created nothing
    created = runs[1].task("pool")
    assert created["actions"] == ["define", "build", "start"]
    assert created["diff"]["before"]["state"] == "absent"
    assert created["diff"]["after"]["state"] == "present"
    pool = conn.storagePoolLookupByName(name)
    assert pool.isActive() and pool.autostart() and os.path.isdir(target)
    view = runs[3].task("pool")["pool"]
    assert view["capacity"] > 0 and view["available"] > 0
    assert view["capacity"] >= view["allocation"]

    # autostart off, then stop: each a change with the four-run pattern
    four_times(
        playbook, [{**task, "virtops.kvm.pool": {**task["virtops.kvm.pool"], "autostart": False}}]
    )
    assert not pool.autostart()
    stop = {**task["virtops.kvm.pool"], "active": False}
    four_times(playbook, [{"name": "pool", "virtops.kvm.pool": stop}])
    assert not pool.isActive()

    # what cannot change is an error with a clear message, and nothing changes
    moved = playbook([{"name": "pool", "virtops.kvm.pool": {**stop, "target": target + "-other"}}])
    assert moved.rc != 0
    assert "the target of a pool cannot change" in moved.task("pool")["msg"]
    retyped = playbook(
        [
            {
                "name": "pool",
                "virtops.kvm.pool": {
                    **stop,
                    "type": "netfs",
                    "source": {"hosts": ["198.18.0.9"], "dir": "/x"},
                },
            }
        ]
    )
    assert "the type of a pool cannot change" in retyped.task("pool")["msg"]

    # absent with delete_storage: the inactive pool is started, emptied and its dir removed
    conn.storagePoolLookupByName(name)  # still there
    absent = {
        "name": "pool",
        "virtops.kvm.pool": {"name": name, "state": "absent", "delete_storage": True},
    }
    runs = four_times(playbook, [absent])
    assert "delete storage" in runs[1].task("pool")["actions"]
    assert not os.path.exists(target)
    with pytest.raises(libvirt.libvirtError):
        conn.storagePoolLookupByName(name)


def test_pool_info_and_refresh(playbook, dir_pool):
    name = dir_pool.name()
    target = dir_pool.XMLDesc(0).split("<path>")[1].split("</path>")[0]
    Path(target, "outside.raw").write_bytes(b"\0" * 4096)  # made behind libvirt's back
    stale = playbook([{"name": "i", "virtops.kvm.pool_info": {"name": name}}])
    assert stale.task("i")["pools"][0]["volume_count"] == 0
    fresh = playbook([{"name": "i", "virtops.kvm.pool_info": {"name": name, "refresh": True}}])
    info = fresh.task("i")["pools"][0]
    assert info["volume_count"] == 1
    assert info["type"] == "dir" and info["state"] == "running" and info["available"] > 0
    assert fresh.task("i")["changed"] is False
    vols = playbook([{"name": "v", "virtops.kvm.volume_info": {"pool": name}}]).task("v")
    assert [v["name"] for v in vols["volumes"]] == ["outside.raw"]
    assert vols["volumes"][0]["capacity"] == 4096
    missing = playbook([{"name": "i", "virtops.kvm.pool_info": {"name": name + "-none"}}])
    assert missing.task("i")["pools"] == []


# ------------------------------------------------------------------ volumes


def test_done_playbook_pool_base_overlay_idempotent(playbook, conn, pool_dir):
    """The issue's acceptance: pool + base image + overlay; the second run reports changed=0."""
    name, target = pool_dir
    tasks = [
        {"name": "pool", "virtops.kvm.pool": {"name": name, "type": "dir", "target": target}},
        {
            "name": "base",
            "virtops.kvm.volume": {
                "pool": name,
                "name": "base.qcow2",
                "format": "qcow2",
                "capacity": "64MiB",
            },
        },
        {
            "name": "overlay",
            "virtops.kvm.volume": {
                "pool": name,
                "name": "guest.qcow2",
                "backing": {"volume": "base.qcow2"},
                "capacity": "128MiB",
            },
        },
    ]
    runs = four_times(playbook, tasks)
    first = runs[1]
    assert all(r["result"]["changed"] for r in first.results)
    again = runs[3]
    assert not any(r["result"]["changed"] for r in again.results)
    overlay = again.task("overlay")["volume"]
    assert overlay["format"] == "qcow2" and overlay["capacity"] == 128 * 1024**2
    assert overlay["backing_store"] == {"path": f"{target}/base.qcow2", "format": "qcow2"}
    out = subprocess.run(
        ["qemu-img", "info", "-U", f"{target}/guest.qcow2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"backing file: {target}/base.qcow2" in out

    # the base cannot go while the overlay needs it
    gone = playbook(
        [
            {
                "name": "rm",
                "virtops.kvm.volume": {"pool": name, "name": "base.qcow2", "state": "absent"},
            }
        ]
    )
    assert gone.rc != 0 and "volume guest.qcow2 backs onto it" in gone.task("rm")["msg"]
    assert gone.task("rm")["users"] == [
        {
            "guest": None,
            "disk": None,
            "how": "backing of volume guest.qcow2",
            "running": False,
            "volume": None,
        }
    ]


def test_grow_and_refuse_shrink(playbook, conn, dir_pool):
    name = dir_pool.name()
    vol = {"pool": name, "name": "data.raw", "format": "raw", "capacity": "8MiB"}
    four_times(playbook, [{"name": "v", "virtops.kvm.volume": vol}])
    runs = four_times(playbook, [{"name": "v", "virtops.kvm.volume": {**vol, "capacity": "16M"}}])
    assert runs[1].task("v")["actions"] == ["grow"]
    assert runs[1].task("v")["diff"]["before"]["capacity"] == 8 * 1024**2
    assert dir_pool.storageVolLookupByName("data.raw").info()[1] == 16 * 1024**2

    shrink = playbook([{"name": "v", "virtops.kvm.volume": {**vol, "capacity": "4MiB"}}])
    assert shrink.rc != 0
    msg = shrink.task("v")["msg"]
    assert "Refusing to shrink" in msg and "allow_shrink=true" in msg
    assert dir_pool.storageVolLookupByName("data.raw").info()[1] == 16 * 1024**2  # untouched

    runs = four_times(
        playbook,
        [{"name": "v", "virtops.kvm.volume": {**vol, "capacity": "4MiB", "allow_shrink": True}}],
    )
    assert runs[1].task("v")["actions"] == ["shrink"]
    assert dir_pool.storageVolLookupByName("data.raw").info()[1] == 4 * 1024**2


def test_preallocation_and_delete_with_wipe(playbook, dir_pool):
    name = dir_pool.name()
    vol = {
        "pool": name,
        "name": "full.raw",
        "format": "raw",
        "capacity": "4MiB",
        "preallocation": "falloc",
    }
    four_times(playbook, [{"name": "v", "virtops.kvm.volume": vol}])
    dir_pool.refresh(0)
    assert dir_pool.storageVolLookupByName("full.raw").info()[2] >= 4 * 1024**2
    meta = {
        "pool": name,
        "name": "meta.qcow2",
        "format": "qcow2",
        "capacity": "4MiB",
        "preallocation": "metadata",
    }
    four_times(playbook, [{"name": "v", "virtops.kvm.volume": meta}])
    bad = playbook(
        [{"name": "v", "virtops.kvm.volume": {**meta, "name": "x.raw", "format": "raw"}}]
    )
    assert "preallocation=metadata needs format=qcow2" in bad.task("v")["msg"]
    runs = four_times(
        playbook,
        [
            {
                "name": "v",
                "virtops.kvm.volume": {
                    "pool": name,
                    "name": "full.raw",
                    "state": "absent",
                    "wipe": True,
                },
            }
        ],
    )
    assert runs[1].task("v")["actions"] == ["wipe", "delete"]


def test_space_guard(playbook, dir_pool):
    name = dir_pool.name()
    available = dir_pool.info()[3]
    huge = available + 1024**4  # 1 TiB more than the pool has
    sparse = {"pool": name, "name": "huge.qcow2", "format": "qcow2", "capacity": huge}
    refused = playbook([{"name": "v", "virtops.kvm.volume": sparse}])
    assert refused.rc != 0
    msg = refused.task("v")["msg"]
    assert "does not fit" in msg and "allow_overcommit=true" in msg
    assert refused.task("v")["needed"] == huge
    assert dir_pool.numOfVolumes() == 0

    prealloc = {
        **sparse,
        "name": "huge.raw",
        "format": "raw",
        "preallocation": "falloc",
        "allow_overcommit": True,
    }
    refused = playbook([{"name": "v", "virtops.kvm.volume": prealloc}])
    assert "allow_overcommit does not apply" in refused.task("v")["msg"]
    assert dir_pool.numOfVolumes() == 0

    runs = four_times(
        playbook, [{"name": "v", "virtops.kvm.volume": {**sparse, "allow_overcommit": True}}]
    )
    assert runs[1].task("v")["volume"]["capacity"] == huge
    assert any("overcommits" in w for w in runs[1].task("v").get("warnings", []))


def test_clone(playbook, dir_pool):
    name = dir_pool.name()
    four_times(
        playbook,
        [
            {
                "name": "v",
                "virtops.kvm.volume": {
                    "pool": name,
                    "name": "src.qcow2",
                    "format": "qcow2",
                    "capacity": "8MiB",
                },
            }
        ],
    )
    runs = four_times(
        playbook,
        [
            {
                "name": "v",
                "virtops.kvm.volume": {
                    "pool": name,
                    "name": "copy.qcow2",
                    "clone_from": {"volume": "src.qcow2"},
                },
            }
        ],
    )
    assert runs[1].task("v")["volume"]["capacity"] == 8 * 1024**2
    assert runs[1].task("v")["volume"]["format"] == "qcow2"


# ------------------------------------------------------------------ imports


def test_import_url_once_with_checksum(playbook, dir_pool, http_server):
    root, url, log = http_server
    name = dir_pool.name()
    checksum = make_qcow2(root / "base.qcow2")
    task = {
        "name": "imp",
        "virtops.kvm.volume": {
            "pool": name,
            "name": "base.qcow2",
            "format": "qcow2",
            "source_url": f"{url}/base.qcow2",
            "checksum": checksum,
        },
    }
    runs = four_times(playbook, [task])
    assert http_gets(log, "base.qcow2") == 1  # downloaded once, by the one apply that imported
    imported = runs[1].task("imp")["volume"]
    assert imported["format"] == "qcow2" and imported["capacity"] == 32 * 1024**2
    assert imported["checksum"] == checksum
    assert runs[3].task("imp")["checksum_verified"] is True

    # an overlay on the imported base
    four_times(
        playbook,
        [
            {
                "name": "ov",
                "virtops.kvm.volume": {
                    "pool": name,
                    "name": "vm.qcow2",
                    "backing": {"volume": "base.qcow2"},
                },
            }
        ],
    )

    # the existing volume differs from a new checksum: refused, nothing downloaded
    other = make_qcow2(root / "other.qcow2", "16M")
    changed = playbook(
        [
            {
                "name": "imp",
                "virtops.kvm.volume": {
                    **task["virtops.kvm.volume"],
                    "source_url": f"{url}/other.qcow2",
                    "checksum": other,
                },
            }
        ]
    )
    assert changed.rc != 0 and "force=true" in changed.task("imp")["msg"]
    assert http_gets(log, "other.qcow2") == 0


def test_import_bad_checksum_leaves_nothing(playbook, dir_pool, http_server, tmp_path):
    root, url, _log = http_server
    name = dir_pool.name()
    make_qcow2(root / "img.qcow2")
    wrong = "sha256:" + "0" * 64
    run = playbook(
        [
            {
                "name": "imp",
                "virtops.kvm.volume": {
                    "pool": name,
                    "name": "img.qcow2",
                    "source_url": f"{url}/img.qcow2",
                    "checksum": wrong,
                },
            }
        ]
    )
    assert run.rc != 0
    assert "Checksum mismatch" in run.task("imp")["msg"]
    dir_pool.refresh(0)
    assert dir_pool.listAllVolumes(0) == []
    assert not list(tmp_path.glob("**/virtops-volume-*"))  # temp download removed

    # a local file with a wrong checksum fails before anything happens, in check mode too
    local = tmp_path / "local.qcow2"
    make_qcow2(local)
    for check in (True, False):
        run = playbook(
            [
                {
                    "name": "imp",
                    "virtops.kvm.volume": {
                        "pool": name,
                        "name": "l.qcow2",
                        "source_path": str(local),
                        "checksum": wrong,
                    },
                }
            ],
            check=check,
        )
        assert "Checksum mismatch" in run.task("imp")["msg"]
    assert dir_pool.listAllVolumes(0) == []

    # declared format differs from the content: the upload is removed again
    run = playbook(
        [
            {
                "name": "imp",
                "virtops.kvm.volume": {
                    "pool": name,
                    "name": "l.raw",
                    "source_path": str(local),
                    "format": "raw",
                },
            }
        ]
    )
    assert run.rc != 0 and "The imported image is qcow2" in run.task("imp")["msg"]
    dir_pool.refresh(0)
    assert dir_pool.listAllVolumes(0) == []


def test_import_local_file(playbook, dir_pool, tmp_path):
    local = tmp_path / "disk.raw"
    local.write_bytes(os.urandom(1024 * 1024))
    checksum = "sha256:" + hashlib.sha256(local.read_bytes()).hexdigest()
    runs = four_times(
        playbook,
        [
            {
                "name": "imp",
                "virtops.kvm.volume": {
                    "pool": dir_pool.name(),
                    "name": "disk.raw",
                    "source_path": str(local),
                    "checksum": checksum,
                },
            }
        ],
    )
    vol = runs[1].task("imp")["volume"]
    assert vol["format"] == "raw" and vol["capacity"] == 1024 * 1024
    assert Path(vol["path"]).read_bytes() == local.read_bytes()


# ------------------------------------------------------------------ pool types needing devices


@pytest.mark.parametrize(
    "params",
    [
        {"type": "dir", "target": "/srv/pool"},
        {"type": "fs", "target": "/srv/fs", "source": {"devices": ["/dev/vdb"], "format": "ext4"}},
        {
            "type": "netfs",
            "target": "/srv/nfs",
            "source": {"hosts": ["198.18.0.5"], "dir": "/export/vms", "protocol_version": "4"},
        },
        {"type": "logical", "source": {"devices": ["/dev/vdc", "/dev/vdd"], "format": "lvm2"}},
        {
            "type": "rbd",
            "source": {
                "name": "rbdpool",
                "hosts": ["198.18.0.5", "198.18.0.6:6789"],
                "auth": {"username": "libvirt"},
            },
        },
    ],
    ids=lambda p: p["type"],
)
def test_pool_xml_is_valid_for_libvirt_schema(params, tmp_path):
    spec = pool_spec_from_params({"name": "p1", **params})
    xml = spec.to_xml()
    validate_xml(xml, "storagepool", tmp_path)
    assert PoolSpec.from_xml(xml) == spec
    if params["type"] == "rbd":
        ceph = SecretSpec(usage_type="ceph", usage_id="client.libvirt secret")
        validate_xml(ceph.to_xml(), "secret", tmp_path)


def test_rbd_pool_secret_made_and_rolled_back(playbook, conn, name_prefix):
    """No Ceph cluster here: the secret is created through the module, and removed again
    when the pool fails (to start, with libvirt's RBD backend, which setup.sh installs; to be
    defined, without it); nothing is left behind."""
    usage = f"{name_prefix} ceph key"
    key = "QVFCRUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE9PQ=="
    task = {
        "name": "rbd",
        "virtops.kvm.pool": {
            "name": f"{name_prefix}-rbd",
            "type": "rbd",
            "source": {
                "name": "vms",
                "hosts": ["198.18.0.5"],
                "auth": {"username": "libvirt", "secret_usage": usage, "secret_value": key},
            },
        },
    }
    check = playbook([task], check=True, diff=True)
    assert check.task("rbd")["changed"] is True
    assert check.task("rbd")["diff"]["after"]["secret"]["usage"] == usage
    run = playbook([task])
    try:
        result = run.task("rbd")
        has_backend = os.path.exists(
            "/usr/lib/x86_64-linux-gnu/libvirt/storage-backend/libvirt_storage_backend_rbd.so"
        )
        if has_backend:  # defining works; starting needs a cluster at 198.18.0.5
            assert run.rc != 0
        else:
            assert run.rc != 0 and "missing backend for pool type 9 (rbd)" in result["msg"]
        with pytest.raises(libvirt.libvirtError):
            conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, usage)
        with pytest.raises(libvirt.libvirtError):
            conn.storagePoolLookupByName(f"{name_prefix}-rbd")
    finally:
        try:
            conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, usage).undefine()
        except libvirt.libvirtError:
            pass
        remove_pool(conn, f"{name_prefix}-rbd")

    # the secret part on its own, through the shared secret code the pool uses
    wanted = SecretSpec(usage_type="ceph", usage_id=usage)
    plan = plan_secret(conn, wanted, b"key", "compare")
    assert plan.define and plan.set_value and plan.before is None
    secret = apply_secret(conn, plan)
    try:
        found = find_secret(conn, wanted)
        assert found.UUIDString() == secret.UUIDString()
        assert "private='yes'" in secret.XMLDesc(0)
    finally:
        secret.undefine()
