# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""libvirt itself: the one guarded import of libvirt-python, and the answers every module
needs the same way (is a URI local, what a guest's state is called, find a guest).

Other files import ``libvirt`` from here; when libvirt-python is missing it is ``None`` and
the module wrapper (:mod:`._client`) or the inventory plugin reports
``LIBVIRT_IMPORT_ERROR``.
"""

from __future__ import annotations

import traceback
from typing import Callable, Optional, TypeVar
from urllib.parse import urlsplit

from ._errors import from_libvirt, is_error

LIBVIRT_IMPORT_ERROR: Optional[str] = None
try:
    import libvirt
except ImportError:
    libvirt = None
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()
else:
    # libvirt prints every error to stderr by default; ours reach the user as typed errors
    # (with libvirt's code and message), and expected ones (a missing guest) are not noise.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


# C defines of libvirt that libvirt-python does not export.
# VIR_DOMAIN_MEMORY_PARAM_UNLIMITED: "no limit" for a memory tuning parameter, in KiB.
MEMORY_PARAM_UNLIMITED = 9007199254740991


# --- URIs ------------------------------------------------------------------------------------


def is_local_uri(uri: Optional[str]) -> bool:
    """True when the hypervisor of ``uri`` runs on this machine: a URI without a host part
    (``qemu:///system``, ``qemu+unix:///system``, ``qemu+ssh:///system``) or the in-process
    ``test`` driver. ``qemu+ssh://host/...``, ``qemu+tcp://...``, ``qemu+tls://...`` with a
    host are remote (even when the host is this machine's own name).
    """
    if not uri:
        return False
    parts = urlsplit(uri)
    return bool(parts.scheme) and not parts.netloc


def is_this_machine(uri: Optional[str]) -> bool:
    """True when ``uri`` describes this machine's hardware, so that /proc, /sys and local
    files may stand in for what libvirt does not say: a local URI of a real driver. The
    ``test`` driver is local but describes an imaginary host.
    """
    return is_local_uri(uri) and urlsplit(uri or "").scheme.partition("+")[0] != "test"


# --- guest states ------------------------------------------------------------------------------

# libvirt's virDomainState codes by index, spelled as `virsh domstate` does without spaces.
DOMAIN_STATES = (
    "nostate",
    "running",
    "blocked",
    "paused",
    "shutdown",
    "shutoff",
    "crashed",
    "pmsuspended",
)
# States in which the guest has a QEMU process.
ACTIVE_STATES = ("running", "blocked", "paused", "shutdown", "pmsuspended")


# libvirt's virStoragePoolState codes by index.
POOL_STATES = ("inactive", "building", "running", "degraded", "inaccessible")


def pool_state_name(code: int) -> str:
    """The name of a virStoragePoolState code (``unknown(N)`` for codes newer than this table)."""
    return POOL_STATES[code] if 0 <= code < len(POOL_STATES) else f"unknown({code})"


def state_name(code: int) -> str:
    """The name of a virDomainState code (``nostate`` for codes newer than this table)."""
    return DOMAIN_STATES[code] if 0 <= code < len(DOMAIN_STATES) else "nostate"


def run_state(code: int) -> str:
    """The state a module reports and converges on: as :func:`state_name`, except that
    ``blocked`` (running, waiting on a resource) is ``running``."""
    name = state_name(code)
    return "running" if name == "blocked" else name


def domain_state(dom) -> str:
    """:func:`run_state` of a guest, read from libvirt."""
    try:
        code = dom.state()[0]
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, f"read the state of guest {dom.name()}") from exc
    return run_state(code)


def free_memory_bytes(conn) -> int:
    """The host's free memory in bytes, over all its NUMA cells.

    libvirt's node memory statistics for all cells (``/proc/meminfo``'s ``MemFree`` on Linux),
    as ``host_info`` reports it; ``getFreeMemory`` (the sum of the cells' own ``meminfo``)
    only where a driver lacks them. The two agree on most hosts, but on machines whose memory
    is not all in the NUMA nodes the kernel lists, the cells' sum is a fraction of the host's.
    A libvirt error other than "not supported" is raised as it is.
    """
    try:
        stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    except libvirt.libvirtError as exc:
        if not is_error(exc, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        stats = {}
    if "free" in stats:
        return int(stats["free"]) * 1024
    return int(conn.getFreeMemory())


# --- lookups ---------------------------------------------------------------------------------


def lookup_domain(conn, name: Optional[str] = None, uuid: Optional[str] = None):
    """The guest by UUID (when given) or name, or ``None`` when there is none.

    Any other libvirt error is raised as a typed error.
    """
    try:
        return conn.lookupByUUIDString(uuid) if uuid else conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if is_error(exc, libvirt.VIR_ERR_NO_DOMAIN):
            return None
        raise from_libvirt(exc, f"look up guest {uuid or name}") from exc


T = TypeVar("T")


def lookup_or_none(lookup: Callable[[], T], missing: int, what: Optional[str]) -> Optional[T]:
    """``lookup()`` (a libvirt lookup call), or ``None`` when libvirt answers ``missing`` (the
    code of its "no such object" error, such as ``VIR_ERR_NO_NETWORK``).

    Any other libvirt error is raised as a typed error saying it failed to ``what`` (e.g.
    "look up network default"); with ``what=None`` it is raised as libvirt's own error, for
    callers that handle those.
    """
    try:
        return lookup()
    except libvirt.libvirtError as exc:
        if is_error(exc, missing):
            return None
        if what is None:
            raise
        raise from_libvirt(exc, what) from exc
