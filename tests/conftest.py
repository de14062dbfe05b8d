"""Root fixtures of the test lab, usable from every test directory.

Images and guests (tests/lab/images.py, tests/lab/guests.py):
``libvirt_conn``, ``lab_cache``, ``tiny_image``, ``debian_image``, ``tiny_guest`` (factory),
``debian_guest`` (factory), ``shared_debian_guest`` (one per session), ``default_network``,
``ssh_keypair``.
Several libvirt hosts on this machine (tests/lab/hosts.py): ``lab_hosts`` (2 hosts),
``lab_hosts_factory`` (``lab_hosts_factory(3)``); ``lab_cluster``: those three hosts formed into a
Corosync/Pacemaker cluster by the role virtops.kvm.cluster (tests/lab/cluster.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.libvirt_cleanup import remove_domain_named
from tests.lab import cluster as lab_cluster_mod
from tests.lab import guests as lab_guests
from tests.lab import hosts as lab_hosts_mod
from tests.lab import images as lab_images
from tests.lab.machine import ensure_kvm_device_access

SYSTEM_URI = "qemu:///system"
# Under TCG on a loaded 2-core machine a tiny guest's boot ranges from ~2 s (idle) to minutes.
TINY_BOOT_TIMEOUT = 240


@pytest.fixture(scope="session", autouse=True)
def _kvm_device_access(request) -> None:
    """/dev/kvm as Debian's udev leaves it, or libvirt re-probes QEMU on every call; only
    when the session has tests that reach libvirtd (a unit-test run changes nothing)."""
    if any(
        item.get_closest_marker("integration") or item.get_closest_marker("lab")
        for item in request.session.items
    ):
        ensure_kvm_device_access()


@pytest.fixture(scope="session")
def libvirt_conn():
    """A connection to the machine's libvirtd (``qemu:///system``)."""
    import libvirt  # noqa: PLC0415 - unit tests that never use it need not import it

    conn = libvirt.open(SYSTEM_URI)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def lab_cache() -> Path:
    """The image cache directory (``$VIRTOPS_LAB_CACHE``)."""
    return lab_images.cache_dir()


@pytest.fixture(scope="session")
def tiny_image(lab_cache) -> lab_images.TinyImage:
    """The tiny image: ``.kernel``, ``.initrd``, ``.marker_template``, ``.cmdline``."""
    return lab_images.build_tiny(lab_cache)


@pytest.fixture(scope="session")
def debian_image(lab_cache) -> lab_images.DebianImage:
    """The debian image: ``.disk`` (qcow2 base), ``.kernel``, ``.initrd``, ``.cmdline``."""
    return lab_images.build_debian(lab_cache)


@dataclass(frozen=True)
class SshKeyPair:
    private: Path
    public: str  # the public key line


@pytest.fixture(scope="session")
def ssh_keypair(tmp_path_factory) -> SshKeyPair:
    """An ed25519 key pair made for this session."""
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtops-lab", "-f", str(key)],
        check=True,
    )
    return SshKeyPair(key, key.with_suffix(".pub").read_text().strip())


@pytest.fixture(scope="session")
def default_network(libvirt_conn) -> str:
    """libvirt's ``default`` NAT network, started if inactive (and left running)."""
    import libvirt  # noqa: PLC0415

    net = libvirt_conn.networkLookupByName("default")
    if not net.isActive():
        try:
            net.create()
        except libvirt.libvirtError:
            if not net.isActive():  # another test process may have started it meanwhile
                raise
    return "default"


@pytest.fixture
def tiny_guest(libvirt_conn, tiny_image) -> Iterator:
    """Factory: ``tiny_guest(name=None, *, conn=None, network=None, mac=None, memory_mib=192,
    marker=True, blank_marker=False, persistent=True, start=True, wait=True,
    extra_devices=None)`` defines and starts a tiny guest and returns a ``TinyGuest``.

    With ``wait`` it returns once the first heartbeat is on the console
    (``guest.boot_seconds``). At teardown every guest made is destroyed and undefined
    (on its current ``guest.conn`` too, after a migration) and its files are removed.
    """
    made: list[tuple[lab_guests.TinyGuest, object]] = []

    def make(
        name: str | None = None,
        *,
        conn=None,
        network: str | None = None,
        mac: str | None = None,
        memory_mib: int = 192,
        marker: bool = True,
        blank_marker: bool = False,
        persistent: bool = True,
        start: bool = True,
        wait: bool = True,
        extra_devices: list[str] | None = None,
    ) -> lab_guests.TinyGuest:
        conn = conn or libvirt_conn
        name = name or lab_guests.unique_name()
        files = lab_guests.prepare_tiny_files(
            name, tiny_image, marker=marker, blank_marker=blank_marker
        )
        guest = lab_guests.TinyGuest(name, files, conn)
        guest.mac = mac or (lab_guests.new_mac() if network else None)
        made.append((guest, conn))
        xml = lab_guests.tiny_domain_xml(
            name,
            tiny_image,
            files,
            memory_mib=memory_mib,
            network=network,
            mac=guest.mac,
            extra_devices=extra_devices,
        )
        started = time.monotonic()
        if persistent:
            dom = conn.defineXML(xml)
            if start:
                dom.create()
        elif start:
            conn.createXML(xml, 0)
        else:
            raise ValueError("a transient guest is always started")
        if start and wait:
            guest.wait_heartbeat(0, timeout=TINY_BOOT_TIMEOUT)
            guest.boot_seconds = time.monotonic() - started
        return guest

    yield make
    for guest, conn in made:
        remove_domain_named({id(c): c for c in (guest.conn, conn)}.values(), guest.name)
        shutil.rmtree(guest.files.dir, ignore_errors=True)
        sock = guest.files.command_socket
        for path in [sock, *lab_hosts_mod.hosts_dir().glob(f"h*/vtrun/{sock.name}")]:
            path.unlink(missing_ok=True)


def _start_debian_guest(
    conn,
    debian_image,
    ssh_keypair,
    name: str | None = None,
    *,
    network: str | None = "default",
    memory_mib: int = 1024,
    vcpus: int = 2,
    user_data: dict | None = None,
    made: list | None = None,
) -> lab_guests.DebianGuest:
    """Define and start a debian guest with a NoCloud seed; it goes into ``made`` (for the
    teardown) before it is defined."""
    name = name or lab_guests.unique_name("vt-deb")
    files = lab_guests.prepare_debian_files(name, debian_image)
    mac = lab_guests.new_mac()
    lab_images.make_seed_iso(
        files.seed_iso,
        instance_id=f"{name}-{time.time_ns()}",
        hostname=name,
        ssh_public_key=ssh_keypair.public,
        mac=mac,
        extra_user_data=user_data,
    )
    guest = lab_guests.DebianGuest(name, files, mac, network, conn, time.monotonic())
    if made is not None:
        made.append((guest, conn))
    xml = lab_guests.debian_domain_xml(
        name,
        debian_image,
        files,
        mac=mac,
        network=network,
        memory_mib=memory_mib,
        vcpus=vcpus,
    )
    dom = conn.defineXML(xml)
    guest.started_at = time.monotonic()
    dom.create()
    return guest


def _remove_debian_guests(made: list) -> None:
    for guest, conn in made:
        remove_domain_named({id(c): c for c in (guest.conn, conn)}.values(), guest.name)
        shutil.rmtree(guest.files.dir, ignore_errors=True)


@pytest.fixture
def debian_guest(libvirt_conn, debian_image, ssh_keypair) -> Iterator:
    """Factory: ``debian_guest(name=None, *, conn=None, network="default", memory_mib=1024,
    vcpus=2, user_data=None)`` starts a debian guest with a NoCloud seed (the session's SSH
    key for root and user ``virtops``) and returns a ``DebianGuest``: ``.address()`` waits for
    its DHCP lease. Pass ``network`` only after requesting ``default_network`` (or your own).
    Everything is removed at teardown.
    """
    made: list[tuple[lab_guests.DebianGuest, object]] = []

    def make(name: str | None = None, *, conn=None, **kwargs) -> lab_guests.DebianGuest:
        return _start_debian_guest(
            conn or libvirt_conn, debian_image, ssh_keypair, name, made=made, **kwargs
        )

    yield make
    _remove_debian_guests(made)


@pytest.fixture(scope="session")
def shared_debian_guest(libvirt_conn, debian_image, ssh_keypair, default_network):
    """One debian guest of ``debian_guest``'s defaults (``default`` network, 1 GiB, 2 vCPUs)
    booted once per session for the tests that need just a running one and leave it running
    and reachable (tests/lab/test_debian.py over SSH, tests/lab/test_qemu_ga.py through the
    guest agent, tests/lab/test_quiesce.py a backup frozen through the agent): a boot under
    TCG costs minutes of CPU. Removed at the end of the session.
    ``started_at`` is its start, so only the first test to use it measures its boot.
    """
    made: list[tuple[lab_guests.DebianGuest, object]] = []
    try:
        yield _start_debian_guest(
            libvirt_conn, debian_image, ssh_keypair, network=default_network, made=made
        )
    finally:
        _remove_debian_guests(made)


@pytest.fixture(scope="session")
def lab_hosts_factory():
    """Factory: ``lab_hosts_factory(n=2)`` starts ``n`` namespaced libvirt hosts (once per
    session; asking for more hosts restarts the lab with more) and returns a
    ``tests.lab.hosts.Lab``: ``.hosts[i].uri`` (``qemu+tcp://198.18.0.1N/system``),
    ``.migrate_uri``, ``.connect()``, ``.name`` (``vtlab-hN``, also its hostname).
    Everything it started is stopped at the end of the session.
    """
    state: dict[str, object] = {}
    stack = contextlib.ExitStack()

    def make(count: int = 2):
        lab = state.get("lab")
        if lab is not None and len(lab.hosts) >= count:
            return lab
        if not state.get("locked"):  # once per session: flock is per open file, not per process
            running = lab_hosts_mod.Lab.load()
            if running is not None and running.owner == "cli" and lab_hosts_mod.is_running(running):
                pytest.fail(
                    "lab hosts started by `python -m tests.lab.hosts up` are running; "
                    "stop them with `python -m tests.lab.hosts down` first"
                )
            stack.enter_context(lab_hosts_mod.lab_lock())
            state["locked"] = True
        if lab is not None:
            lab_hosts_mod.down(lab)
            state["lab"] = None
        state["lab"] = lab_hosts_mod.up(count, owner=f"pytest:{os.getpid()}")
        return state["lab"]

    yield make
    try:
        if state.get("lab") is not None:
            lab_hosts_mod.down(state["lab"])
    finally:
        stack.close()


@pytest.fixture(scope="module")
def lab_hosts(lab_hosts_factory):
    """Two namespaced libvirt hosts (see ``lab_hosts_factory``), or the first two of the lab's
    three when a module before asked for three.

    Per module, not per session: a later module's ``lab_hosts_factory(3)`` restarts the lab,
    and a session-wide value would go on naming the stopped hosts (their namespace holders
    gone, ``nsenter`` fails) in every module after it.
    """
    return lab_hosts_factory(2)


@pytest.fixture(scope="session")
def lab_cluster(lab_hosts_factory, tmp_path_factory):
    """Three lab hosts formed into one Corosync/Pacemaker cluster by the role
    virtops.kvm.cluster, once per session (``tests.lab.cluster.LabCluster``: ``.nodes``,
    ``.names``, ``.node(name)``, ``.run_role(role_vars, check=..., hostvars=...)``,
    ``.formed`` (the first run), ``.form_seconds``), with the lab fence agent installed as
    /usr/sbin/fence_virtopslab, and libvirt's lock manager on (leases in
    ``cluster.lockspace_dir()``). A test that fences a node brings it back
    (``cluster.restart_node``) before it ends.
    """
    lab = lab_hosts_factory(3)
    # without a stonith device (tests that fence add the lab agent's): cluster.formed
    with lab_cluster_mod.formed(lab, tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster
