"""The cluster role's quorum check before nodes leave (roles/cluster/tasks/leave.yml), run by
ansible-playbook on what ``corosync-quorumtool -s`` says in a few states of a 3-node cluster.

The task is taken from the role's file as it is; every node of the test is localhost, whose
facts hold the quorum tool's output (the role reads it from the first running node)."""

from __future__ import annotations

import yaml

from tests.helpers import ROOT, run_playbook

TASK = "Check that the cluster keeps its quorum without the leaving nodes"


def quorumtool(members: list[int], expected: int = 3, quorate: bool = True) -> str:
    """``corosync-quorumtool -s`` of a cluster of one-vote nodes with ``members`` joined."""
    lines = [
        "Quorum information",
        f"Quorate:          {'Yes' if quorate else 'No'}",
        "Votequorum information",
        f"Expected votes:   {expected}",
        f"Total votes:      {len(members)}",
        f"Quorum:           {expected // 2 + 1}  ",
        "Membership information",
        "    Nodeid      Votes Name",
    ]
    lines += [f"         {n}          1 n{n}" for n in members]
    return "\n".join(lines) + "\n"


def node(nodeid: int) -> dict:
    return {"host": "localhost", "name": f"n{nodeid}", "nodeid": nodeid}


def check(tmp_path, cases: list[tuple[list[int], list[int], str]]) -> list[str | None]:
    """For each (staying node ids, joined node ids, quorum tool output): the task's failure
    message, or None when it passes."""
    task = next(
        t
        for t in yaml.safe_load((ROOT / "roles/cluster/tasks/leave.yml").read_text())
        if t["name"] == TASK
    )
    plays = []
    for stay, leave, out in cases:
        plays.append(
            {
                "name": "case",
                "hosts": "localhost",
                "gather_facts": False,
                "vars": {
                    "__cluster_nodes": [node(n) for n in stay],
                    "__cluster_leaving": [node(n) for n in leave],
                    "cluster_qdevice": {},
                },
                "tasks": [
                    {
                        "ansible.builtin.set_fact": {
                            "__cluster_corosync_running": True,
                            "__cluster_quorum": {"stdout": out},
                        }
                    },
                    {**task, "ignore_errors": True},
                ],
            }
        )
    run = run_playbook(tmp_path, plays=plays, timeout=120)
    assert run.rc == 0, run.stdout[-3000:]
    found = [e for e in run.results if e["task"] == TASK]
    assert len(found) == len(cases)
    return [e["result"]["msg"] if e["status"] == "failed" else None for e in found]


def test_quorum_check(tmp_path):
    assert check(
        tmp_path,
        [
            # all three up: node 3 may leave (2 of 3 votes, then 2 of 2)
            ([1, 2], [3], quorumtool([1, 2, 3])),
            # node 3 already down: it may be removed (2 votes stay)
            ([1, 2], [3], quorumtool([1, 2])),
            # node 2 down: node 3 leaving would leave 1 vote of the 2 needed
            ([1, 2], [3], quorumtool([1, 3])),
            # five nodes, two down: two more leaving would leave 1 of 3
            ([1, 2, 3], [4, 5], quorumtool([1, 4, 5], expected=5, quorate=True)),
            # not quorate now: nothing leaves
            ([1, 2], [3], quorumtool([1], quorate=False)),
        ],
    ) == [
        None,
        None,
        "removing n3 would lose quorum: 1 vote(s) would remain, 2 are needed"
        " (bring the other nodes online first)",
        "removing n4, n5 would lose quorum: 1 vote(s) would remain, 3 are needed"
        " (bring the other nodes online first)",
        "the cluster is not quorate now (as localhost sees it): no node is removed from it",
    ]
