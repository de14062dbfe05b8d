"""The benchmarks of virtops.kvm against community.libvirt (one command: ``make bench``).

    .venv/bin/python -m benchmarks.run [--only noop,info,...] [--reps N] [--update-docs]

Makes the peer's virtualenv (benchmarks/.venv-peer, from requirements-peer.txt) and the
plotting one (benchmarks/.venv-plot) when missing, runs the series, prints the tables and
writes benchmarks/results/<UTC time>/ with results.json, results.csv, tables.md and one PNG
per series (benchmarks/results/latest points to it). ``--update-docs`` also puts the tables
into docs/performance.md between its ``bench:begin`` and ``bench:end`` markers.

Series (see docs/performance.md for how each is measured):
  noop       item 1, no-change run cost: ours vs peer vs ansible.builtin.ping
  provision  item 2, cloud image to N guests answering SSH: roles/guest vs peer
  info       item 3, domain_info time and libvirt calls with 10/100/500 guests
  migrate    item 4, live migration downtime in the multi-host lab
  snapshot   item 5, snapshot create/revert time against disk size
  fleet      the inventory over 1/5/20 lab hypervisors (and a silent one): ours vs peer
  cluster    a 3-node lab cluster: forming it, an HA guest's standby migration and failover
  backup     backup of a running guest: full and incremental against virtnbdbackup, and a
             plain qemu-img convert copy
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, fields
from pathlib import Path

from . import common, tables
from .common import (
    BENCH,
    PEER_VENV,
    PLOT_VENV,
    ROOT,
    NotReady,
    Record,
    Results,
    ensure_venv,
    loadavg,
    log,
    machine_info,
    pip_version,
)

SERIES = ("noop", "provision", "info", "migrate", "snapshot", "fleet", "cluster", "backup")
# the series that run community.libvirt (benchmarks/.venv-peer is made only for them)
PEER_SERIES = frozenset({"noop", "provision", "fleet"})
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
RUN_KEYS = ("started_utc", "command", "duration_s", "load_at_start", "load_at_end", "status")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--only", default=",".join(SERIES), help="comma-separated series to run (default: all)"
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions of each timed run")
    p.add_argument("--noop-n", type=_ints, default=[1, 10, 50])
    p.add_argument("--info-n", type=_ints, default=[10, 100, 500])
    p.add_argument("--info-uri", default="qemu:///system")
    p.add_argument(
        "--provision-n",
        type=_ints,
        default=[1, 5, 10],
        help="guest counts of the provisioning series (default 1,5,10; about 45 min under TCG)",
    )
    p.add_argument("--snapshot-gib", type=_ints, default=[1, 4, 16])
    p.add_argument("--backup-gib", type=int, default=4, help="virtual size of the backed-up disk")
    p.add_argument("--backup-data-gib", type=int, default=2, help="data written into it first")
    p.add_argument(
        "--backup-write-mib", type=int, default=64, help="written before the incremental"
    )
    p.add_argument("--fleet-n", type=_ints, default=[1, 5, 20], help="hypervisor counts")
    p.add_argument("--fleet-guests", type=int, default=50, help="defined guests per hypervisor")
    p.add_argument(
        "--migrate-timeout",
        type=int,
        default=120,
        help="seconds one migration may take before it is aborted",
    )
    p.add_argument(
        "--collection",
        metavar="REV",
        help="the playbooks run virtops.kvm as it is at git revision REV (extracted once under "
        "$VIRTOPS_LAB_DIR/bench) instead of this working tree: before/after figures of a change "
        "while the tree moves on",
    )
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument(
        "--update-docs", action="store_true", help="write the tables into docs/performance.md"
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_DIR",
        action="append",
        help="measure nothing: render the tables and plots of an earlier run again (with "
        "--update-docs, into docs/performance.md); given twice, the series of the second run "
        "are added to the first's (its start and load are said) and the result is written to "
        "the first run's directory",
    )
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SERIES)
    if unknown:
        p.error(f"unknown series {sorted(unknown)}; choose from {SERIES}")
    return args


def run_series(name: str, results: Results, args: argparse.Namespace, workdir: Path) -> None:
    if name == "noop":
        from .series import noop  # noqa: PLC0415

        noop.run(results, counts=args.noop_n, reps=args.reps)
    elif name == "info":
        from .series import info  # noqa: PLC0415

        info.run(results, counts=args.info_n, reps=args.reps, uri=args.info_uri)
    elif name == "snapshot":
        from .series import snapshot  # noqa: PLC0415

        snapshot.run(results, sizes_gib=args.snapshot_gib, reps=min(args.reps, 2), workdir=workdir)
    elif name == "migrate":
        from .series import migrate  # noqa: PLC0415

        migrate.run(results, reps=max(1, args.reps - 1), timeout=args.migrate_timeout)
    elif name == "fleet":
        from .series import fleet  # noqa: PLC0415

        fleet.run(
            results, counts=args.fleet_n, guests=args.fleet_guests, reps=args.reps, workdir=workdir
        )
    elif name == "provision":
        from .series import provision  # noqa: PLC0415

        provision.run(results, counts=args.provision_n, reps=1, workdir=workdir)
    elif name == "cluster":
        from .series import cluster  # noqa: PLC0415

        cluster.run(results, reps=args.reps, workdir=workdir)
    elif name == "backup":
        from .series import backup  # noqa: PLC0415

        backup.run(
            results,
            size_gib=args.backup_gib,
            data_gib=args.backup_data_gib,
            write_mib=args.backup_write_mib,
            reps=args.reps,
            workdir=workdir,
        )


def render(args: argparse.Namespace) -> int:
    first, *more = args.render
    data = json.loads((first / "results.json").read_text())
    results = Results()
    results.records = [Record(**r) for r in data["records"]]
    results.notes = data.get("notes", {})
    results.details = data.get("details", {})
    meta = data["meta"]
    for extra in more:
        other = json.loads((extra / "results.json").read_text())
        series = sorted({r["series"] for r in other["records"]} | set(other["notes"]))
        results.records += [Record(**r) for r in other["records"]]
        for name, notes in other.get("notes", {}).items():
            results.notes.setdefault(name, []).extend(notes)
        run = {key: other["meta"].get(key) for key in RUN_KEYS}
        meta.setdefault("extra_runs", []).append({**run, "series": series})
        meta["status"] = {**meta.get("status", {}), **other["meta"].get("status", {})}
    if more:
        (first / "results.json").write_text(json.dumps(results.as_json(meta), indent=2))
    md = tables.render(results, meta)
    (first / "tables.md").write_text(md)
    if not args.no_plots:
        _plots(first)
    print(md)
    if args.update_docs:
        update_docs(md)
        log(f"updated {DOC.relative_to(ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out / stamp
    out.mkdir(parents=True)
    workdir = Path(os.environ.get("VIRTOPS_LAB_DIR", "/var/tmp/virtops-lab")) / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    for part in [workdir, *workdir.parents]:  # QEMU (libvirt-qemu) must reach the disks
        if part != Path("/"):
            part.chmod(part.stat().st_mode | 0o005)

    if PEER_SERIES & set(args.only):
        ensure_venv(PEER_VENV, BENCH / "requirements-peer.txt")
    if args.collection:
        common.OUR_COLLECTIONS = _extract_collection(args.collection, workdir)
    results = Results()
    started = time.time()
    meta = {
        "started_utc": stamp,
        "command": " ".join(
            [
                Path(sys.executable).name,
                "-m",
                "benchmarks.run",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "machine": machine_info(),
        "load_at_start": loadavg(),
        "ours": {
            "ansible-core": pip_version(ROOT / ".venv", "ansible-core"),
            "virtops.kvm": _galaxy_version(),
            "commit": _git_commit(args.collection or "HEAD"),
        },
        "peer": {
            "ansible": pip_version(PEER_VENV, "ansible"),
            "ansible-core": pip_version(PEER_VENV, "ansible-core"),
            "community.libvirt": _peer_libvirt_version(),
        },
        "series_run": args.only,
        "reps": args.reps,
    }
    log(f"results go to {out}")
    status: dict[str, str] = {}
    for name in SERIES:
        if name not in args.only:
            continue
        log(f"--- series {name} (load {loadavg()[0]:.2f})")
        t0 = time.monotonic()
        try:
            run_series(name, results, args, workdir)
            status[name] = f"done in {time.monotonic() - t0:.0f} s"
        except NotReady as exc:
            status[name] = f"not measured: {exc}"
            results.note(name, f"not measured: {exc}")
        except Exception as exc:
            status[name] = f"failed after {time.monotonic() - t0:.0f} s: {exc}"
            results.note(name, f"failed: {exc}")
            log(traceback.format_exc())
        _write(out, results, meta, status, started)  # after every series: nothing is lost
    md = _write(out, results, meta, status, started)
    if not args.no_plots:
        _plots(out)
    latest = args.out / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(stamp)
    print(md)
    if args.update_docs:
        update_docs(md)
        log(f"updated {DOC.relative_to(ROOT)}")
    return 0 if all(s.startswith("done") for s in status.values()) else 1


def _write(out: Path, results: Results, meta: dict, status: dict, started: float) -> str:
    meta = {
        **meta,
        "status": status,
        "duration_s": round(time.time() - started),
        "load_at_end": loadavg(),
    }
    (out / "results.json").write_text(json.dumps(results.as_json(meta), indent=2))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in fields(Record)])
        writer.writeheader()
        for rec in results.records:
            writer.writerow(asdict(rec))
    md = tables.render(results, meta)
    (out / "tables.md").write_text(md)
    return md


def _plots(out: Path) -> None:
    try:
        ensure_venv(PLOT_VENV, BENCH / "requirements-plot.txt")
        subprocess.run(
            [str(PLOT_VENV / "bin/python"), str(BENCH / "plot.py"), str(out)], check=True
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        log(f"plots failed: {exc}")


def update_docs(md: str) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{md.strip()}\n{END}{tail}")


def _galaxy_version() -> str:
    for line in (ROOT / "galaxy.yml").read_text().splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    return "?"


def _git_commit(rev: str = "HEAD") -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip()


def _extract_collection(rev: str, workdir: Path) -> Path:
    """A collections directory holding virtops.kvm as of ``rev`` (the tree of that commit)."""
    commit = _git_commit(rev)
    if not commit:
        raise SystemExit(f"--collection: {rev!r} is not a commit of {ROOT}")
    collections = workdir / f"collection-{commit}"
    tree = collections / "ansible_collections" / "virtops" / "kvm"
    if not tree.is_dir():  # a commit's tree never changes: extracted once, then reused
        partial = tree.with_name(".kvm-partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive.stdout, check=True)
        partial.rename(tree)
    log(f"the playbooks run virtops.kvm at {commit} ({tree})")
    return collections


def _peer_libvirt_version() -> str:
    if not (PEER_VENV / "bin/python").exists():
        return "?"
    proc = subprocess.run(
        [
            str(PEER_VENV / "bin/python"),
            "-c",
            "import ansible_collections.community.libvirt as c, json, pathlib;"
            "p = pathlib.Path(list(c.__path__)[0]) / 'MANIFEST.json';"
            "print(json.loads(p.read_text())['collection_info']['version'])",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
