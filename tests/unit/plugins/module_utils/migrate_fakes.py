"""Fake libvirt hosts and guests for the migrate unit tests (libvirt's test driver cannot migrate).

A ``FakeHost`` holds ``FakeDom`` objects; a migration moves a ``FakeDom`` from one host to
another the way libvirt does (the source copy goes away or stays inactive), or fails.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import libvirt
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmLibvirtError
from ansible_collections.virtops.kvm.plugins.modules.migrate import ARGUMENT_SPEC

SRC = "qemu+tcp://198.18.0.11/system"
DST = "qemu+tcp://198.18.0.12/system"

GUEST_XML = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>{mem}</memory>
  <currentMemory unit='KiB'>{mem}</currentMemory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/seed.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'><source network='{net}'/></interface>
  </devices>
</domain>"""


def error(code: int, msg: str = "fake error") -> libvirt.libvirtError:
    exc = libvirt.libvirtError(msg)
    exc.err = (code, libvirt.VIR_FROM_NONE, msg, 2, None, None, None, 0, 0)
    return exc


@dataclass
class FakeVol:
    host: FakeHost
    path: str
    capacity: int = 0
    xml: str = ""

    def delete(self, flags=0):
        self.host.volumes.pop(self.path, None)
        self.host.calls.append(("vol.delete", self.path))


@dataclass
class FakePool:
    host: FakeHost
    pool_name: str
    target: str

    def name(self):
        return self.pool_name

    def XMLDesc(self, flags=0):
        return (
            f"<pool type='dir'><name>{self.pool_name}</name>"
            f"<target><path>{self.target}</path></target></pool>"
        )

    def createXML(self, xml, flags=0):
        root = etree.fromstring(xml.encode())
        path = f"{self.target}/{root.findtext('name')}"
        if path in self.host.volumes:
            raise error(libvirt.VIR_ERR_STORAGE_VOL_EXIST, f"volume {path} exists")
        self.host.volumes[path] = FakeVol(self.host, path, int(root.findtext("capacity")), xml)
        self.host.calls.append(("vol.create", path))


class FakeNet:
    def __init__(self, active=True):
        self.active = active

    def isActive(self):
        return self.active


class FakeDom:
    def __init__(
        self,
        host,
        name,
        uuid,
        *,
        mem_mib=256,
        active=True,
        persistent=True,
        disk="/var/lib/libvirt/images/g.qcow2",
        net="default",
    ):
        self.host = host
        self._name = name
        self.uuid = uuid
        self.mem_kib = mem_mib * 1024
        self.active = active
        self.paused = False
        self.persistent = persistent
        self.disk = disk
        self.net = net
        self.stats: dict[str, Any] = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        self.completed: dict[str, Any] | None = None
        self.migrate_impl: Callable[..., Any] | None = None
        self.aborted = threading.Event()

    # identity and state
    def name(self):
        return self._name

    def UUIDString(self):
        return self.uuid

    def isActive(self):
        return self.active

    def isPersistent(self):
        return self.persistent

    def state(self):
        if not self.active:
            return [libvirt.VIR_DOMAIN_SHUTOFF, 0]
        return [libvirt.VIR_DOMAIN_PAUSED if self.paused else libvirt.VIR_DOMAIN_RUNNING, 0]

    def info(self):
        return [self.state()[0], self.mem_kib, self.mem_kib, 1, 0]

    def XMLDesc(self, flags=0):
        return GUEST_XML.format(
            name=self._name, uuid=self.uuid, mem=self.mem_kib, disk=self.disk, net=self.net
        )

    def blockInfo(self, target, flags=0):
        return [1 << 30, 1 << 20, 1 << 20]

    # changes
    def undefine(self):
        self.host.calls.append(("undefine", self._name))
        self.persistent = False
        if not self.active:
            self.host.domains.pop(self._name, None)

    def destroy(self):
        self.host.calls.append(("destroy", self._name))
        self.active = False
        if not self.persistent:
            self.host.domains.pop(self._name, None)

    def resume(self):
        self.paused = False

    # jobs
    def jobStats(self, flags=0):
        if flags & libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED:
            if self.completed is None:
                return {"type": libvirt.VIR_DOMAIN_JOB_NONE}
            return dict(self.completed)
        return dict(self.stats)

    def migrateSetMaxDowntime(self, ms, flags=0):
        self.host.calls.append(("max_downtime", ms))

    def migrateStartPostCopy(self, flags=0):
        self.host.calls.append(("postcopy", None))

    def abortJob(self):
        self.host.calls.append(("abort", None))
        self.aborted.set()

    def migrateToURI3(self, uri, params, flags):
        self.host.calls.append(("migrateToURI3", uri, dict(params), flags))
        return self.migrate_impl(self, uri, params, flags)

    def migrate3(self, dconn, params, flags):
        self.host.calls.append(("migrate3", dconn.uri, dict(params), flags))
        return self.migrate_impl(self, dconn.uri, params, flags)


class FakeHost:
    """A libvirt connection to a fake host."""

    registry: dict[str, FakeHost] = {}

    def __init__(
        self,
        uri,
        *,
        total_mib=8192,
        free_mib=6000,
        host_uuid=None,
        networks=("default",),
        pools=None,
    ):
        self.uri = uri
        self.total_mib = total_mib
        self.free_mib = free_mib
        self.host_uuid = host_uuid or f"00000000-0000-4000-8000-{abs(hash(uri)) % 10**12:012d}"
        self.domains: dict[str, FakeDom] = {}
        self.networks = {n: FakeNet() for n in networks}
        self.pools = {name: FakePool(self, name, path) for name, path in (pools or {}).items()}
        self.volumes: dict[str, FakeVol] = {}
        self.calls: list[tuple] = []
        self.alive = True
        self.cpu_result = libvirt.VIR_CPU_COMPARE_IDENTICAL

    def add(self, name, uuid="11111111-2222-3333-4444-555555555555", **kwargs) -> FakeDom:
        dom = FakeDom(self, name, uuid, **kwargs)
        self.domains[name] = dom
        return dom

    def _check(self):
        if not self.alive:
            raise error(libvirt.VIR_ERR_SYSTEM_ERROR, "connection is closed")

    def lookupByName(self, name):
        self._check()
        if name not in self.domains:
            raise error(libvirt.VIR_ERR_NO_DOMAIN, f"no domain {name}")
        return self.domains[name]

    def lookupByUUIDString(self, uuid):
        self._check()
        for dom in self.domains.values():
            if dom.uuid == uuid:
                return dom
        raise error(libvirt.VIR_ERR_NO_DOMAIN, f"no domain {uuid}")

    def getCapabilities(self):
        return f"<capabilities><host><uuid>{self.host_uuid}</uuid></host></capabilities>"

    def getInfo(self):
        return ["x86_64", self.total_mib, 2, 2000, 1, 1, 2, 1]

    def getFreeMemory(self):
        return self.free_mib * 1024 * 1024

    def getMemoryStats(self, cell, flags=0):
        return {"total": self.total_mib * 1024, "free": self.free_mib * 1024}

    def listAllDomains(self, flags=0):
        doms = list(self.domains.values())
        if flags & libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE:
            doms = [d for d in doms if d.active]
        return doms

    def networkLookupByName(self, name):
        if name not in self.networks:
            raise error(libvirt.VIR_ERR_NO_NETWORK, f"no network {name}")
        return self.networks[name]

    def listAllStoragePools(self, flags=0):
        return list(self.pools.values())

    def storagePoolLookupByName(self, name):
        return self.pools[name]

    def storageVolLookupByPath(self, path):
        if path not in self.volumes:
            raise error(libvirt.VIR_ERR_NO_STORAGE_VOL, f"no volume {path}")
        return self.volumes[path]

    def compareHypervisorCPU(self, *args):
        return self.cpu_result

    def isAlive(self):
        return 1 if self.alive else 0

    def close(self):
        return 0


@dataclass
class FakeModule:
    logs: list[str] = field(default_factory=list)

    def log(self, msg):
        self.logs.append(msg)


class FakeKvm:
    """What ``Migrator`` uses of ``KvmModule``."""

    def __init__(self, params, conn, *, check_mode=False, diff_mode=False):
        self.params = params
        self.conn = conn
        self.check_mode = check_mode
        self.diff_mode = diff_mode
        self.module = FakeModule()


def opener_for(hosts: dict[str, FakeHost]):
    def opener(uri, timeout=30):
        host = hosts.get(uri)
        if host is None or not host.alive:
            raise KvmLibvirtError(f"Failed to connect to libvirt at {uri}: refused")
        return host

    return opener


def move(src: FakeHost, dest: FakeHost, *, seconds=0.0, stats=None, completed=None):
    """A migrate_impl that takes ``seconds`` and moves the guest from ``src`` to ``dest``."""

    def impl(dom, uri, params, flags):
        dom.stats = dict(stats or {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "memory_iteration": 1})
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if dom.aborted.is_set():
                dom.stats = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
                raise error(
                    libvirt.VIR_ERR_OPERATION_ABORTED, "operation aborted: canceled by client"
                )
            time.sleep(0.01)
        dom.stats = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        moved = FakeDom(dest, dom.name(), dom.uuid, mem_mib=dom.mem_kib // 1024)
        moved.persistent = bool(flags & libvirt.VIR_MIGRATE_PERSIST_DEST)
        moved.active = not flags & libvirt.VIR_MIGRATE_OFFLINE
        moved.completed = completed
        dest.domains[dom.name()] = moved
        if flags & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE:
            src.domains.pop(dom.name(), None)
        dom.active = False
        return 0 if flags & libvirt.VIR_MIGRATE_PEER2PEER else moved

    return impl


def params(**overrides):
    """The migrate module's parameters: its defaults, SRC to DST, quick polling."""
    p = {k: spec.get("default") for k, spec in ARGUMENT_SPEC.items()}
    p.update(uri=SRC, connect_timeout=1, name="g1", dest_uri=DST, poll_interval=0.02)
    p.update(overrides)
    return p
