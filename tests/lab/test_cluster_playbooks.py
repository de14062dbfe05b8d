"""The playbooks virtops.kvm.cluster and virtops.kvm.ha on the lab cluster (``lab_cluster``):
the cluster playbook finds the formed cluster as it is, and the ha playbook makes a tiny guest
highly available where it runs, changes nothing the second time, and takes it out again,
leaving it running."""

from __future__ import annotations

import pytest

from tests.lab import cluster as lab_cluster_mod

pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(900)]


def test_cluster_playbook_finds_the_formed_cluster_unchanged(lab_cluster):
    run = lab_cluster.run_playbook("virtops.kvm.cluster")
    assert run.rc == 0, run.stdout[-3000:]
    changed = [e["task"] for e in run.results if e["result"].get("changed")]
    assert changed == [], changed


def test_ha_playbook_makes_guests_ha_and_takes_them_out(lab_cluster, tiny_guest):
    node = lab_cluster.nodes[1]
    guest = tiny_guest(conn=node.connect())
    dom_id = guest.dom.ID()
    entry = {
        "name": guest.name,
        "node": node.name,
        "config": str(guest.files.dir / "domain.xml"),
        "write_config": True,
        "allow_migrate": True,
        "migration_transport": "tcp",
        "utilization": {"memory": 192, "vcpus": 1},
    }
    bad = lab_cluster.run_playbook(
        "virtops.kvm.ha", extra_vars={"ha_guests": [{**entry, "prefered_nodes": []}]}
    )
    assert bad.rc != 0 and "Unknown keys: prefered_nodes" in bad.stdout

    with lab_cluster_mod.stonith_device(lab_cluster):
        try:
            made = lab_cluster.run_playbook("virtops.kvm.ha", extra_vars={"ha_guests": [entry]})
            assert made.rc == 0, made.stdout[-3000:]
            [result] = made.task("Apply the HA settings of each guest")["results"]
            assert result["changed"] is True and result["nodes"] == [node.name]
            assert guest.dom.ID() == dom_id  # found running where it was, not restarted

            again = lab_cluster.run_playbook("virtops.kvm.ha", extra_vars={"ha_guests": [entry]})
            assert again.rc == 0, again.stdout[-3000:]
            assert again.task("Apply the HA settings of each guest")["changed"] is False
        finally:
            out = {"name": guest.name, "node": node.name, "state": "absent"}
            removed = lab_cluster.run_playbook("virtops.kvm.ha", extra_vars={"ha_guests": [out]})
        assert removed.rc == 0, removed.stdout[-3000:]
        assert removed.task("Apply the HA settings of each guest")["changed"] is True
    assert guest.dom.isActive() and guest.dom.isPersistent() and guest.dom.ID() == dom_id
    guest.wait_heartbeat(guest.last_heartbeat() + 1, timeout=60)
