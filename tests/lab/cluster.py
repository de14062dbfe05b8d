"""A Corosync and Pacemaker cluster of lab hosts (tests/lab/hosts.py).

- ``form(lab, workdir)`` runs the role virtops.kvm.cluster on the lab's hosts (inventory group
  ``cluster``, reached through the ``virtops_lab_nsenter`` connection) and waits until every
  node is online; it returns a ``LabCluster`` whose ``run_role`` runs the role again.
  ``formed(lab, workdir)`` does that as the lab does it (fixture ``lab_cluster``, the
  ``cluster`` benchmark series): fence agent installed, no stonith device yet, removed after.
- ``install_fence_agent()`` puts the lab fence agent (``tests/lab/fence_virtopslab.py``) in
  place as ``/usr/sbin/fence_virtopslab`` where Pacemaker finds it; ``fence(action, plug)``
  calls it as Pacemaker would.
- ``restart_node(host)`` brings a node back after a power loss: new /run and /dev/shm, its
  virtlogd, libvirtd, Corosync and Pacemaker started again (it rejoins the cluster).
- ``status(host)``: Pacemaker's view from a node (``crm_mon`` XML, read with lxml).
- ``stonith_device(cluster)``: the lab fence agent as the cluster's stonith device (a
  ``stonith:fence_virtopslab`` primitive made with cibadmin, removed when the block ends).
- ``ha_guest_args(guest)``: virtops.kvm.cluster_guest's arguments making a lab tiny guest
  highly available; ``standby(node, state)`` and ``settle(node)`` for moving it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from lxml import etree

from tests.helpers import ROOT, VENV_BIN, PlaybookRun, checkout_env, run_playbook, wait_for

from . import hosts as lab_hosts
from .images import lab_dir

FENCE_AGENT = Path("/usr/sbin/fence_virtopslab")
AGENT_SOURCE = Path(__file__).resolve().with_name("fence_virtopslab.py")
AGENT_MARK = "# virtops lab fence agent (tests/lab/cluster.py)"
GROUP = "cluster"
ROLE = "virtops.kvm.cluster"
# how the role starts pacemakerd without systemd (roles/cluster/tasks/daemons/direct.yml)
START_PACEMAKER = "setsid pacemakerd </dev/null >/dev/null 2>&1 & echo $! > /run/pacemakerd.pid"
FORM_TIMEOUT = 240
STONITH_ID = "virtops-lab-fence"


def lockspace_dir() -> Path:
    """The nodes' shared lockspace for libvirt's disk leases (cluster_lockspace_dir)."""
    return lab_dir() / "cluster-lockspace"


# ----------------------------------------------------------------------------------------
# the fence agent


def install_fence_agent() -> Path:
    """``/usr/sbin/fence_virtopslab``: runs the agent with this lab's state file."""
    state = lab_hosts.hosts_dir() / "state.json"
    text = (
        f"#!/bin/sh\n{AGENT_MARK}\n"
        f'VIRTOPS_LAB_STATE={state} exec /usr/bin/python3 {AGENT_SOURCE} "$@"\n'
    )
    tmp = FENCE_AGENT.with_name(f".{FENCE_AGENT.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(FENCE_AGENT)
    return FENCE_AGENT


def remove_fence_agent() -> None:
    """Remove the agent if it is the lab's."""
    if FENCE_AGENT.exists() and AGENT_MARK in FENCE_AGENT.read_text():
        FENCE_AGENT.unlink()


def fence(action: str, plug: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Call the installed agent as Pacemaker's fencer does (arguments on stdin)."""
    stdin = f"action={action}\n" + (f"plug={plug}\n" if plug else "")
    return subprocess.run(
        [str(FENCE_AGENT)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ----------------------------------------------------------------------------------------
# Pacemaker's view


@dataclass
class Status:
    online: list[str]
    offline: list[str]
    quorate: bool
    dc: str | None


def status(host: lab_hosts.LabHost, timeout: float = 30) -> Status:
    """``crm_mon`` on ``host``; raises RuntimeError when Pacemaker does not answer there."""
    proc = subprocess.run(
        host.nsenter(["crm_mon", "--one-shot", "--output-as=xml"]),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{host.name}: crm_mon failed ({proc.returncode}): {proc.stderr!r}")
    root = etree.fromstring(proc.stdout)
    nodes = root.findall("nodes/node")
    dc = root.find("summary/current_dc")
    present = dc is not None and dc.get("present") == "true"
    return Status(
        online=sorted(n.get("name") for n in nodes if n.get("online") == "true"),
        offline=sorted(n.get("name") for n in nodes if n.get("online") != "true"),
        quorate=present and dc.get("with_quorum") == "true",
        dc=dc.get("name") if present else None,
    )


def wait_online(
    host: lab_hosts.LabHost, names: list[str], timeout: float = FORM_TIMEOUT, quorate: bool = True
) -> Status:
    """Wait until ``host`` sees exactly ``names`` online (and the partition quorate)."""
    last: list[Status | str] = []

    def settled() -> Status | None:
        try:
            now = status(host)
        except (RuntimeError, subprocess.TimeoutExpired, etree.XMLSyntaxError) as exc:
            last[:] = [str(exc)]
            return None
        last[:] = [now]
        return now if now.online == sorted(names) and now.quorate == quorate else None

    return wait_for(
        settled,
        timeout,
        f"{host.name}: nodes {sorted(names)} online",
        interval=1,
        error=RuntimeError,
        detail=lambda: f" (last: {last[0] if last else 'nothing'})",
    )


# ----------------------------------------------------------------------------------------
# the role


@dataclass
class LabCluster:
    lab: lab_hosts.Lab
    workdir: Path
    formed: PlaybookRun | None = None
    form_seconds: float = 0.0
    runs: int = field(default=0)

    @property
    def nodes(self) -> list[lab_hosts.LabHost]:
        return self.lab.hosts

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.nodes]

    def node(self, name: str) -> lab_hosts.LabHost:
        return next(h for h in self.nodes if h.name == name)

    def inventory(self, hostvars: dict[str, dict] | None = None) -> dict:
        hostvars = hostvars or {}
        return {
            "all": {
                "children": {
                    GROUP: {
                        "hosts": {
                            h.name: {
                                "ansible_connection": "virtops_lab_nsenter",
                                "virtops_lab_holder_pid": h.holder_pid,
                                "ansible_python_interpreter": sys.executable,
                                "cluster_address": h.address,
                                # the lab starts libvirtd with its pidfile in the host's dir
                                "cluster_libvirt_pidfile": h.pidfiles["libvirtd"],
                                **hostvars.get(h.name, {}),
                            }
                            for h in self.nodes
                        }
                    }
                }
            }
        }

    def run_role(
        self,
        role_vars: dict | None = None,
        *,
        hostvars: dict[str, dict] | None = None,
        check: bool = False,
        limit: str | None = None,
        timeout: float = 600,
    ) -> PlaybookRun:
        """ansible-playbook running the role on the cluster group (results per task)."""
        name = f"role{self.runs + 1}"
        play = {
            "name": "Form the lab cluster",
            "hosts": GROUP,
            "gather_facts": False,
            "roles": [
                {
                    "role": ROLE,
                    "cluster_install_packages": False,
                    "cluster_lockspace_dir": str(lockspace_dir()),
                    **(role_vars or {}),
                }
            ],
        }
        book = self.workdir / f"{name}.yml"
        book.write_text(yaml.safe_dump([play], sort_keys=False))
        return self._ansible_playbook(
            str(book), hostvars=hostvars, check=check, limit=limit, timeout=timeout
        )

    def run_playbook(
        self,
        playbook: str,
        *,
        extra_vars: dict | None = None,
        hostvars: dict[str, dict] | None = None,
        check: bool = False,
        timeout: float = 600,
    ) -> PlaybookRun:
        """ansible-playbook running ``playbook`` (a path or a collection playbook such as
        ``virtops.kvm.ha``) with the cluster group as inventory and the lab's role variables."""
        lab_vars = {
            "cluster_install_packages": False,
            "cluster_lockspace_dir": str(lockspace_dir()),
        }
        return self._ansible_playbook(
            playbook,
            hostvars=hostvars,
            check=check,
            extra_vars={**lab_vars, **(extra_vars or {})},
            timeout=timeout,
        )

    def _ansible_playbook(
        self,
        playbook: str,
        *,
        hostvars: dict[str, dict] | None = None,
        check: bool = False,
        limit: str | None = None,
        extra_vars: dict | None = None,
        timeout: float = 600,
    ) -> PlaybookRun:
        self.runs += 1
        name = f"run{self.runs}"
        inventory = self.workdir / f"{name}-inventory.yml"
        inventory.write_text(yaml.safe_dump(self.inventory(hostvars)))
        results = self.workdir / f"{name}-results.json"
        env = checkout_env(
            ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "integration" / "callback_plugins"),
            ANSIBLE_CALLBACKS_ENABLED="virtops_results",
            ANSIBLE_CONNECTION_PLUGINS=str(ROOT / "tests" / "lab" / "connection_plugins"),
            VIRTOPS_RESULTS_FILE=str(results),
        )
        cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), playbook]
        cmd += ["-e", json.dumps(extra_vars)] if extra_vars else []
        cmd += ["--check"] if check else []
        cmd += ["--limit", limit] if limit else []
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        found = json.loads(results.read_text()) if results.exists() else []
        return PlaybookRun(proc.returncode, proc.stdout, proc.stderr, found)


def form(lab: lab_hosts.Lab, workdir: Path) -> LabCluster:
    """Run the role on every host of ``lab``; fails unless all are online and quorate."""
    cluster = LabCluster(lab, workdir)
    started = time.monotonic()
    run = cluster.run_role()
    cluster.form_seconds = time.monotonic() - started
    if run.rc != 0:
        raise RuntimeError(f"the cluster role failed ({run.rc}):\n{run.stdout[-4000:]}")
    cluster.formed = run
    for host in lab.hosts:
        wait_online(host, cluster.names, timeout=60)
    return cluster


@contextmanager
def formed(lab: lab_hosts.Lab, workdir: Path) -> Iterator[LabCluster]:
    """``lab``'s hosts formed into one cluster for the block, with the lab fence agent
    installed but no stonith device (tests that fence add the agent's), which the role
    refuses unless told: ``cluster_allow_no_fencing`` in group_vars beside the inventory (role
    parameters such as ``run_role``'s override it). The agent and the shared lockspace are
    removed at the end; the daemons stop with the lab (``hosts.down``)."""
    install_fence_agent()
    (workdir / "group_vars").mkdir(parents=True, exist_ok=True)
    (workdir / "group_vars" / f"{GROUP}.yml").write_text("cluster_allow_no_fencing: true\n")
    try:
        yield form(lab, workdir)
    finally:
        remove_fence_agent()
        shutil.rmtree(lockspace_dir(), ignore_errors=True)


# ----------------------------------------------------------------------------------------
# fencing


def add_stonith_device(host: lab_hosts.LabHost, names: list[str], device: str = STONITH_ID) -> None:
    """A ``stonith:fence_virtopslab`` primitive fencing ``names``, created from ``host``."""
    xml = (
        f'<primitive id="{device}" class="stonith" type="fence_virtopslab">'
        f'<instance_attributes id="{device}-ia">'
        f'<nvpair id="{device}-ia-hosts" name="pcmk_host_list" value="{" ".join(names)}"/>'
        f'<nvpair id="{device}-ia-check" name="pcmk_host_check" value="static-list"/>'
        "</instance_attributes></primitive>"
    )
    cmd = ["cibadmin", "--create", "-o", "resources", "--xml-pipe"]
    lab_hosts._run(host.nsenter(cmd), input=xml, timeout=60)


def remove_resource(host: lab_hosts.LabHost, rid: str) -> None:
    """Delete the primitive ``rid`` with its location constraints; absent is fine (test
    clean-up: Pacemaker stops what runs)."""
    for xpath in (f"//rsc_location[@rsc='{rid}']", f"//primitive[@id='{rid}']"):
        cmd = ["cibadmin", "--query", "--xpath", xpath]
        if lab_hosts._run(host.nsenter(cmd), check=False, timeout=60).returncode != 0:
            continue  # 105: no such object
        cmd = ["cibadmin", "--delete-all", "--force", "--xpath", xpath]
        lab_hosts._run(host.nsenter(cmd), timeout=60)


def remove_stonith_device(host: lab_hosts.LabHost, device: str = STONITH_ID) -> None:
    """Delete the stonith primitive ``device``; absent is fine."""
    remove_resource(host, device)


@contextmanager
def stonith_device(cluster: LabCluster, device: str = STONITH_ID) -> Iterator[str]:
    """The lab fence agent as ``cluster``'s stonith device for the block (its id)."""
    first = cluster.nodes[0]
    add_stonith_device(first, cluster.names, device)
    try:
        yield device
    finally:
        remove_stonith_device(first, device)


# ----------------------------------------------------------------------------------------
# a highly available tiny guest


def ha_guest_args(guest, **extra) -> dict:
    """virtops.kvm.cluster_guest's arguments making the lab's tiny ``guest``
    (tests/lab/guests.py) highly available: its definition written beside its files (which
    every node reads), live migration allowed over the lab's TCP listeners."""
    return {
        "name": guest.name,
        "config": str(guest.files.dir / "domain.xml"),
        "write_config": True,
        "allow_migrate": True,
        "migration_transport": "tcp",  # the lab's libvirtds listen on TCP
        # libvirt trusts only network filesystems as shared storage, not the lab's directory
        # (test_migration.py passes VIR_MIGRATE_UNSAFE too)
        "migrate_options": "--unsafe",
        **extra,
    }


def standby(node: lab_hosts.LabHost, state: bool) -> None:
    """Put ``node`` in standby (Pacemaker moves its resources away) or take it out."""
    cmd = ["crm_attribute", "--node", node.name, "--name", "standby", "--lifetime", "forever"]
    on_node(node, [*cmd, "--update", "on"] if state else [*cmd, "--delete"])


def settle(node: lab_hosts.LabHost, timeout: int = 120) -> None:
    """Wait until the cluster has carried out every action it planned (``crm_resource
    --wait``, asked in ``node``)."""
    on_node(node, ["crm_resource", "--wait", "--timeout", f"{timeout}s"], timeout=timeout + 30)


# ----------------------------------------------------------------------------------------
# a node back after a power loss


def restart_node(host: lab_hosts.LabHost, names: list[str] | None = None) -> None:
    """Boot ``host`` again after ``fence off``: fresh /run and /dev/shm (its libvirt runtime
    directory emptied too, as a reboot would), then virtlockd (if the role turned locking
    on), virtlogd, libvirtd, Corosync and Pacemaker. With ``names``, wait until the node
    sees those nodes online."""
    left = lab_hosts.node_processes(host)
    if left:
        raise RuntimeError(f"{host.name} still runs processes {left}: power it off first")
    base = Path(host.dir)
    for sub in ("run", "vtrun"):
        for entry in (base / sub).iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    remount = f"umount -R /run && umount /dev/shm && {lab_hosts._fresh_run_script(base, True)}"
    lab_hosts._run(host.nsenter(["sh", "-c", remount]))
    if "lock_manager" in (base / "etc" / "qemu.conf").read_text():  # as the role starts it
        lab_hosts._run(host.nsenter(["virtlockd", "-d", "-p", "/run/virtlockd.pid"]))
    lab_hosts._start_daemons(host)
    lab_hosts._wait_answering(host)
    lab_hosts._run(host.nsenter(["corosync"]))
    lab_hosts._run(host.nsenter(["sh", "-c", START_PACEMAKER]))
    if names:
        wait_online(host, names)


# ----------------------------------------------------------------------------------------
# inside a node


def on_node(
    node: lab_hosts.LabHost, cmd: list[str], data: str | None = None, timeout: float = 60
) -> str:
    """``cmd``'s output, run inside ``node`` (fails on a non-zero exit)."""
    return subprocess.run(
        node.nsenter(cmd), input=data, capture_output=True, text=True, check=True, timeout=timeout
    ).stdout


def cib(node: lab_hosts.LabHost):
    return etree.fromstring(on_node(node, ["cibadmin", "--query"]).encode())


def configuration(node: lab_hosts.LabHost) -> bytes:
    """The CIB's configuration section, canonical: equal bytes mean nothing was written."""
    return etree.tostring(cib(node).find("configuration"), method="c14n")


def where(node: lab_hosts.LabHost, resource: str) -> tuple[str | None, list[str]]:
    """``resource``'s role and the nodes it runs on, as crm_mon in ``node`` says."""
    status = etree.fromstring(on_node(node, ["crm_mon", "--output-as=xml", "--inactive"]).encode())
    found = status.xpath("resources//resource[@id=$id]", id=resource)
    if not found:
        return None, []
    return found[0].get("role"), [n.get("name") for n in found[0].findall("node")]


def on(node: lab_hosts.LabHost, tasks: list[dict], tmp_path: Path, *, check=False, diff=False):
    """Run ``tasks`` inside ``node`` (the lab's nsenter connection); a ``PlaybookRun``."""
    play = {
        "name": "on a cluster node",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {
            "ansible_connection": "virtops_lab_nsenter",
            "virtops_lab_holder_pid": node.holder_pid,
        },
        "tasks": tasks,
    }
    env = {"ANSIBLE_CONNECTION_PLUGINS": str(ROOT / "tests" / "lab" / "connection_plugins")}
    return run_playbook(tmp_path, plays=[play], check=check, diff=diff, env=env, timeout=300)
