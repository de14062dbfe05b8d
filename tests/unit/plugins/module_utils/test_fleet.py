"""_fleet.read_many: concurrent reads of many hypervisors, bounded and in URI order."""

from __future__ import annotations

import threading
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmLibvirtError,
    KvmTimeoutError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._fleet import read_many

URIS = [f"qemu+tcp://198.18.0.{10 + i}/system" for i in range(1, 7)]


def test_results_in_uri_order_whatever_order_reads_end():
    ended: list[str] = []

    def read(uri, connected):
        connected()
        time.sleep(0.05 * (len(URIS) - URIS.index(uri)))  # the first URI ends last
        ended.append(uri)
        return {"uri": uri}

    outcomes = read_many(URIS, read, max_workers=len(URIS), connect_limit=5)
    assert ended == list(reversed(URIS))
    assert [o.uri for o in outcomes] == URIS
    assert [o.data for o in outcomes] == [{"uri": u} for u in URIS]
    assert all(o.error is None and not o.abandoned for o in outcomes)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_never_more_reads_at_once_than_workers(workers):
    lock = threading.Lock()
    now = {"running": 0, "peak": 0}

    def read(uri, connected):
        connected()
        with lock:
            now["running"] += 1
            now["peak"] = max(now["peak"], now["running"])
        time.sleep(0.2)  # long enough to overlap on a loaded machine
        with lock:
            now["running"] -= 1
        return uri

    outcomes = read_many(URIS, read, max_workers=workers, connect_limit=5)
    assert [o.data for o in outcomes] == URIS
    assert now["peak"] == workers


def test_a_silent_hypervisor_is_given_up_after_the_connect_limit():
    release = threading.Event()
    late: list[str] = []
    silent = URIS[1]

    def read(uri, connected):
        if uri == silent:  # blocked in connect, as against a host that drops packets
            release.wait(10)
            late.append(uri)
            connected()
            return "too late"
        connected()
        time.sleep(0.4)  # connected reads may take longer than the connect limit
        return uri

    started = time.monotonic()
    outcomes = read_many(URIS[:3], read, max_workers=3, connect_limit=0.2)
    took = time.monotonic() - started
    release.set()
    assert [o.data for o in outcomes] == [URIS[0], None, URIS[2]]
    given_up = outcomes[1]
    assert given_up.abandoned
    assert isinstance(given_up.error, KvmTimeoutError)
    assert given_up.error.msg == f"{silent} did not answer within 0.2 s"
    assert took < 5, "the reads went on while the silent one was waited for"
    # the abandoned read ending later changes nothing that was returned
    deadline = time.monotonic() + 1
    while not late and time.monotonic() < deadline:
        time.sleep(0.01)
    assert late == [silent] and outcomes[1].data is None


def test_a_given_up_read_frees_its_worker():
    release = threading.Event()

    def read(uri, connected):
        if uri == URIS[0]:
            release.wait(10)
            return None
        connected()
        return uri

    try:
        outcomes = read_many(URIS[:3], read, max_workers=1, connect_limit=0.2)
    finally:
        release.set()
    assert outcomes[0].abandoned
    assert [o.data for o in outcomes[1:]] == URIS[1:3]


def test_errors_are_per_uri_and_stop_on_error_starts_no_more_reads():
    called: list[str] = []

    def read(uri, connected):
        called.append(uri)
        if uri == URIS[0]:
            raise KvmLibvirtError(f"Failed to connect to libvirt at {uri}")
        connected()
        return uri

    outcomes = read_many(URIS[:3], read, max_workers=1, connect_limit=5)
    assert outcomes[0].error.msg == f"Failed to connect to libvirt at {URIS[0]}"
    assert [o.data for o in outcomes[1:]] == URIS[1:3]

    called.clear()
    outcomes = read_many(URIS[:3], read, max_workers=1, connect_limit=5, stop_on_error=True)
    assert called == [URIS[0]]
    assert outcomes[0].error is not None
    assert all(o.data is None and o.error is None for o in outcomes[1:])


def test_an_unexpected_exception_is_raised_after_the_other_reads_end():
    ended: list[str] = []

    def read(uri, connected):
        connected()
        if uri == URIS[0]:
            raise RuntimeError("bug")
        time.sleep(0.1)
        ended.append(uri)
        return uri

    with pytest.raises(RuntimeError, match="bug"):
        read_many(URIS[:3], read, max_workers=3, connect_limit=5)
    assert sorted(ended) == URIS[1:3]


def test_max_workers_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        read_many(URIS, lambda uri, connected: uri, max_workers=0, connect_limit=5)
