"""Live migration of a running tiny guest between two lab hosts (shared storage)."""

from __future__ import annotations

import time

import pytest

from tests.lab.guests import HeartbeatWatch

pytestmark = [pytest.mark.lab, pytest.mark.multihost]


def test_live_migration_keeps_the_heartbeat(lab_hosts, tiny_guest, record_property):
    import libvirt  # noqa: PLC0415

    source, dest = lab_hosts.hosts[0], lab_hosts.hosts[1]
    # not closed here: tiny_guest's teardown removes the guest through guest.conn
    src_conn, dst_conn = source.connect(), dest.connect()
    guest = tiny_guest(conn=src_conn)
    guest.write_marker("where", "written on the source")
    guest.wait_heartbeat(guest.last_heartbeat() + 1, timeout=60)

    with HeartbeatWatch(guest) as watch:
        time.sleep(3)
        before = guest.last_heartbeat()
        started = time.monotonic()
        # The hosts share the guest's files (same path, same filesystem) but libvirt only
        # trusts network filesystems as shared, hence UNSAFE; no storage is copied.
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_UNSAFE
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        )
        moved = guest.dom.migrate3(
            dst_conn, {libvirt.VIR_MIGRATE_PARAM_URI: dest.migrate_uri}, flags
        )
        ended = time.monotonic()
        guest.conn = dst_conn
        after = guest.wait_heartbeat(guest.last_heartbeat() + 2, timeout=60)

    assert [d.name() for d in src_conn.listAllDomains()] == []
    assert moved.isActive()
    stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    gap = watch.max_gap(started, ended)
    record_property("migration_call_s", round(ended - started, 2))
    record_property("migration_time_elapsed_ms", stats.get("time_elapsed"))
    record_property("migration_downtime_ms", stats.get("downtime"))
    record_property("heartbeat_max_gap_s", round(gap, 2))

    beats = [beat for _t, beat in watch.seen]
    assert beats == sorted(beats), "the heartbeat went backwards"
    assert after > before, "the destination continues the source's counter"
    assert guest.heartbeats()[-1] == after
    assert gap < 5, f"heartbeat stalled {gap:.1f} s during migration"
    assert guest.read_marker("where") == "written on the source"
    assert guest.run("echo on $(hostname)") == (0, "on tiny\n")
