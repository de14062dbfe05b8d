"""The role virtops.kvm.cluster on three lab hosts (real Corosync and Pacemaker, one cluster
for the session: the ``lab_cluster`` fixture), and the lab fence agent."""

from __future__ import annotations

import base64
import hashlib
import shutil
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from devtools.libvirt_cleanup import remove_domain_named
from tests.lab import cluster as lab_cluster_mod
from tests.lab import guests as lab_guests
from tests.lab.hosts import node_processes, path_on_host

# The first test pays for forming the cluster (and starting the lab hosts if no test did).
pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(900)]

CONF = Path("/etc/corosync/corosync.conf")
AUTHKEY = Path("/etc/corosync/authkey")


def on_node(node, path: Path) -> Path:
    return path_on_host(node.uri, path)


def task_name(entry: dict) -> str:
    """The task's own name (the results name it ``role : task``)."""
    return entry["task"].split(" : ", 1)[-1]


def changed_tasks(run) -> list[str]:
    return sorted({task_name(e) for e in run.results if e["result"].get("changed")})


def on_node_run(node, cmd: list[str]) -> str:
    return subprocess.run(
        node.nsenter(cmd), capture_output=True, text=True, check=True, timeout=60
    ).stdout


def cmap(node, key: str) -> str:
    return on_node_run(node, ["corosync-cmapctl", "-g", key]).rsplit("=", 1)[1].strip()


def test_role_forms_the_cluster(lab_cluster, record_property):
    record_property("form_seconds", round(lab_cluster.form_seconds, 1))
    run = lab_cluster.formed
    assert run.rc == 0
    assert {"Start Corosync", "Start Pacemaker", "Write corosync.conf"} <= set(changed_tasks(run))
    for node in lab_cluster.nodes:
        now = lab_cluster_mod.status(node)
        assert now.online == lab_cluster.names
        assert now.offline == []
        assert now.quorate
        assert now.dc in lab_cluster.names
    # Corosync's own word: three members, quorate, encrypted knet
    first = lab_cluster.nodes[0]
    assert cmap(first, "runtime.votequorum.this_node_id") == "1"
    assert cmap(first, "totem.crypto_cipher") == "aes256"
    assert cmap(first, "totem.transport") == "knet"
    quorum = on_node_run(first, ["corosync-quorumtool", "-s"])
    assert "Quorate:          Yes" in quorum
    assert "Total votes:      3" in quorum


def test_authkey_is_one_secret_shared_by_all_nodes(lab_cluster):
    keys = [on_node(node, AUTHKEY) for node in lab_cluster.nodes]
    contents = {path.read_bytes() for path in keys}
    assert len(contents) == 1
    key = contents.pop()
    assert len(key) >= 128
    for path in keys:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o400
        assert st.st_uid == 0
    # never in the output: neither raw, nor base64, nor its digest
    shown = lab_cluster.formed.stdout + lab_cluster.formed.stderr
    assert base64.b64encode(key).decode()[:40] not in shown
    assert base64.b64encode(key).decode()[:40] not in str(lab_cluster.formed.results)
    assert hashlib.sha256(key).hexdigest() not in shown


def test_corosync_conf_lists_the_nodes(lab_cluster):
    text = on_node(lab_cluster.nodes[0], CONF).read_text()
    for node in lab_cluster.nodes:
        assert f"name: {node.name}\n" in text
        assert f"ring0_addr: {node.address}\n" in text
    assert "crypto_cipher: aes256" in text
    assert "crypto_hash: sha256" in text
    assert "two_node" not in text  # three nodes
    assert "token: 3000" in text


def test_second_run_changes_nothing(lab_cluster):
    keys = {n.name: on_node(n, AUTHKEY).read_bytes() for n in lab_cluster.nodes}
    run = lab_cluster.run_role()
    assert run.rc == 0, run.stdout[-3000:]
    assert changed_tasks(run) == []
    assert {n.name: on_node(n, AUTHKEY).read_bytes() for n in lab_cluster.nodes} == keys


def test_check_mode_predicts_and_writes_nothing(lab_cluster):
    before = {n.name: on_node(n, CONF).read_text() for n in lab_cluster.nodes}
    token = cmap(lab_cluster.nodes[0], "runtime.config.totem.token")
    run = lab_cluster.run_role({"cluster_token_ms": 5000}, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert changed_tasks(run) == ["Write corosync.conf"]
    reported = [e["host"] for e in run.results if task_name(e) == "Write corosync.conf"]
    assert sorted(reported) == lab_cluster.names
    assert {n.name: on_node(n, CONF).read_text() for n in lab_cluster.nodes} == before
    assert cmap(lab_cluster.nodes[0], "runtime.config.totem.token") == token


def test_changed_token_reaches_the_running_cluster(lab_cluster):
    """A new corosync.conf is reloaded (corosync-cfgtool -R) without a restart; then back."""
    pids = {n.name: node_processes(n, ("corosync",)) for n in lab_cluster.nodes}
    try:
        run = lab_cluster.run_role({"cluster_token_ms": 4000})
        assert run.rc == 0, run.stdout[-3000:]
        assert "Reload Corosync" in changed_tasks(run)
        # token + token_coefficient (650 ms) for each node beyond two
        assert cmap(lab_cluster.nodes[1], "runtime.config.totem.token") == "4650"
        assert {n.name: node_processes(n, ("corosync",)) for n in lab_cluster.nodes} == pids
    finally:
        run = lab_cluster.run_role()
    assert run.rc == 0
    assert cmap(lab_cluster.nodes[1], "runtime.config.totem.token") == "3650"
    lab_cluster_mod.wait_online(lab_cluster.nodes[0], lab_cluster.names, timeout=60)


def test_bad_input_fails_before_any_change(lab_cluster):
    before = {n.name: on_node(n, CONF).read_text() for n in lab_cluster.nodes}
    second, third = lab_cluster.names[1], lab_cluster.names[2]
    run = lab_cluster.run_role(
        {"cluster_name": "no spaces allowed", "cluster_token_ms": 4000},
        hostvars={
            second: {"cluster_address": lab_cluster.nodes[0].address},
            third: {"cluster_address": "198.18.0.300"},
        },
    )
    assert run.rc != 0
    failed = [e for e in run.results if e["status"] == "failed"]
    assert {task_name(e) for e in failed} == {"Check the cluster's input"}
    msg = failed[0]["result"]["msg"]
    assert "cluster_name no spaces allowed is not" in msg
    assert f"address {lab_cluster.nodes[0].address} is used by more than one node" in msg
    assert f"{third}: address 198.18.0.300 is not an IP address" in msg
    assert changed_tasks(run) == []
    assert {n.name: on_node(n, CONF).read_text() for n in lab_cluster.nodes} == before


def test_a_node_outside_the_play_is_refused(lab_cluster):
    run = lab_cluster.run_role(limit=lab_cluster.names[0])
    assert run.rc != 0
    failed = [e for e in run.results if e["status"] == "failed"]
    assert {task_name(e) for e in failed} == {"Check the cluster's input"}
    assert "every node of the group must be in the play; missing: " in failed[0]["result"]["msg"]
    assert changed_tasks(run) == []


def test_locking_is_on_every_node(lab_cluster):
    for node in lab_cluster.nodes:
        qemu_conf = on_node(node, Path("/etc/libvirt/qemu.conf")).read_text()
        assert 'lock_manager = "lockd"\n' in qemu_conf
        lockd = on_node(node, Path("/etc/libvirt/qemu-lockd.conf")).read_text()
        assert f'file_lockspace_dir = "{lab_cluster_mod.lockspace_dir()}"' in lockd
        assert "auto_disk_leases = 1" in lockd
        assert len(node_processes(node, ("virtlockd",))) == 1


def test_a_disk_in_use_on_one_node_cannot_start_on_another(lab_cluster, tiny_image):
    """Split brain refused by the lock manager (issue 16, step 5): a guest on another node
    with the running guest's disk does not start; once the first is gone, it does.

    The nodes share one kernel, so QEMU's own image locks would refuse a second QEMU on the
    same file before virtlockd is asked (libvirt takes the leases when the CPUs start). To
    prove the leases alone, each node has its own file at the same path (its private
    /var/lib/libvirt/images), as hosts see one SAN disk that no kernel lock spans; the leases
    in the shared lockspace are named by the path.
    """
    import libvirt  # noqa: PLC0415

    disk = Path(f"/var/lib/libvirt/images/{lab_guests.unique_name()}.qcow2")
    lease = lab_cluster_mod.lockspace_dir() / hashlib.sha256(str(disk).encode()).hexdigest()
    nodes = lab_cluster.nodes[:2]
    conns = [node.connect() for node in nodes]
    names = [lab_guests.unique_name() for _node in nodes]
    dirs = []
    try:
        doms = []
        for node, conn, name in zip(nodes, conns, names):
            on_host = on_node(node, disk)
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(on_host), "32M"], check=True
            )
            files = replace(
                lab_guests.prepare_tiny_files(name, tiny_image, marker=False), marker_disk=disk
            )
            dirs.append(files.dir)
            doms.append(conn.defineXML(lab_guests.tiny_domain_xml(name, tiny_image, files)))
        first, twin = doms
        first.create()
        assert lease.is_file()
        with pytest.raises(libvirt.libvirtError, match=r"resource busy|Failed to acquire lock"):
            twin.create()
        assert not twin.isActive()
        assert first.isActive()
        first.destroy()  # its lease goes with it
        twin.create()
        assert twin.isActive()
    finally:
        for conn, name in zip(conns, names):
            remove_domain_named([conn], name)
            conn.close()
        for node in nodes:
            on_node(node, disk).unlink(missing_ok=True)
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)


def test_pacemaker_knows_the_lab_fence_agent(lab_cluster):
    node = lab_cluster.nodes[0]
    agents = on_node_run(node, ["stonith_admin", "--list-installed"]).split()
    assert "fence_virtopslab" in agents
    meta = on_node_run(node, ["stonith_admin", "--metadata", "--agent", "fence_virtopslab"])
    root = etree.fromstring(meta.encode())
    assert {a.get("name") for a in root.iterfind("actions/action")} >= {"off", "reboot", "status"}
    listed = lab_cluster_mod.fence("list")
    assert listed.returncode == 0
    assert [line.split(",")[0] for line in listed.stdout.split()] == lab_cluster.names


def test_pacemaker_fences_a_node_with_the_lab_agent_and_the_lab_brings_it_back(
    lab_cluster, record_property
):
    """Pacemaker's fencer runs the agent (a device registered with the fencer of one node,
    not in the CIB): the victim loses every process; the lab boots it again and it rejoins."""
    victim, survivor = lab_cluster.nodes[2], lab_cluster.nodes[0]
    assert lab_cluster_mod.fence("status", victim.name).returncode == 0
    assert node_processes(victim, ("corosync",))
    register = ["stonith_admin", "--register", "lab-fence", "--agent", "fence_virtopslab"]
    register += ["--option", f"pcmk_host_list={' '.join(lab_cluster.names)}"]
    register += ["--option", "pcmk_host_check=static-list"]
    on_node_run(survivor, register)
    try:
        started = time.monotonic()
        on_node_run(survivor, ["stonith_admin", "--fence", victim.name, "--timeout", "60"])
        record_property("fence_seconds", round(time.monotonic() - started, 2))
        assert node_processes(victim) == []
        history = on_node_run(survivor, ["stonith_admin", "--history", victim.name])
        assert "successful" in history, history
        assert lab_cluster_mod.fence("status", victim.name).returncode == 2
        on = lab_cluster_mod.fence("on", victim.name)
        assert on.returncode == 1
        assert "cannot power a node on" in on.stderr
        # two of three: still quorate, the victim offline
        seen = lab_cluster_mod.wait_online(survivor, lab_cluster.names[:2], timeout=60)
        assert seen.offline == [victim.name]
        assert lab_cluster_mod.fence("status", survivor.name).returncode == 0
    finally:
        subprocess.run(
            survivor.nsenter(["stonith_admin", "--deregister", "lab-fence"]),
            capture_output=True,
            check=False,
            timeout=60,
        )
        if not node_processes(victim):
            lab_cluster_mod.restart_node(victim)
    for node in lab_cluster.nodes:
        lab_cluster_mod.wait_online(node, lab_cluster.names, timeout=120)
    assert lab_cluster_mod.fence("status", victim.name).returncode == 0
