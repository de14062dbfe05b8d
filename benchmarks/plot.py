"""One PNG per series of a benchmark run: ``python plot.py RESULTS_DIR``.

Runs in benchmarks/.venv-plot (matplotlib, pinned in requirements-plot.txt); reads only
RESULTS_DIR/results.json, so it can be run again on an old run.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def medians(records, **match):
    """{n: median value} of the records matching ``match``."""
    groups = defaultdict(list)
    for r in records:
        if all(r[k] == v for k, v in match.items()) and r["value"] is not None:
            groups[r["n"]].append(r["value"])
    return {n: statistics.median(v) for n, v in sorted(groups.items())}


def loads(records, series):
    values = [r["load1"] for r in records if r["series"] == series]
    return f"load1 {min(values):.1f}-{max(values):.1f}" if values else ""


def line(ax, data, label, **kw):
    if data:
        ax.plot(list(data), list(data.values()), marker="o", label=label, **kw)


def plot_noop(records, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for side, label in (
        ("ours", "virtops.kvm.domain"),
        ("peer", "community.libvirt.virt"),
        ("floor", "ansible.builtin.ping (floor)"),
    ):
        line(
            ax,
            medians(records, series="noop", case="second run", side=side, metric="seconds"),
            label,
        )
    ax.set(
        xlabel="defined guests N",
        ylabel="seconds (tasks of the 2nd run)",
        title=f"1. No-change run ({loads(records, 'noop')})",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "noop.png", dpi=110)


def plot_provision(records, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    line(
        ax,
        medians(records, series="provision", side="ours", metric="seconds"),
        "virtops.kvm guest role",
    )
    line(
        ax, medians(records, series="provision", side="peer", metric="seconds"), "community.libvirt"
    )
    ax.set(
        xlabel="guests N",
        ylabel="seconds to SSH on every guest",
        title=f"2. Provisioning ({loads(records, 'provision')})",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "provision.png", dpi=110)


def plot_info(records, out):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    line(ax1, medians(records, series="info", metric="seconds"), "playbook task")
    line(ax1, medians(records, series="info", metric="inprocess_seconds"), "in-process collect")
    ax1.set(xlabel="our defined guests", ylabel="seconds", title="time")
    line(ax2, medians(records, series="info", metric="libvirt_calls"), "all libvirt calls")
    line(ax2, medians(records, series="info", metric="libvirt_rpc_calls"), "RPC calls")
    ax2.set(xlabel="our defined guests", ylabel="calls", title="libvirt calls")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"3. domain_info at scale ({loads(records, 'info')})")
    fig.tight_layout()
    fig.savefig(out / "info.png", dpi=110)


def case_order(case):
    workload, requested, converge = case.split("|")
    return (workload != "idle", "default" not in requested, requested, converge != "off")


def plot_migrate(records, out):
    cases = sorted({r["case"] for r in records if r["series"] == "migrate"}, key=case_order)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.27
    for i, (metric, label) in enumerate(
        (
            ("requested_ms", "requested max downtime"),
            ("downtime_ms", "downtime (libvirt)"),
            ("observed_gap_ms", "longest gap seen by guest"),
        )
    ):
        values = []
        for case in cases:
            data = [
                r["value"]
                for r in records
                if r["series"] == "migrate"
                and r["case"] == case
                and r["metric"] == metric
                and r["value"] is not None
            ]
            values.append(statistics.median(data) if data else 0)
        ax.bar([x + (i - 1) * width for x in range(len(cases))], values, width, label=label)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c.replace("|", "\n") for c in cases], fontsize=8)
    ax.set(ylabel="ms", title=f"4. Live migration downtime ({loads(records, 'migrate')})")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "migrate.png", dpi=110)


def plot_snapshot(records, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, style in (("internal", "-"), ("external", "--")):
        for step in ("create", "revert"):
            line(
                ax,
                medians(records, series="snapshot", case=f"{kind} {step}", metric="seconds"),
                f"{kind} {step}",
                linestyle=style,
            )
    ax.set(
        xlabel="disk size GiB (sparse qcow2)",
        ylabel="seconds (task)",
        xscale="log",
        title=f"5. Snapshots ({loads(records, 'snapshot')})",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "snapshot.png", dpi=110)


def plot_fleet(records, out):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for side, label in (
        ("ours", "virtops.kvm.libvirt (concurrent)"),
        ("ours_sequential", "virtops.kvm.libvirt, max_workers=1"),
        ("peer", "community.libvirt.libvirt"),
    ):
        line(ax, medians(records, series="fleet", case="list", side=side, metric="seconds"), label)
    ax.set(xlabel="hypervisors (50 guests each)", ylabel="ansible-inventory --list, seconds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.suptitle(f"6. Fleet inventory ({loads(records, 'fleet')})")
    fig.tight_layout()
    fig.savefig(out / "fleet.png", dpi=110)


CLUSTER_BARS = (
    ("form", "seconds", "form the\ncluster"),
    ("standby", "seconds", "standby:\nguest moved"),
    ("standby", "heartbeat_max_gap_s", "standby:\nlongest gap"),
    ("failover", "detected_s", "power loss:\nnode seen lost"),
    ("failover", "started_s", "power loss:\nguest started"),
    ("failover", "seconds", "power loss:\nfirst heartbeat"),
)


def plot_cluster(records, out):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (case, metric, _label) in enumerate(CLUSTER_BARS):
        values = [
            r["value"]
            for r in records
            if r["series"] == "cluster"
            and r["case"] == case
            and r["metric"] == metric
            and r["value"] is not None
        ]
        if values:
            ax.bar(i, statistics.median(values), 0.6, color="tab:blue", alpha=0.6)
            ax.plot([i] * len(values), values, "o", color="black", markersize=4)
    ax.set_xticks(range(len(CLUSTER_BARS)))
    ax.set_xticklabels([label for _c, _m, label in CLUSTER_BARS], fontsize=8)
    ax.set(ylabel="seconds (bar: median, dots: runs)")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"7. Three-node lab cluster, one HA guest ({loads(records, 'cluster')})")
    fig.tight_layout()
    fig.savefig(out / "cluster.png", dpi=110)


def main(out: Path) -> None:
    records = json.loads((out / "results.json").read_text())["records"]
    present = {r["series"] for r in records}
    for series, func in (
        ("noop", plot_noop),
        ("provision", plot_provision),
        ("info", plot_info),
        ("migrate", plot_migrate),
        ("snapshot", plot_snapshot),
        ("fleet", plot_fleet),
        ("cluster", plot_cluster),
    ):
        if series in present:
            func(records, out)
            plt.close("all")
            print(f"wrote {out / (series + '.png')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
