"""Item 4: live migration of a tiny guest between two hosts of the multi-host lab.

Cases: workload (idle, or dirtying memory: a loop writing 48 MiB to tmpfs again and again)
x max downtime (QEMU's default 300 ms, or 50 ms) x auto-converge (off, on). A tiny guest
(192 MiB, 1 vCPU, disk on the lab's shared directory; a fresh one per workload) goes back
and forth between the two hosts with ``virtops.kvm.migrate``; every migration may take
``--migrate-timeout`` seconds and is then aborted (counted as not converged).

Downtime, two ways:

- libvirt's: ``stats.downtime_ms`` the module returns (what QEMU measured);
- seen by the guest: a loop in the guest writes ``TICK n`` to its serial console every
  20 ms; the host notes when each line lands in the console file. The longest gap between
  ticks during the migration, next to the longest gap in the 5 s before it (the jitter of a
  TCG guest on this machine, the baseline), bounds the downtime from outside.

The lab (tests/lab/hosts.py) is used as it is when it is up; otherwise two hosts are
started for the series and stopped after it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator

import libvirt

from ..common import NotReady, Results, log, new_prefix, run_playbook

TICK_RE = re.compile(rb"^TICK (\d+)\r?$", re.MULTILINE)
TICKER = (
    "setsid sh -c 'i=0; while :; do i=$((i+1)); echo \"TICK $i\"; usleep 20000; done' "
    "</dev/null >/dev/ttyS0 2>&1 &"
)
DIRTIER = (
    "setsid sh -c 'while :; do dd if=/dev/zero of=/tmp/dirty bs=1M count=48 2>/dev/null; "
    "done' </dev/null >/dev/null 2>&1 &"
)
TIGHT_MS = 50
QEMU_DEFAULT_MS = 300


class TickWatch:
    """Notes the time each TICK line first appears in the guest's console file."""

    def __init__(self, path, period: float = 0.005) -> None:
        self.path, self.period = path, period
        self.seen: list[tuple[int, float]] = []
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(self._offset)
                    chunk = fh.read()
            except FileNotFoundError:
                chunk = b""
            now = time.monotonic()
            if chunk:
                self._offset += len(chunk)
                data = self._partial + chunk
                cut = data.rfind(b"\n") + 1
                self._partial = data[cut:]
                for m in TICK_RE.finditer(data[:cut]):
                    self.seen.append((int(m.group(1)), now))
            time.sleep(self.period)

    def __enter__(self) -> TickWatch:
        with contextlib.suppress(FileNotFoundError):
            self._offset = os.path.getsize(self.path)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def max_gap(self, start: float, end: float) -> float | None:
        """Longest time between two ticks seen that ends within [start, end]."""
        gaps = [b[1] - a[1] for a, b in zip(self.seen, self.seen[1:]) if start <= b[1] <= end]
        return max(gaps) if gaps else None

    def wait_ticks(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while len(self.seen) - start < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no ticks from the guest in {timeout:g} s")
            time.sleep(0.05)


@contextlib.contextmanager
def lab_hosts() -> Iterator[list]:
    """Two lab hosts: the running lab if it is up, else two started (and stopped) here."""
    try:
        from tests.lab import hosts as lab  # noqa: PLC0415
    except ImportError as exc:
        raise NotReady(f"tests/lab/hosts.py cannot be imported ({exc})") from exc
    state = lab.status()
    owned = None
    if (
        state.get("up")
        and len(state["hosts"]) >= 2
        and all(all(h["running"].values()) for h in state["hosts"])
    ):
        log(f"migrate: using the running lab ({state['owner']})")
        hosts = lab.Lab.load().hosts
    else:
        owned = f"bench:{os.getpid()}"
        log("migrate: starting two lab hosts")
        with lab.lab_lock(timeout=600):
            hosts = lab.up(2, owner=owned).hosts
    try:
        yield hosts[:2]
    finally:
        if owned:
            with lab.lab_lock(timeout=600):
                current = lab.Lab.load()
                if current is not None and current.owner == owned:
                    lab.down(current)
                    log("migrate: lab hosts stopped")


def run(results: Results, *, reps: int, timeout: int) -> None:
    from tests.lab.guests import TinyGuest, prepare_tiny_files, tiny_domain_xml  # noqa: PLC0415
    from tests.lab.images import build_tiny  # noqa: PLC0415

    image = build_tiny()
    prefix = new_prefix("mig")
    with lab_hosts() as hosts:
        conns = [h.connect() for h in hosts]
        made = []
        try:
            # One guest per workload: the command channel (a unix socket QEMU binds) does not
            # survive a migration, so each guest gets its workload before it first moves.
            for workload in ("idle", "dirty"):
                name = f"{prefix}-{workload}"
                files = prepare_tiny_files(name, image)
                made.append((name, files))
                dom = conns[0].defineXML(tiny_domain_xml(name, image, files, memory_mib=192))
                dom.create()
                guest = TinyGuest(name, files, conns[0])
                guest.wait_heartbeat(timeout=600)
                guest.check(TICKER, timeout=60)
                if workload == "dirty":
                    guest.check(DIRTIER, timeout=60)
                    time.sleep(3)
                where = 0
                for requested, converge, rep in _cases(reps):
                    outcome = _migrate_once(
                        results,
                        hosts,
                        where,
                        guest,
                        workload=workload,
                        requested=requested,
                        converge=converge,
                        rep=rep,
                        timeout=timeout,
                    )
                    if outcome == "stalled":
                        break
                    if outcome == "moved":
                        where = 1 - where
                        guest.conn = conns[where]
                _remove(conns, name)
        finally:
            for name, files in made:
                _remove(conns, name)
                shutil.rmtree(files.dir, ignore_errors=True)
            for conn in conns:
                conn.close()


def _cases(reps: int):
    """(max downtime asked, auto-converge, repetition) in the order they run."""
    for requested in (None, TIGHT_MS):
        for converge in (False, True):
            for rep in range(reps):
                yield requested, converge, rep


def _remove(conns, name: str) -> None:
    for conn in conns:
        with contextlib.suppress(libvirt.libvirtError):
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def _migrate_once(
    results, hosts, where, guest, *, workload, requested, converge, rep, timeout
) -> bool:
    src, dst = hosts[where], hosts[1 - where]
    args = {
        "uri": src.uri,
        "name": guest.name,
        "dest_uri": dst.uri,
        "migrate_uri": dst.migrate_uri,
        "unsafe": True,  # the lab's shared directory is a local file system to libvirt
        "auto_converge": converge,
        "timeout": timeout,
        "timeout_action": "abort",
        "poll_interval": 0.5,
    }
    if requested is not None:
        args["max_downtime"] = requested
    case = (
        f"{workload}|{requested if requested is not None else f'{QEMU_DEFAULT_MS} (default)'}"
        f"|{'on' if converge else 'off'}"
    )
    book = [
        {
            "name": "migrate",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [{"name": "migrate", "virtops.kvm.migrate": args}],
        }
    ]
    with TickWatch(guest.files.console_log) as watch:
        watch.wait_ticks(10, timeout=60)
        time.sleep(5)
        t_base = time.monotonic()
        baseline = watch.max_gap(t_base - 5, t_base)
        play = run_playbook("ours", book, keep_results=True, check=False, timeout=timeout + 300)
        t_end = time.monotonic()
        time.sleep(2)
        try:
            watch.wait_ticks(5, timeout=60)
            stalled = None
        except RuntimeError:
            stalled = _stall_report(hosts, guest.name)
        gap = None if stalled else watch.max_gap(t_base, time.monotonic())
    common = {
        "series": "migrate",
        "case": case,
        "side": "ours",
        "n": 1,
        "rep": rep,
        "load": play.load_before,
    }
    results.add(**common, metric="attempted", value=1, unit="runs")
    results.add(
        **common,
        metric="requested_ms",
        value=requested if requested is not None else QEMU_DEFAULT_MS,
        unit="ms",
    )
    task = play.tasks[-1] if play.tasks else None
    res = task.results[-1] if task and task.results else {}
    if play.rc != 0 or not res.get("stats"):
        msg = str(res.get("msg", play.output_tail[-300:]))[:300]
        results.note("migrate", f"{case} rep {rep}: no migration ({msg})")
        return "failed"
    if stalled:
        results.note(
            "migrate",
            f"{case} rep {rep}: migrated, then the guest printed nothing "
            f"for 60 s ({stalled}); its workload's remaining cases are skipped",
        )
    stats = res["stats"]
    results.add(**common, metric="downtime_ms", value=stats.get("downtime_ms"), unit="ms")
    results.add(**common, metric="total_time_ms", value=stats.get("total_time_ms"), unit="ms")
    results.add(
        **common,
        metric="memory_iterations",
        value=stats.get("memory_iterations"),
        unit="iterations",
    )
    results.add(
        **common,
        metric="data_transferred_mib",
        value=(stats.get("data_transferred_bytes") or 0) / 1024**2,
        unit="MiB",
    )
    results.add(**common, metric="seconds", value=task.seconds, unit="s")
    results.add(
        **common,
        metric="baseline_gap_ms",
        value=None if baseline is None else baseline * 1000,
        unit="ms",
    )
    results.add(
        **common,
        metric="observed_gap_ms",
        value=None if gap is None else gap * 1000,
        unit="ms",
        note=f"migration playbook took {t_end - t_base:.1f} s",
    )
    if stalled:
        return "stalled"
    return "moved" if res.get("location") == dst.uri else "failed"


def _stall_report(hosts, name: str) -> str:
    """Where the guest is, its state and whether its vCPU time still advances."""
    for host in hosts:
        conn = host.connect()
        try:
            dom = conn.lookupByName(name)
            state, reason = dom.state()
            cpu0 = dom.info()[4]
            time.sleep(3)
            cpu1 = dom.info()[4]
            return (
                f"on {host.uri}, libvirt state {state} reason {reason}, vCPU time "
                f"+{(cpu1 - cpu0) / 1e9:.2f} s in 3 s"
            )
        except libvirt.libvirtError:
            continue
        finally:
            conn.close()
    return "found on no host"
