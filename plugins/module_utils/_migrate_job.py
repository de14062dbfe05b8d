# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Running one migration job: the blocking libvirt call in a worker thread, watched.

libvirt's migration calls block until the job ends. ``MigrationJob`` runs that call in a
worker thread while the calling thread polls the source domain's job statistics: it applies
the maximum downtime once the job exists, switches to post-copy when asked (after N memory
iterations or N seconds), enforces the timeout (abort, or switch to post-copy), and hands
every sample to a progress callback.

Nothing here waits without a bound once the job is aborted: ``abortJob`` runs in a thread of
its own (it can hang with a daemon that no longer answers), and when the job has not ended
``abort_grace`` seconds after the abort, ``run`` returns with ``stuck`` set and leaves the
blocked call behind in its daemon thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ._libvirt import libvirt

# Job statistics (virDomainGetJobStats keys) -> names in our results.
_FIGURES = (
    ("total_time_ms", "time_elapsed"),
    ("downtime_ms", "downtime"),
    ("setup_time_ms", "setup_time"),
    ("data_total_bytes", "data_total"),
    ("data_transferred_bytes", "data_processed"),
    ("data_remaining_bytes", "data_remaining"),
    ("memory_transferred_bytes", "memory_processed"),
    ("memory_remaining_bytes", "memory_remaining"),
    ("memory_iterations", "memory_iteration"),
    ("memory_bps", "memory_bps"),
    ("memory_dirty_rate", "memory_dirty_rate"),
    ("disk_transferred_bytes", "disk_processed"),
    ("disk_remaining_bytes", "disk_remaining"),
    ("postcopy_requests", "memory_postcopy_requests"),
    ("auto_converge_throttle", "auto_converge_throttle"),
    # xbzrle compression (VIR_MIGRATE_COMPRESSED with the xbzrle method)
    ("compression_cache_bytes", "compression_cache"),
    ("compression_bytes", "compression_bytes"),
    ("compression_pages", "compression_pages"),
    ("compression_cache_misses", "compression_cache_misses"),
    ("compression_overflow", "compression_overflow"),
)


def figures(stats: dict[str, Any] | None) -> dict[str, Any]:
    """Our names for the libvirt job statistics that matter to users (missing ones are None)."""
    stats = stats or {}
    return {ours: stats.get(theirs) for ours, theirs in _FIGURES}


def job_active(stats: dict[str, Any] | None) -> bool:
    none = libvirt.VIR_DOMAIN_JOB_NONE if libvirt is not None else 0
    return bool(stats) and stats.get("type", none) != none


def has_figures(stats: dict[str, Any] | None) -> bool:
    """Whether a sample says how far the job is (while it sets up or is being cancelled,
    libvirt reports an active job whose figures are all zero)."""
    stats = stats or {}
    return bool(stats.get("data_total") or stats.get("data_processed"))


class JobStuck(Exception):
    """The migration call had not returned ``abort_grace`` seconds after the job was aborted."""


@dataclass
class Called:
    """The end of a call made by ``bounded``: ``done`` is False when it outlasted its wait."""

    done: bool
    value: Any = None
    error: BaseException | None = None


def bounded(func: Callable[[], Any], seconds: float, name: str = "virtops-call") -> Called:
    """Run ``func()`` in a daemon thread and wait at most ``seconds`` for it.

    A call that outlasts the wait is left running (a daemon thread does not keep the
    process alive) and reported as not done; its result is dropped.
    """
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # handed to the caller, who knows what to expect
            box["error"] = exc

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    thread.join(max(seconds, 0))
    if thread.is_alive():
        return Called(False)
    return Called(True, box.get("value"), box.get("error"))


@dataclass
class JobPolicy:
    """What to do while the job runs; all times in seconds."""

    max_downtime_ms: int | None = None
    postcopy_after_iterations: int | None = None
    postcopy_after_seconds: float | None = None
    timeout: float | None = None
    timeout_action: str = "abort"  # or "postcopy"
    poll_interval: float = 1.0
    abort_grace: float = 60.0  # how long the job may take to end once aborted
    abort_call_wait: float = 10.0  # how long one abortJob call may take to answer


@dataclass
class JobOutcome:
    result: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0
    last_stats: dict[str, Any] = field(default_factory=dict)
    postcopy_started: bool = False
    postcopy_reason: str | None = None
    timed_out: bool = False
    aborted: bool = False
    abort_started: float | None = None  # elapsed seconds when the abort was asked
    stuck: bool = False  # the call had not returned abort_grace seconds after the abort
    max_downtime_applied: bool = False
    # The completed job's statistics no longer say how hard auto-converge throttled the
    # vCPUs, nor (with the destination's figures) how much disk data went: the highest
    # values seen while the job ran.
    max_throttle: int | None = None
    max_disk_processed: int | None = None
    events: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(eq=False)
class MigrationJob:
    """Run ``start()`` (the blocking migration call) and watch ``dom``'s job until it returns.

    ``on_sample`` gets each sample with figures, ``on_tick`` every poll (elapsed seconds and
    the job statistics).
    """

    dom: Any
    start: Callable[[], Any]
    policy: JobPolicy
    on_sample: Callable[[float, dict[str, Any]], None] | None = None
    on_tick: Callable[[float, dict[str, Any]], None] | None = None
    clock: Callable[[], float] = time.monotonic
    _outcome: JobOutcome = field(default_factory=JobOutcome, init=False)
    _finished: bool = field(default=False, init=False)
    # Set by the worker only; run() copies them once the worker has ended, so a worker
    # left behind (stuck) cannot change an outcome already returned.
    _result: Any = field(default=None, init=False)
    _error: BaseException | None = field(default=None, init=False)

    def _work(self) -> None:
        try:
            self._result = self.start()
        except libvirt.libvirtError as exc:
            self._error = exc
        # Not reached when start() raised something unexpected: run() reports that.
        self._finished = True

    def _stats(self) -> dict[str, Any]:
        try:
            return self.dom.jobStats() or {}
        except libvirt.libvirtError:
            return {}  # the job may have ended between two polls

    def _event(self, msg: str) -> None:
        self._outcome.events.append(msg)

    def _postcopy(self, reason: str) -> None:
        out = self._outcome
        if out.postcopy_started:
            return
        try:
            self.dom.migrateStartPostCopy()
        except libvirt.libvirtError as exc:
            out.warnings.append(f"Could not switch to post-copy ({reason}): {exc}")
            return
        out.postcopy_started = True
        out.postcopy_reason = reason
        self._event(f"switched to post-copy: {reason}")

    def run(self) -> JobOutcome:
        out = self._outcome
        policy = self.policy
        began = self.clock()
        worker = threading.Thread(target=self._work, name="virtops-migrate", daemon=True)
        worker.start()
        while True:
            worker.join(policy.poll_interval)
            elapsed = self.clock() - began
            if not worker.is_alive():
                out.result, out.error = self._result, self._error
                break
            if out.abort_started is not None and elapsed - out.abort_started >= policy.abort_grace:
                out.stuck = True
                out.error = JobStuck(
                    f"the migration job had not ended {policy.abort_grace:g} s after it was aborted"
                )
                self._event(f"job still not ended {policy.abort_grace:g} s after the abort")
                break
            stats = self._stats()
            if job_active(stats):
                self._apply_downtime()
                # A sample without figures after one with figures is the job being torn
                # down (abort, failure): keep the last real one for the report.
                if has_figures(stats) or not has_figures(out.last_stats):
                    out.last_stats = stats
                    self._note_peaks(stats)
                    if self.on_sample:
                        self.on_sample(elapsed, stats)
            if self.on_tick:
                self.on_tick(elapsed, stats)
            self._triggers(elapsed, stats)
        out.elapsed = self.clock() - began
        if out.error is None and not self._finished:
            out.error = RuntimeError("the migration thread ended without a result")
        return out

    def _note_peaks(self, stats: dict[str, Any]) -> None:
        out = self._outcome
        throttle = stats.get("auto_converge_throttle")
        if throttle:
            out.max_throttle = max(out.max_throttle or 0, int(throttle))
        disk = stats.get("disk_processed")
        if disk:
            out.max_disk_processed = max(out.max_disk_processed or 0, int(disk))

    def _apply_downtime(self) -> None:
        out = self._outcome
        if self.policy.max_downtime_ms is None or out.max_downtime_applied:
            return
        out.max_downtime_applied = True
        try:
            self.dom.migrateSetMaxDowntime(self.policy.max_downtime_ms, 0)
        except libvirt.libvirtError as exc:
            out.warnings.append(f"Could not set the maximum downtime: {exc}")

    def _triggers(self, elapsed: float, stats: dict[str, Any]) -> None:
        out = self._outcome
        policy = self.policy
        if not out.postcopy_started and job_active(stats):
            iterations = stats.get("memory_iteration") or 0
            if policy.postcopy_after_iterations and iterations >= policy.postcopy_after_iterations:
                self._postcopy(f"{iterations} memory iterations")
            elif policy.postcopy_after_seconds and elapsed >= policy.postcopy_after_seconds:
                self._postcopy(f"{elapsed:.1f} s elapsed")
        if policy.timeout and elapsed >= policy.timeout and not out.timed_out:
            out.timed_out = True
            self._event(f"timeout of {policy.timeout:g} s reached")
            if policy.timeout_action == "postcopy":
                self._postcopy(f"timeout of {policy.timeout:g} s")
                if out.postcopy_started:
                    return
            self._abort(elapsed)

    def _abort(self, elapsed: float) -> None:
        out = self._outcome
        out.abort_started = elapsed
        wait = self.policy.abort_call_wait
        called = bounded(self.dom.abortJob, wait, "virtops-abort")
        if not called.done:
            out.warnings.append(f"Aborting the migration job did not answer within {wait:g} s")
            self._event("abort not answered")
        elif called.error is not None:
            out.warnings.append(f"Could not abort the migration job: {called.error}")
            self._event(f"abort refused: {called.error}")
        else:
            out.aborted = True
            self._event("job aborted")
