"""Markdown tables of a benchmark run (medians of the repetitions, with the load averages)."""

from __future__ import annotations

from typing import Any

from .common import Results, median, ratio


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ns(results: Results, series: str) -> list[float]:
    return sorted({r.n for r in results.records if r.series == series})


def _n(value: float) -> str:
    return f"{value:g}"


def render(results: Results, meta: dict[str, Any]) -> str:
    m = meta["machine"]
    lines = [
        f"Run {meta['started_utc']} (`{meta['command']}`), {meta.get('duration_s', 0) // 60} min.",
        f"Machine: {m.get('os')}, kernel {m.get('kernel')}, {m.get('cpus')} x {m.get('cpu')}, "
        f"{m.get('memory_gib')} GiB; hardware virtualization: "
        f"{'yes' if m.get('hardware_virtualization') else 'no (guests run under TCG)'}; "
        f"libvirt {m.get('libvirt', '?')}, QEMU {m.get('qemu', '?')}, Python {m.get('python')}.",
        f"Ours: virtops.kvm {meta['ours']['virtops.kvm']} ({meta['ours']['commit']}), "
        f"ansible-core {meta['ours']['ansible-core']}. Peer: ansible {meta['peer']['ansible']} "
        f"with community.libvirt {meta['peer']['community.libvirt']}, ansible-core "
        f"{meta['peer']['ansible-core']}.",
        f"Load average (1/5/15 min) at start {_load(meta.get('load_at_start'))}, at end "
        f"{_load(meta.get('load_at_end'))}. Figures are medians of {meta['reps']} runs unless "
        "said otherwise; the load column gives the 1-minute load average(s) when they ran.",
    ]
    for run in meta.get("extra_runs", []):
        lines.append(
            f"Series {', '.join(run['series'])} from a second run, {run['started_utc']} "
            f"(`{run['command']}`), {(run.get('duration_s') or 0) // 60} min, load average at "
            f"start {_load(run.get('load_at_start'))}, at end {_load(run.get('load_at_end'))}."
        )
    lines.append("")
    for name, status in meta.get("status", {}).items():
        if not status.startswith("done"):
            lines.append(f"- **{name}**: {status}")
    for series, notes in results.notes.items():
        for note in notes:
            if not note.startswith(("not measured", "failed")):
                lines.append(f"- {series}: {note}")
    lines.append("")
    for part in (_noop, _provision, _info, _migrate, _snapshot, _fleet, _cluster, _backup):
        lines += part(results)
    return "\n".join(lines).rstrip() + "\n"


def _load(load: Any) -> str:
    return "-" if not load else "/".join(f"{x:.2f}" for x in load)


def _noop(results: Results) -> list[str]:
    ns = _ns(results, "noop")
    if not ns:
        return []
    out = [
        "### 1. No-change run (second run of N defined guests)",
        "",
        "Times are medians; ratios are medians of the ratios within each repetition (the "
        "sides ran back to back).",
        "",
        "| N | ours s | peer s | floor (ping) s | ours/peer | ours/floor | peer/floor "
        "| above floor per guest ours / peer s | changed on 2nd run ours/peer "
        "| first run ours / peer s | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for n in ns:
        sel = {"series": "noop", "case": "second run", "n": n, "metric": "seconds"}
        ours = results.median(**sel, side="ours")
        peer = results.median(**sel, side="peer")
        floor = results.median(**sel, side="floor")
        chg = {"series": "noop", "case": "second run", "n": n, "metric": "changed_items"}
        first = {"series": "noop", "case": "first run (defines)", "n": n, "metric": "seconds"}
        out.append(
            f"| {_n(n)} | {_f(ours)} | {_f(peer)} | {_f(floor)} "
            f"| {_x(_paired(results, sel, 'ours', 'peer'))} "
            f"| {_x(_paired(results, sel, 'ours', 'floor'))} "
            f"| {_x(_paired(results, sel, 'peer', 'floor'))} "
            f"| {_f(_above(ours, floor, n))} / {_f(_above(peer, floor, n))} "
            f"| {_f(results.median(**chg, side='ours'), 0)} / "
            f"{_f(results.median(**chg, side='peer'), 0)} "
            f"| {_f(results.median(**first, side='ours'))} / "
            f"{_f(results.median(**first, side='peer'))} "
            f"| {results.load_range(series='noop', n=n)} |"
        )
    wall = [
        results.median(
            series="noop", case="second run", metric="playbook_wall_seconds", n=n, side="floor"
        )
        for n in ns
    ]
    out += [
        "",
        "Task time only; a whole `ansible-playbook` process (start-up, inventory, "
        "parsing) took "
        + ", ".join(f"{_f(w)} s" for w in wall)
        + f" for the ping floor at N = {', '.join(_n(n) for n in ns)}.",
        "",
    ]
    return out


def _paired(results: Results, sel: dict, a: str, b: str) -> float | None:
    """Median over repetitions of a/b, each from the same repetition (run back to back under
    about the same load), which is steadier than a ratio of medians on a busy machine."""
    by_rep: dict[int, dict[str, float]] = {}
    for rec in results.select(**sel):
        if rec.value is not None:
            by_rep.setdefault(rec.rep, {})[rec.side] = rec.value
    return median([r[a] / r[b] for r in by_rep.values() if a in r and b in r and r[b]])


def _above(side: float | None, floor: float | None, n: float) -> float | None:
    return None if side is None or floor is None else (side - floor) / n


def _provision(results: Results) -> list[str]:
    ns = _ns(results, "provision")
    if not ns:
        return []
    out = [
        "### 2. Provisioning (cloud image to N guests answering SSH)",
        "",
        "| N | ours s | peer s | ours/peer | ours s per guest | peer s per guest | load |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in ns:
        sel = {"series": "provision", "n": n, "metric": "seconds"}
        ours = results.median(**sel, side="ours")
        peer = results.median(**sel, side="peer")
        out.append(
            f"| {_n(n)} | {_f(ours, 1)} | {_f(peer, 1)} | {_x(ratio(ours, peer))} "
            f"| {_f(ratio(ours, n), 1)} | {_f(ratio(peer, n), 1)} "
            f"| {results.load_range(series='provision', n=n)} |"
        )
    return [*out, ""]


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares line through ``points``: (intercept, slope)."""
    if len(points) < 2:
        return None
    n = len(points)
    sx = sum(p[0] for p in points)
    sy = sum(p[1] for p in points)
    sxx = sum(p[0] ** 2 for p in points)
    sxy = sum(p[0] * p[1] for p in points)
    den = n * sxx - sx * sx
    if den == 0:
        return None
    slope = (n * sxy - sx * sy) / den
    return (sy - slope * sx) / n, slope


def _info(results: Results) -> list[str]:
    ns = _ns(results, "info")
    if not ns:
        return []
    out = [
        "### 3. domain_info at scale (all guests of the host)",
        "",
        "| our guests | guests listed | task s | in-process s | libvirt calls | RPC calls "
        "| RPC calls per listed guest | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    calls, rpcs, secs = [], [], []
    for n in ns:
        sel = {"series": "info", "n": n}
        listed = results.median(**sel, metric="guests_listed")
        task = results.median(**sel, metric="seconds")
        inproc = results.median(**sel, metric="inprocess_seconds")
        total = results.median(**sel, metric="libvirt_calls")
        rpc = results.median(**sel, metric="libvirt_rpc_calls")
        if listed is not None:
            calls.append((listed, total))
            rpcs.append((listed, rpc))
            secs.append((listed, inproc))
        out.append(
            f"| {_n(n)} | {_f(listed, 0)} | {_f(task)} | {_f(inproc)} | {_f(total, 0)} "
            f"| {_f(rpc, 0)} | {_f(ratio(rpc, listed))} "
            f"| {results.load_range(series='info', n=n)} |"
        )
    out.append("")
    for label, pts, unit in (
        ("libvirt calls", calls, ""),
        ("RPC calls", rpcs, ""),
        ("in-process time", secs, " s"),
    ):
        fit = _fit(pts)
        if fit:
            out.append(
                f"- {label} = {fit[0]:.3g}{unit} + {fit[1]:.3g}{unit} x guests listed "
                "(least squares)"
            )
    return [*out, ""]


def _case_order(case: str) -> tuple:
    """idle before dirty, QEMU's default max downtime before the tight one, off before on."""
    workload, requested, converge = case.split("|")
    return (workload != "idle", "default" not in requested, requested, converge != "off")


def _migrate(results: Results) -> list[str]:
    cases = sorted({r.case for r in results.records if r.series == "migrate"}, key=_case_order)
    if not cases:
        return []
    out = [
        "### 4. Live migration of a tiny guest (multi-host lab)",
        "",
        "| workload | max downtime requested ms | auto-converge | downtime (libvirt) ms "
        "| longest guest-observed gap ms | baseline gap ms | total time ms | memory iterations "
        "| task s | runs ok | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for case in cases:
        sel = {"series": "migrate", "case": case}
        workload, requested, converge = case.split("|")
        ok = len(results.select(**sel, metric="downtime_ms"))
        tried = len(results.select(**sel, metric="attempted"))
        out.append(
            f"| {workload} | {requested} | {converge} "
            f"| {_f(results.median(**sel, metric='downtime_ms'), 0)} "
            f"| {_f(results.median(**sel, metric='observed_gap_ms'), 0)} "
            f"| {_f(results.median(**sel, metric='baseline_gap_ms'), 0)} "
            f"| {_f(results.median(**sel, metric='total_time_ms'), 0)} "
            f"| {_f(results.median(**sel, metric='memory_iterations'), 0)} "
            f"| {_f(results.median(**sel, metric='seconds'))} | {ok}/{tried} "
            f"| {results.load_range(series='migrate', case=case)} |"
        )
    return [*out, ""]


def _snapshot(results: Results) -> list[str]:
    ns = _ns(results, "snapshot")
    if not ns:
        return []
    out = [
        "### 5. Snapshots of a shut-off guest against disk size (sparse qcow2)",
        "",
        "| disk GiB | internal create s | internal revert s | internal delete s "
        "| external create s | external revert s | external delete s | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in ns:
        cells = [
            _f(results.median(series="snapshot", case=f"{kind} {step}", n=n, metric="seconds"))
            for kind in ("internal", "external")
            for step in ("create", "revert", "delete")
        ]
        out.append(
            f"| {_n(n)} | {' | '.join(cells)} | {results.load_range(series='snapshot', n=n)} |"
        )
    return [*out, ""]


def _fleet(results: Results) -> list[str]:
    ns = [n for n in _ns(results, "fleet") if n > 0]
    if not ns:
        return []

    def med(case: str, side: str, n: float, metric: str = "seconds") -> float | None:
        return results.median(series="fleet", case=case, side=side, n=n, metric=metric)

    floor = med("list", "floor", 0)
    first = min(ns)
    out = [
        "### 6. Fleet: `ansible-inventory --list` over N lab hypervisors",
        "",
        f"Floor (`ansible-inventory -i localhost, --list`, no hypervisor): {_f(floor)} s. "
        "Plugin s: the plugin's own `parse()` (reading the hypervisors and filling the "
        "inventory), without Python's start and the JSON output.",
        "",
        "| hypervisors | guests listed | ours s | ours one after another s | peer s "
        f"| ours / ours at N={_n(first)} | ours / peer | plugin s ours / one after another "
        "/ peer | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for n in ns:
        ours, peer = med("list", "ours", n), med("list", "peer", n)
        listed = med("list", "ours", n, "hosts_listed")
        plugin = " / ".join(
            _f(med("list", side, n, "plugin_seconds"))
            for side in ("ours", "ours_sequential", "peer")
        )
        out.append(
            f"| {_n(n)} | {_f(listed, 0)} | {_f(ours)} | {_f(med('list', 'ours_sequential', n))} "
            f"| {_f(peer)} | {_x(ratio(ours, med('list', 'ours', first)))} "
            f"| {_x(ratio(ours, peer))} "
            f"| {plugin} | {results.load_range(series='fleet', case='list', n=n)} |"
        )
    silent = [r for r in results.records if r.series == "fleet" and r.case == "silent"]
    if silent:
        n = max(r.n for r in silent)
        ours, peer, plain = (
            med("silent", "ours", n),
            med("silent", "peer", n),
            med("list", "ours", n),
        )
        note = next((r.note for r in silent if r.side == "ours" and r.note), "")
        added = None if ours is None or plain is None else ours - plain
        out += [
            "",
            f"With a silent hypervisor (drops every packet) added to the {_n(n)}: ours "
            f"{_f(ours)} s ({note}; {_f(added)} s more than without it), peer {_f(peer)} s "
            "(one run).",
        ]
    return [*out, ""]


CLUSTER_ROWS = (
    ("form", "corosync_s", "form: role started to Corosync running on the first node"),
    ("form", "pacemaker_s", "form: role started to Pacemaker answering there (crm_mon)"),
    ("form", "seconds", "form: no cluster daemon running to 3 nodes online and quorate"),
    ("form", "role_seconds", "form: the role's whole run (it then sets the properties)"),
    ("standby", "seconds", "standby of its node: request to guest started on another node"),
    ("standby", "heartbeat_max_gap_s", "standby of its node: longest heartbeat gap"),
    ("failover", "detected_s", "power loss of its node: a survivor sees the node offline"),
    ("failover", "started_s", "power loss: guest started on a survivor (after fencing)"),
    ("failover", "seconds", "power loss: first heartbeat on a survivor (failover time)"),
)


def _cluster(results: Results) -> list[str]:
    if not results.select(series="cluster"):
        return []
    out = [
        "### 7. Cluster: three lab nodes, one HA guest (Pacemaker and Corosync)",
        "",
        "| step | median s | min s | max s | runs | load |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case, metric, label in CLUSTER_ROWS:
        sel = {"series": "cluster", "case": case, "metric": metric}
        values = [r.value for r in results.select(**sel) if r.value is not None]
        out.append(
            f"| {label} | {_f(median(values))} | {_f(min(values, default=None))} "
            f"| {_f(max(values, default=None))} | {len(values)} "
            f"| {results.load_range(**sel)} |"
        )
    timings = results.details.get("cluster")
    if timings:
        out += ["", *_cluster_timings(timings)]
    return [*out, ""]


def _cluster_timings(t: dict[str, Any]) -> list[str]:
    """The settings in force, as read from the running cluster by the series."""
    totem = t["corosync_ms"]
    conf = {k.split(" ")[0]: v for k, v in totem.items() if k.endswith("(corosync.conf)")}
    ops = ", ".join(
        f"{name} {'every ' + op['interval'] + ', ' if _nonzero(op.get('interval')) else ''}"
        f"timeout {op.get('timeout', '-')}"
        for name, op in t["virtualdomain_ops"].items()
    )
    meta = ", ".join(f"{k}={v}" for k, v in t["virtualdomain_meta"].items())
    props = ", ".join(f"{k} {v}" for k, v in t["properties"].items())
    device = t["stonith_device"]
    dev = ", ".join(f"{k} {v}" for k, v in device.items() if k != "agent")
    return [
        "Timings in force (read from the running cluster): Corosync token "
        f"{totem['token']} ms (corosync.conf: {conf.get('totem.token')} ms, "
        f"token_coefficient {conf.get('totem.token_coefficient') or 'default'}), consensus "
        f"{totem['consensus']} ms, join {totem['join']} ms, "
        f"{totem['token_retransmits_before_loss_const']} token retransmits before loss; "
        f"the guest's VirtualDomain operations: {ops} ({meta}); cluster properties: {props}; "
        f"stonith device `{device['agent']}`: {dev}.",
    ]


def _nonzero(interval: str | None) -> bool:
    """A Pacemaker operation interval other than 0 (``0``, ``0s``, ``0ms``)."""
    return bool(interval) and interval.rstrip("ms") != "0"


def _backup(results: Results) -> list[str]:
    ns = _ns(results, "backup")
    if not ns:
        return []
    out = [
        "### 8. Backup of a running guest: virtops.kvm.backup, virtnbdbackup, a plain copy",
        "",
        "| disk GiB | case | ours s | virtnbdbackup s | qemu-img convert s | ours / virtnbdbackup "
        "| ours / copy | ours MiB | virtnbdbackup MiB | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in ns:
        for case in ("full backup", "incremental"):
            sel = {"series": "backup", "case": case, "n": n}
            ours = results.median(**sel, side="ours", metric="seconds")
            peer = results.median(**sel, side="virtnbdbackup", metric="seconds")
            floor = results.median(**sel, side="qemu-img convert", metric="seconds")
            out.append(
                f"| {_n(n)} | {case} | {_f(ours)} | {_f(peer)} | {_f(floor)} "
                f"| {_x(ratio(ours, peer))} | {_x(ratio(ours, floor))} "
                f"| {_f(results.median(**sel, side='ours', metric='size_mib'), 1)} "
                f"| {_f(results.median(**sel, side='virtnbdbackup', metric='size_mib'), 1)} "
                f"| {results.load_range(series='backup', case=case, n=n)} |"
            )
    return [*out, ""]
