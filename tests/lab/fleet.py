"""A fleet of lab hypervisors: N lab hosts (tests/lab/hosts.py), each with G guests that are
defined and never started, for the inventory's fleet tests and the ``fleet`` benchmarks.

Guests are named ``<prefix>-h<host>-<nnn>`` (unique across the fleet, so an inventory keyed by
name lists every one of them) and cost nothing but their definition: 20 hosts with 50
guests each are 20 libvirtd processes and 1,000 small XML files.

CLI (holds the lab lock while it works, like ``python -m tests.lab.hosts``):
``python -m tests.lab.fleet up [HOSTS] [--guests G]`` / ``down``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from . import hosts as lab_hosts
from .guests import defined_only_xml

PREFIX = "fleet"


def guest_names(host: lab_hosts.LabHost, count: int, prefix: str = PREFIX) -> list[str]:
    return [f"{prefix}-h{host.index}-{i:03d}" for i in range(count)]


def populate(lab: lab_hosts.Lab, guests: int, prefix: str = PREFIX) -> dict[str, list[str]]:
    """Define ``guests`` guests on every host of ``lab`` (hosts side by side); URI -> names.

    Guests of an earlier populate with the same names are kept (defining is idempotent).
    """

    def one(host: lab_hosts.LabHost) -> list[str]:
        conn = host.connect()
        try:
            names = guest_names(host, guests, prefix)
            for name in names:
                conn.defineXML(defined_only_xml(name))
            return names
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(lab.uris, pool.map(one, lab.hosts)))


def up(count: int, guests: int, owner: str = "cli") -> lab_hosts.Lab:
    """Start ``count`` lab hosts with ``guests`` defined guests each (lab lock held by caller)."""
    lab = lab_hosts.up(count, owner=owner)
    try:
        populate(lab, guests)
    except BaseException:
        lab_hosts.down(lab)
        raise
    return lab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.fleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up_p = sub.add_parser("up", help="start HOSTS lab hosts with --guests defined guests each")
    up_p.add_argument("count", nargs="?", type=int, default=20)
    up_p.add_argument("--guests", type=int, default=50)
    sub.add_parser("down", help="stop the lab hosts")
    args = parser.parse_args(argv)
    with lab_hosts.lab_lock(timeout=60):
        if args.command == "down":
            lab_hosts.down()
            return 0
        started = time.monotonic()
        lab = up(args.count, args.guests)
        took = time.monotonic() - started
    print(f"{len(lab.hosts)} hosts, {args.guests} guests each, up in {took:.1f} s", file=sys.stderr)
    print(json.dumps({"uris": lab.uris, "seconds": round(took, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
