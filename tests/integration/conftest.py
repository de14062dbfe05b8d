"""Fixtures for integration tests: run real playbooks against the real local libvirtd.

Shared by the test modules (which import plain helpers from tests/helpers.py, never each
other): ``playbook``, ``name_prefix``, ``conn``, ``cleanup``, ``files`` (guest disks),
``pool_dir``, ``dir_pool``, ``lab_pool`` (storage), ``http_server``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from devtools.libvirt_cleanup import (
    domains_with_prefix,
    remove_domain,
    remove_domain_named,
    remove_network,
    remove_pool,
)
from tests.helpers import run_playbook, wait_for
from tests.lab.images import lab_dir

URI = "qemu:///system"


@pytest.fixture
def playbook(tmp_path):
    """``playbook(tasks, check=..., diff=...)`` runs tasks on localhost."""

    def _run(tasks=None, **kwargs):
        return run_playbook(tmp_path, tasks, **kwargs)

    return _run


@pytest.fixture
def name_prefix():
    """A unique prefix for libvirt objects a test creates (guests, networks, pools...)."""
    return f"vt-{secrets.token_hex(3)}"


@pytest.fixture
def conn():
    """A connection to qemu:///system for this test (libvirt's own error printing off)."""
    libvirt.registerErrorHandler(lambda *_: None, None)
    c = libvirt.open(URI)
    yield c
    c.close()


@pytest.fixture
def cleanup(conn, name_prefix):
    """Removes every guest, network and pool a test made (names start with ``name_prefix``)
    and the directories appended to it."""
    dirs: list[Path] = []
    yield dirs
    for dom in domains_with_prefix(conn, name_prefix):
        remove_domain(dom)
    for net in conn.listAllNetworks(0):
        if net.name().startswith(name_prefix):
            remove_network(conn, net.name())
    for pool in conn.listAllStoragePools(0):
        if pool.name().startswith(name_prefix):
            remove_pool(conn, pool.name())
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def files(name_prefix, cleanup):
    """A directory QEMU can read, with a raw and a qcow2 disk, an ISO and a kernel stand-in."""
    base = Path("/var/tmp/virtops-domain-tests") / name_prefix
    base.mkdir(parents=True)
    os.chmod(base.parent, 0o755)
    os.chmod(base, 0o755)
    cleanup.append(base)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "raw", str(base / "a.img"), "16M"], check=True
    )
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(base / "b.qcow2"), "16M"], check=True
    )
    (base / "install.iso").write_bytes(b"\0" * 4096)
    (base / "install2.iso").write_bytes(b"\0" * 4096)
    (base / "vmlinuz").write_bytes(b"\0" * 4096)
    return base


@pytest.fixture
def pool_dir(conn, name_prefix, tmp_path_factory):
    """A pool name and target directory; the pool and its directory are removed afterwards."""
    base = tmp_path_factory.mktemp(name_prefix)
    name = f"{name_prefix}-pool"
    yield name, str(base / "pool")
    remove_pool(conn, name)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dir_pool(conn, pool_dir):
    """A running dir pool made directly with libvirt (not through the module under test)."""
    name, target = pool_dir
    xml = f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target></pool>"
    pool = conn.storagePoolDefineXML(xml, 0)
    pool.build(0)
    pool.create(0)
    return pool


@pytest.fixture
def lab_pool(name_prefix):
    """(connection, pool name, a target directory QEMU can reach, {"domains": [names]}); the
    pool, the guests named there and the files are removed afterwards."""
    lab_conn = libvirt.open(URI)
    target = lab_dir() / "pools" / name_prefix
    made: dict[str, list[str]] = {"domains": []}
    yield lab_conn, f"{name_prefix}-pool", target, made
    for dom_name in made["domains"]:
        remove_domain_named([lab_conn], dom_name)
    with contextlib.suppress(libvirt.libvirtError):
        remove_pool(lab_conn, f"{name_prefix}-pool")
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(lab_dir() / "guests" / name_prefix, ignore_errors=True)
    lab_conn.close()


@pytest.fixture
def http_server(tmp_path):
    """python -m http.server on 127.0.0.1 (random port) serving tmp_path/www; stopped by PID.
    Yields (root, url, log); ``tests.helpers.http_gets`` counts the requests in the log."""
    root = tmp_path / "www"
    root.mkdir()
    log = tmp_path / "http.log"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(listening, 10, f"the test HTTP server on port {port}", interval=0.1)
    try:
        yield root, f"http://127.0.0.1:{port}", log
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
