# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Reading many hypervisors at once (the inventory plugin's fleet read).

Every hypervisor is read in its own thread, at most ``max_workers`` at a time; libvirt-python
releases the GIL in its calls, so the reads overlap their network waits. Two limits keep one
bad hypervisor from costing more than its own timeout:

- connecting: a read that has not connected ``connect_limit`` seconds after it started is
  given up (its thread is a daemon, left blocked in the kernel's TCP connect to a host that
  drops packets; it does not hold a worker slot or keep the process alive);
- calls: after connecting, libvirt's keepalive (``setKeepAlive``, which needs the event loop
  that ``ensure_event_loop`` runs) ends every call to a hypervisor that stops answering with
  an error after ``interval * (count + 1)`` seconds.

The results come back in the order of the URIs, whatever order the reads end in.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ._errors import KvmError, KvmTimeoutError
from ._libvirt import libvirt

_event_loop_lock = threading.Lock()
_event_loop_started = threading.Event()


def ensure_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread (once per process).

    Without an event loop libvirt refuses keepalive, and a hypervisor that stops answering
    in the middle of a call would block that call for as long as TCP keeps the connection.
    """
    with _event_loop_lock:
        if _event_loop_started.is_set():
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="virtops-libvirt-events", daemon=True).start()
        _event_loop_started.set()


def set_keepalive(conn, interval: int, count: int) -> None:
    """Keepalive on ``conn`` where its driver has it (the remote driver: every URI that
    reaches a libvirtd); in-process drivers such as ``test:///`` have no keepalive."""
    if interval <= 0:
        return
    try:
        conn.setKeepAlive(interval, count)
    except libvirt.libvirtError:
        pass


@dataclass
class Outcome:
    uri: str
    data: Any = None
    error: Optional[KvmError] = None
    seconds: float = 0.0
    abandoned: bool = False


def read_many(
    uris: list[str],
    read: Callable[[str, Callable[[], None]], Any],
    *,
    max_workers: int,
    connect_limit: float,
    stop_on_error: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> list[Outcome]:
    """``read(uri, connected)`` for every URI, at most ``max_workers`` at a time.

    ``read`` calls ``connected()`` once its connection is open; a read that has not done so
    ``connect_limit`` seconds after it started is given up with a ``KvmTimeoutError``. A
    ``KvmError`` raised by ``read`` is that URI's error; any other exception is raised here
    once every started read has ended. With ``stop_on_error`` no read starts after the first
    error (the reads not started have neither data nor error).
    """
    if max_workers < 1:
        raise ValueError("max_workers must be at least 1")
    outcomes = [Outcome(uri) for uri in uris]
    finished: queue.Queue = queue.Queue()
    waiting = deque(range(len(uris)))
    running: dict[int, tuple[float, threading.Event]] = {}
    failed = False
    crash: Optional[BaseException] = None

    def work(index: int, connected: threading.Event) -> None:
        try:
            data = read(uris[index], connected.set)
        except KvmError as exc:
            finished.put((index, None, exc, None))
        except BaseException as exc:  # handed to the caller's thread
            finished.put((index, None, None, exc))
        else:
            finished.put((index, data, None, None))

    while waiting or running:
        while waiting and len(running) < max_workers and not (failed and stop_on_error):
            index = waiting.popleft()
            connected = threading.Event()
            running[index] = (clock(), connected)
            threading.Thread(
                target=work, args=(index, connected), name=f"virtops-read-{index}", daemon=True
            ).start()
        if not running:
            break
        unconnected = [start for start, conn in running.values() if not conn.is_set()]
        wait = None
        if unconnected:
            wait = max(0.0, min(unconnected) + connect_limit - clock())
        try:
            index, data, error, exc = finished.get(timeout=wait)
        except queue.Empty:
            pass
        else:
            if index in running:  # an abandoned read that ends late is ignored
                start = running.pop(index)[0]
                outcome = outcomes[index]
                outcome.data, outcome.error = data, error
                outcome.seconds = clock() - start
                failed = failed or error is not None
                if exc is not None and crash is None:
                    crash = exc
        now = clock()
        for index, (start, connected) in list(running.items()):
            if not connected.is_set() and now - start >= connect_limit:
                del running[index]
                outcome = outcomes[index]
                outcome.abandoned = True
                outcome.seconds = now - start
                outcome.error = KvmTimeoutError(
                    f"{uris[index]} did not answer within {connect_limit:g} s"
                )
                failed = True
    if crash is not None:
        raise crash
    return outcomes
