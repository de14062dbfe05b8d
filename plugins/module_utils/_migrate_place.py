# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Before a migration: what the guest needs, whether a destination has it, where to go.

``GuestNeeds`` is read from the guest's XML (networks, pools, disks, CPU, memory).
``check_destination`` asks a destination connection, read-only, whether it can take the
guest and returns a ``Candidate`` with the reasons it cannot. ``choose`` picks the
candidate with the most uncommitted memory among those that can. ``PlacementLock`` makes
parallel runs on one machine take turns at choosing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _xml
from ._errors import KvmError, KvmTimeoutError, is_error
from ._libvirt import free_memory_bytes, libvirt, lookup_domain, lookup_or_none


@dataclass
class Disk:
    target: str
    path: str
    format: str | None = None
    device: str = "disk"
    readonly: bool = False
    shareable: bool = False
    pool: str | None = None  # <disk type='volume'>
    volume: str | None = None
    backing_path: str | None = None
    backing_format: str | None = None

    @property
    def copyable(self) -> bool:
        """What libvirt copies with storage copy: writable, unshared disks with a source."""
        return (
            self.device in ("disk", "lun")
            and not self.readonly
            and not self.shareable
            and bool(self.path)
        )


@dataclass
class GuestNeeds:
    name: str
    uuid: str
    virt_type: str = "qemu"
    arch: str | None = None
    machine: str | None = None
    emulator: str | None = None
    memory_kib: int = 0
    networks: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)
    cpu_xml: str | None = None  # a <cpu> worth comparing (custom model), else None

    @classmethod
    def from_xml(cls, text: str, *, memory_kib: int | None = None) -> GuestNeeds:
        root = _xml.parse(text, "domain XML")
        needs = cls(
            name=_xml.text(root, "name", ""),
            uuid=_xml.text(root, "uuid", ""),
            virt_type=root.get("type", "qemu"),
            arch=_xml.attr(root, "os/type", "arch"),
            machine=_xml.attr(root, "os/type", "machine"),
            emulator=_xml.text(root, "devices/emulator"),
        )
        if memory_kib is None:
            memory_kib = int(_xml.text(root, "currentMemory") or _xml.text(root, "memory") or 0)
        needs.memory_kib = memory_kib
        for iface in root.iterfind("devices/interface"):
            kind = iface.get("type")
            if kind == "network":
                net = _xml.attr(iface, "source", "network")
                if net and net not in needs.networks:
                    needs.networks.append(net)
            elif kind == "bridge":
                br = _xml.attr(iface, "source", "bridge")
                if br and br not in needs.bridges:
                    needs.bridges.append(br)
        for disk in root.iterfind("devices/disk"):
            parsed = _disk(disk)
            if parsed is not None:
                needs.disks.append(parsed)
        cpu = root.find("cpu")
        if (
            cpu is not None
            and cpu.get("mode", "custom") == "custom"
            and cpu.find("model") is not None
        ):
            needs.cpu_xml = _xml.to_string(cpu, pretty=False)
        return needs

    @property
    def memory_mib(self) -> int:
        return (self.memory_kib + 1023) // 1024


def _disk(elem) -> Disk | None:
    kind = elem.get("type")
    source = elem.find("source")
    if source is None:
        return None
    disk = Disk(
        target=_xml.attr(elem, "target", "dev", ""),
        path=source.get("file") or source.get("dev") or "",
        format=_xml.attr(elem, "driver", "type"),
        device=elem.get("device", "disk"),
        readonly=elem.find("readonly") is not None,
        shareable=elem.find("shareable") is not None,
    )
    if kind == "volume":
        disk.pool = source.get("pool")
        disk.volume = source.get("volume")
    elif kind not in ("file", "block"):
        return None  # network disks (rbd, iscsi...) are shared by nature
    backing = elem.find("backingStore")
    if backing is not None:
        bsrc = backing.find("source")
        if bsrc is not None:
            disk.backing_path = bsrc.get("file") or bsrc.get("dev")
            disk.backing_format = _xml.attr(backing, "format", "type")
    return disk


@dataclass
class HostMemory:
    total_mib: int
    free_mib: int
    committed_mib: int  # memory of the active guests (running, paused, incoming)

    @property
    def uncommitted_mib(self) -> int:
        return self.total_mib - self.committed_mib


def host_memory(conn) -> HostMemory:
    """Memory figures of a host: total and free as the host reports them, and committed."""
    total_mib = int(conn.getInfo()[1])
    free_mib = int(free_memory_bytes(conn) // (1024 * 1024))
    committed_kib = 0
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            committed_kib += int(dom.info()[2])
        except libvirt.libvirtError:
            continue  # went away while we counted
    return HostMemory(total_mib, free_mib, (committed_kib + 1023) // 1024)


def host_uuid(conn) -> str | None:
    root = _xml.parse(conn.getCapabilities(), "capabilities XML")
    return _xml.text(root, "host/uuid")


@dataclass
class Candidate:
    uri: str
    ok: bool = True
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory: HostMemory | None = None
    # Disks the destination must receive: (disk, pool name) of volumes to create, and the
    # target paths that already exist there.
    volumes_to_create: list[tuple[Disk, str]] = field(default_factory=list)

    def refuse(self, reason: str) -> None:
        self.ok = False
        self.reasons.append(reason)

    def as_dict(self) -> dict[str, Any]:
        mem = self.memory
        return {
            "uri": self.uri,
            "can_take": self.ok,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "memory_total_mib": mem.total_mib if mem else None,
            "memory_free_mib": mem.free_mib if mem else None,
            "memory_committed_mib": mem.committed_mib if mem else None,
            "memory_uncommitted_mib": mem.uncommitted_mib if mem else None,
        }


@dataclass
class CheckRequest:
    live: bool
    storage_copy: str  # none, all, incremental
    copy_disks: list[str] | None
    memory_reserve_mib: int = 0
    check_cpu: bool = True


def disks_to_copy(needs: GuestNeeds, copy_disks: list[str] | None) -> list[Disk]:
    disks = [d for d in needs.disks if d.copyable]
    if copy_disks:
        disks = [d for d in disks if d.target in copy_disks]
    return disks


def _active_pools(conn) -> list[tuple[str, str | None]]:
    """(name, target path) of the host's active storage pools."""
    pools = []
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        root = _xml.parse(pool.XMLDesc(0), "storage pool XML")
        pools.append((pool.name(), _xml.text(root, "target/path")))
    return pools


def _vol_by_path(conn, path: str):
    # Other libvirt errors stay libvirt's: the caller refuses the candidate with them.
    return lookup_or_none(
        lambda: conn.storageVolLookupByPath(path), libvirt.VIR_ERR_NO_STORAGE_VOL, None
    )


def check_destination(
    src_conn,
    dest_conn,
    dest_uri: str,
    needs: GuestNeeds,
    req: CheckRequest,
    *,
    reserved_mib: int = 0,
) -> Candidate:
    """Ask ``dest_conn`` (read-only questions) whether it can take the guest.

    ``reserved_mib`` counts as committed and not free: memory a plan has already promised.
    """
    cand = Candidate(dest_uri)

    other = lookup_domain(dest_conn, needs.name)
    if other is not None and other.UUIDString() != needs.uuid:
        cand.refuse(
            f"another guest named {needs.name} (UUID {other.UUIDString()}) is defined there"
        )

    for net in needs.networks:
        try:
            active = dest_conn.networkLookupByName(net).isActive()
        except libvirt.libvirtError as exc:
            if not is_error(exc, libvirt.VIR_ERR_NO_NETWORK):
                raise
            cand.refuse(f"network {net} does not exist there")
            continue
        if not active:
            cand.refuse(f"network {net} is not active there")
    if needs.bridges:
        cand.notes.append(f"bridges not checked: {', '.join(needs.bridges)}")

    pools = _active_pools(dest_conn)
    pool_names = {name for name, _pool in pools}
    for disk in needs.disks:
        if disk.pool and disk.pool not in pool_names:
            cand.refuse(f"storage pool {disk.pool} (disk {disk.target}) is not active there")

    copied = disks_to_copy(needs, req.copy_disks) if req.storage_copy != "none" else []
    copied_targets = {d.target for d in copied}
    by_target = {path: name for name, path in pools if path}
    for disk in needs.disks:
        if disk.target in copied_targets or disk.pool or not disk.path:
            continue
        # A shared disk: if the source knows it as a pool volume, the destination must see it.
        src_vol = _vol_by_path(src_conn, disk.path)
        if src_vol is not None and _vol_by_path(dest_conn, disk.path) is None:
            where = os.path.dirname(disk.path)
            if where not in by_target:
                cand.refuse(
                    f"disk {disk.target} ({disk.path}) is not visible there: no active pool at "
                    f"{where}; is the storage shared? (storage_copy copies it)"
                )
    for disk in copied:
        if disk.pool:
            continue  # libvirt looks the volume up in the same pool there
        if _vol_by_path(dest_conn, disk.path) is not None:
            cand.notes.append(f"disk {disk.target}: {disk.path} already exists there")
            continue
        where = os.path.dirname(disk.path)
        pool = by_target.get(where)
        if pool is None:
            cand.refuse(
                f"no active storage pool at {where} to receive disk {disk.target} ({disk.path})"
            )
            continue
        if req.storage_copy == "incremental" and disk.backing_path:
            if _vol_by_path(dest_conn, disk.backing_path) is None:
                cand.refuse(
                    f"the base image {disk.backing_path} of disk {disk.target} is not there "
                    "(incremental storage copy needs the base on the destination)"
                )
                continue
        cand.volumes_to_create.append((disk, pool))

    mem = host_memory(dest_conn)
    if reserved_mib:
        mem = HostMemory(
            mem.total_mib, mem.free_mib - reserved_mib, mem.committed_mib + reserved_mib
        )
    cand.memory = mem
    if req.live:
        want = needs.memory_mib + req.memory_reserve_mib
        room = min(mem.free_mib, mem.uncommitted_mib)
        if want > room:
            cand.refuse(
                f"not enough memory: the guest needs {needs.memory_mib} MiB"
                + (f" (+{req.memory_reserve_mib} MiB reserve)" if req.memory_reserve_mib else "")
                + f", the host has {mem.free_mib} MiB free and {mem.uncommitted_mib} MiB "
                "not committed to guests"
            )
        if req.check_cpu and needs.cpu_xml:
            _check_cpu(dest_conn, needs, cand)
    return cand


def _check_cpu(dest_conn, needs: GuestNeeds, cand: Candidate) -> None:
    flags = getattr(libvirt, "VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE", 0)
    try:
        result = dest_conn.compareHypervisorCPU(
            needs.emulator, needs.arch, needs.machine, needs.virt_type, needs.cpu_xml, flags
        )
    except libvirt.libvirtError as exc:
        if is_error(exc, libvirt.VIR_ERR_CPU_INCOMPATIBLE):
            cand.refuse(f"its CPU cannot run the guest's CPU model: {exc.get_error_message()}")
        else:
            cand.notes.append(f"CPU compatibility not checked: {exc.get_error_message()}")
        return
    if result == libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
        cand.refuse("its CPU cannot run the guest's CPU model")


def choose(candidates: list[Candidate]) -> Candidate | None:
    """The candidate that can take the guest with the most uncommitted memory, then free memory.

    Free memory as a host reports it is a poor guide on its own (guests touch their memory
    lazily, caches come and go), so ranking uses memory not committed to active guests.
    Ties keep the order the user gave.
    """
    able = [c for c in candidates if c.ok]
    if not able:
        return None

    def key(item):
        index, cand = item
        mem = cand.memory
        if mem is None:
            return (0, 0, -index)
        return (mem.uncommitted_mib, mem.free_mib, -index)

    return max(enumerate(able), key=key)[1]


# --------------------------------------------------------------------------- placement lock
PLACEMENT_LOCK_TIMEOUT = 600  # seconds; the holder releases within ~30 s of starting its job
PLACEMENT_LOCK_POLL = 0.2


def lock_directory() -> str:
    """Where placement locks live: a directory only this user can enter (``/run/virtops-kvm``
    for root, else under ``$XDG_RUNTIME_DIR`` or the user's cache), never a shared /tmp."""
    if os.geteuid() == 0:
        return "/run/virtops-kvm"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "virtops-kvm")
    return os.path.join(os.path.expanduser("~"), ".cache", "virtops-kvm", "locks")


def private_directory(path: str) -> str:
    """Create ``path`` mode 0700 (or tighten it) and make sure it is a real directory owned
    by this user, so no other local user can plant or swap a file in it."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise KvmError(f"Cannot create the lock directory {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise KvmError(
            f"The lock directory {path} is not a directory owned by this user "
            f"(uid {os.geteuid()}); remove it or fix it"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


class PlacementLock:
    """Serialises choosing a destination among the same candidates across parallel runs on
    one machine, until the chosen destination shows the incoming guest (so the next run
    counts its memory). Waits at most ``timeout`` seconds for its turn."""

    def __init__(
        self,
        candidates: list[str],
        *,
        directory: str | None = None,
        timeout: float = PLACEMENT_LOCK_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        digest = hashlib.sha256("\n".join(sorted(candidates)).encode()).hexdigest()[:16]
        self.directory = directory or lock_directory()
        self.path = os.path.join(self.directory, f"placement-{digest}.lock")
        self.timeout = timeout
        self._clock, self._sleep = clock, sleep
        self._fd: int | None = None

    def acquire(self, holder: str = "") -> None:
        private_directory(self.directory)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise KvmError(f"Cannot open the placement lock {self.path}: {exc.strerror}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise KvmError(f"The placement lock {self.path} is not a regular file")
            deadline = self._clock() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self._clock() >= deadline:
                        raise KvmTimeoutError(
                            f"Waited {self.timeout:g} s for the placement lock {self.path}, "
                            f"held by {self._holder(fd) or 'an unknown process'}; another "
                            "migration is choosing a destination among the same hosts",
                            lock=self.path,
                        ) from None
                    self._sleep(PLACEMENT_LOCK_POLL)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} {holder}".strip().encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
