"""Check mode from nothing (issue 13, item 11), against the real local libvirtd.

A whole provisioning playbook (a NAT network, a dir pool, a qcow2 volume, a guest on both, a
snapshot of the guest) runs with ``--check`` on a host that has none of them: every task
predicts its change, with a warning where it needs an object an earlier task makes, and
nothing is created. Then apply, check, apply: the usual four runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import libvirt
import pytest

from devtools.libvirt_cleanup import remove_domain_named, remove_network, remove_pool
from tests.helpers import four_times, free_subnet

pytestmark = pytest.mark.integration

ASSUMED = "check mode assumes an earlier task creates it (the real run fails if it does not)."


@pytest.fixture
def names(libvirt_conn, name_prefix, tmp_path_factory):
    """Names of the network, pool, volume, guest and snapshot; all removed afterwards."""
    base = tmp_path_factory.mktemp(name_prefix)
    made = {
        "net": f"{name_prefix}-net",
        "subnet": free_subnet(libvirt_conn),
        "pool": f"{name_prefix}-pool",
        "pool_dir": base / "pool",
        "volume": "disk.qcow2",
        "guest": f"{name_prefix}-guest",
        "snapshot": "s1",
    }
    yield made
    remove_domain_named([libvirt_conn], made["guest"])  # with its snapshot metadata
    remove_pool(libvirt_conn, made["pool"])  # with its volumes
    remove_network(libvirt_conn, made["net"])
    shutil.rmtree(base, ignore_errors=True)


def guest_task(n: dict) -> dict:
    return {
        "name": "guest",
        "virtops.kvm.domain": {
            "name": n["guest"],
            "virt_type": "qemu",
            "memory": "64MiB",
            "state": "present",
            "disks": [{"pool": n["pool"], "volume": n["volume"]}],
            "interfaces": [{"network": n["net"]}],
        },
    }


def provisioning(n: dict) -> list[dict]:
    x = n["subnet"]
    return [
        {
            "name": "network",
            "virtops.kvm.network": {
                "name": n["net"],
                "state": "active",
                "mode": "nat",
                "addresses": [
                    {
                        "address": f"198.18.{x}.1/24",
                        "dhcp_ranges": [{"start": f"198.18.{x}.100", "end": f"198.18.{x}.150"}],
                    }
                ],
            },
        },
        {
            "name": "pool",
            "virtops.kvm.pool": {"name": n["pool"], "type": "dir", "target": str(n["pool_dir"])},
        },
        {
            "name": "volume",
            "virtops.kvm.volume": {
                "pool": n["pool"],
                "name": n["volume"],
                "format": "qcow2",
                "capacity": "64MiB",
            },
        },
        guest_task(n),
        {
            # kind and memory given: the prediction for a guest that is not there yet needs
            # no guess (the default memory follows the guest's run state)
            "name": "snapshot",
            "virtops.kvm.snapshot": {
                "domain": n["guest"],
                "name": n["snapshot"],
                "kind": "internal",
                "memory": False,
            },
        },
    ]


def lookup(func, name):
    try:
        return func(name)
    except libvirt.libvirtError:
        return None


def test_provisioning_playbook_check_mode_from_nothing(playbook, libvirt_conn, names):
    n = names
    tasks = provisioning(n)
    task_names = [t["name"] for t in tasks]
    conn = libvirt_conn

    def after_each(index: int, run) -> None:
        assert [r["task"] for r in run.results] == task_names, run.stdout
        changed = {r["task"]: r["result"]["changed"] for r in run.results}
        assert changed == dict.fromkeys(task_names, index < 2), (index, changed, run.stdout)
        if index == 0:
            # the check run from nothing made nothing at all
            assert lookup(conn.networkLookupByName, n["net"]) is None
            assert lookup(conn.storagePoolLookupByName, n["pool"]) is None
            assert lookup(conn.lookupByName, n["guest"]) is None
            assert not n["pool_dir"].exists()
            assert list(n["pool_dir"].parent.iterdir()) == []
            warnings = {r["task"]: r["result"].get("warnings", []) for r in run.results}
            assert warnings["network"] == [] and warnings["pool"] == [], warnings
            assert warnings["volume"] == [
                f"Storage pool '{n['pool']}' does not exist or is not running; check mode "
                "assumes an earlier task creates or starts it (the real run fails if it does "
                "not)."
            ]
            assert sorted(warnings["guest"]) == [
                f"Libvirt network '{n['net']}' does not exist yet; {ASSUMED}",
                f"Storage pool '{n['pool']}' does not exist yet; {ASSUMED}",
            ]
            assert warnings["snapshot"] == [f"Guest '{n['guest']}' does not exist yet; {ASSUMED}"]
        else:
            assert all(not r["result"].get("warnings") for r in run.results), run.stdout

    runs = four_times(playbook, tasks, after_each=after_each)

    # what check mode predicted is what the apply did
    predicted, applied = runs[0], runs[1]
    assert predicted.task("network")["diff"]["after"] == applied.task("network")["diff"]["after"]
    assert set(predicted.task("pool")["actions"]) <= set(applied.task("pool")["actions"])
    assert predicted.task("volume")["actions"] == applied.task("volume")["actions"] == ["create"]
    assert predicted.task("guest")["state"] == applied.task("guest")["state"] == "shutoff"
    shot_predicted = predicted.task("snapshot")["created"]
    shot_applied = applied.task("snapshot")["created"]
    assert shot_predicted["kind"] == shot_applied["kind"] == "internal"
    assert shot_predicted["memory"] is shot_applied["memory"] is False
    assert shot_applied["disks"] == {"vda": "internal"}

    # and everything is there after the apply
    net = conn.networkLookupByName(n["net"])
    assert net.isActive() and f"198.18.{n['subnet']}.1" in net.XMLDesc(0)
    pool = conn.storagePoolLookupByName(n["pool"])
    vol = pool.storageVolLookupByName(n["volume"])
    assert Path(vol.path()).parent == n["pool_dir"]
    assert "<format type='qcow2'/>" in vol.XMLDesc(0)
    dom = conn.lookupByName(n["guest"])
    xml = dom.XMLDesc(0)
    assert f"pool='{n['pool']}'" in xml and f"network='{n['net']}'" in xml
    assert "type='qcow2'" in xml
    assert [s.getName() for s in dom.listAllSnapshots(0)] == [n["snapshot"]]


def test_real_run_with_a_missing_pool_fails_before_any_change(playbook, libvirt_conn, names):
    n = names
    guest = guest_task(n)
    checked = playbook([guest], check=True)
    assert checked.rc == 0 and checked.task("guest")["changed"], checked.stdout
    real = playbook([guest])
    assert real.rc != 0
    assert f"Unknown storage pool '{n['pool']}'" in real.task("guest")["msg"]
    assert lookup(libvirt_conn.lookupByName, n["guest"]) is None
