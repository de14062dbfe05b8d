"""Item 1: cost of a run that changes nothing.

N defined guests are ensured with virtops.kvm.domain (ours) and with community.libvirt.virt
(peer: define + state), each playbook run twice; the second, no-change run is timed (median
of ``reps`` runs, ``reps // 3`` for N > 10; the sides interleaved and their order rotated so
load drifts hit all alike). ansible.builtin.ping over the same loop is the floor Ansible
itself imposes. The figure is the wall time of the playbook's tasks (from the timing
callback), without ansible-playbook's start-up, which is the same for every side and is
reported apart.
"""

from __future__ import annotations

import libvirt

from ..common import PLAYBOOKS, SYSTEM_URI, Results, guests_removed, log, new_prefix, run_playbook

BOOKS = {
    "ours": ("ours", PLAYBOOKS / "noop_ours.yml"),
    "peer": ("peer", PLAYBOOKS / "noop_peer.yml"),
    "floor": ("ours", PLAYBOOKS / "noop_floor.yml"),
}


def run(results: Results, *, counts: list[int], reps: int) -> None:
    conn = libvirt.open(SYSTEM_URI)
    try:
        for n in counts:
            prefix = new_prefix("noop")
            names = {"ours": f"{prefix}-o", "peer": f"{prefix}-p", "floor": f"{prefix}-f"}
            with guests_removed(conn, prefix):
                for side in ("ours", "peer"):
                    venv_side, book = BOOKS[side]
                    first = run_playbook(
                        venv_side, book, {"bench_prefix": names[side], "bench_count": n}
                    )
                    results.add(
                        series="noop",
                        case="first run (defines)",
                        side=side,
                        n=n,
                        metric="seconds",
                        value=_task_seconds(first),
                        unit="s",
                        load=first.load_before,
                    )
                order = ["ours", "peer", "floor"]
                for rep in range(reps_for(n, reps)):
                    for side in order[rep % 3 :] + order[: rep % 3]:
                        venv_side, book = BOOKS[side]
                        again = run_playbook(
                            venv_side, book, {"bench_prefix": names[side], "bench_count": n}
                        )
                        changed = sum(t.changed for t in again.tasks)
                        common = {
                            "series": "noop",
                            "case": "second run",
                            "side": side,
                            "n": n,
                            "rep": rep,
                            "load": again.load_before,
                        }
                        results.add(
                            **common,
                            metric="seconds",
                            value=_task_seconds(again),
                            unit="s",
                            note=f"{changed} item(s) reported changed",
                        )
                        results.add(
                            **common, metric="playbook_wall_seconds", value=again.wall_s, unit="s"
                        )
                        results.add(**common, metric="changed_items", value=changed, unit="items")
                defined = [d for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
                log(f"noop n={n}: {len(defined)} guests defined by the two sides")
    finally:
        conn.close()


def reps_for(n: int, reps: int) -> int:
    """Fewer repetitions for the long loops (N = 50 takes minutes per run under TCG load)."""
    return reps if n <= 10 else max(1, reps // 3)


def _task_seconds(run) -> float:
    return sum(t.seconds for t in run.tasks)
