"""Item 3: virtops.kvm.domain_info with 10, 100, 500 defined guests.

Two figures per size:

- time: the ``domain_info`` task of a playbook (listing every guest of the host), median
  of ``reps`` runs;
- libvirt calls: the module's own logic (``DomainInfo.collect``, what ``main()`` runs) is
  run in-process against the real connection wrapped in a counting proxy. The proxy counts
  every method called on the connection and on every libvirt object it hands out
  (domains, networks), by method. Calls that libvirt-python answers from the object
  without asking libvirtd (``name``, ``UUIDString``...) are counted apart, so "RPC calls"
  are the round trips to the daemon. No libvirtd log filters or ``LIBVIRT_DEBUG`` are
  needed, and libvirtd is not touched.

The guests are defined-but-never-started (16 MiB, no disks, type qemu), named with a unique
prefix, and removed at the end, also on failure. ``domain_info`` lists all guests of the
host, so guests other people have on it are counted in the total and reported.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import libvirt

from tests.lab.guests import defined_only_xml

from ..common import (
    LOCAL_CALLS,
    OUR_VENV,
    SYSTEM_URI,
    Results,
    guests_removed,
    loadavg,
    log,
    new_prefix,
    run_playbook,
)

_LIBVIRT_TYPES = tuple(
    getattr(libvirt, name)
    for name in (
        "virDomain",
        "virNetwork",
        "virStoragePool",
        "virStorageVol",
        "virDomainSnapshot",
        "virConnect",
    )
)


class CallCounter:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def wrap(self, obj: Any, kind: str) -> Any:
        return _Counting(obj, kind, self)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def rpc(self) -> int:
        return sum(n for key, n in self.calls.items() if key.split(".", 1)[1] not in LOCAL_CALLS)


class _Counting:
    """Proxy of a libvirt object: counts method calls, wraps the libvirt objects returned."""

    def __init__(self, obj: Any, kind: str, counter: CallCounter) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_counter", counter)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr
        counter, kind = self._counter, self._kind

        def call(*args: Any, **kwargs: Any) -> Any:
            key = f"{kind}.{name}"
            counter.calls[key] += 1
            args = tuple(a._obj if isinstance(a, _Counting) else a for a in args)
            args = tuple(
                [x._obj if isinstance(x, _Counting) else x for x in a] if isinstance(a, list) else a
                for a in args
            )
            started = time.perf_counter()
            try:
                return _wrap_result(attr(*args, **kwargs), counter)
            finally:
                counter.seconds[key] += time.perf_counter() - started

        return call


def _wrap_result(value: Any, counter: CallCounter) -> Any:
    if isinstance(value, _LIBVIRT_TYPES):
        return counter.wrap(value, type(value).__name__)
    if isinstance(value, list):
        return [_wrap_result(v, counter) for v in value]
    if isinstance(value, tuple):
        return tuple(_wrap_result(v, counter) for v in value)
    return value


def _domain_info_class():
    collections = str(OUR_VENV / "collections")
    if collections not in sys.path:
        sys.path.insert(0, collections)
    from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import (  # noqa: PLC0415
        DomainInfo,
    )

    return DomainInfo


def run(results: Results, *, counts: list[int], reps: int, uri: str = SYSTEM_URI) -> None:
    domain_info = _domain_info_class()
    conn = libvirt.open(uri)
    prefix = new_prefix("info")
    defined = 0
    try:
        with guests_removed(conn, prefix):
            for n in sorted(counts):
                started = time.monotonic()
                while defined < n:
                    conn.defineXML(defined_only_xml(f"{prefix}-{defined:04d}"))
                    defined += 1
                log(f"info: {defined} guests defined ({time.monotonic() - started:.1f} s)")
                total = len(conn.listAllDomains(0))
                others = total - defined
                for rep in range(reps):
                    counter = CallCounter()
                    load = loadavg()
                    t0 = time.monotonic()
                    guests = domain_info(counter.wrap(conn, "virConnect")).collect()
                    inproc = time.monotonic() - t0
                    mine = sum(1 for g in guests if g["name"].startswith(prefix))
                    if mine != n:
                        raise RuntimeError(f"domain_info listed {mine} of our {n} guests")
                    common = {
                        "series": "info",
                        "case": "domain_info",
                        "side": "ours",
                        "n": n,
                        "rep": rep,
                        "load": load,
                        "note": f"{total} guests on the host ({others} not ours)",
                    }
                    results.add(**common, metric="inprocess_seconds", value=inproc, unit="s")
                    results.add(**common, metric="libvirt_calls", value=counter.total, unit="calls")
                    results.add(
                        **common, metric="libvirt_rpc_calls", value=counter.rpc, unit="calls"
                    )
                    results.add(**common, metric="guests_listed", value=len(guests), unit="guests")
                    results.details.setdefault("info_calls_by_method", {})[str(n)] = {
                        key: {"calls": count, "seconds": round(counter.seconds[key], 4)}
                        for key, count in sorted(counter.calls.items())
                    }
                    play = run_playbook(
                        "ours",
                        [
                            {
                                "name": "info",
                                "hosts": "localhost",
                                "gather_facts": False,
                                "tasks": [
                                    {"name": "domain_info", "virtops.kvm.domain_info": {"uri": uri}}
                                ],
                            }
                        ],
                    )
                    results.add(
                        **{**common, "load": play.load_before},
                        metric="seconds",
                        value=play.task("domain_info").seconds,
                        unit="s",
                    )
    finally:
        conn.close()
