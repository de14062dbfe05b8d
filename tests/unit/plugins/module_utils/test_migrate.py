"""Unit tests of the migrate logic against fake hosts (libvirt's test driver cannot migrate)."""

from __future__ import annotations

import json
import threading
import time

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmError,
    KvmLibvirtError,
    KvmValidationError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._migrate import Migrator
from ansible_collections.virtops.kvm.plugins.module_utils._migrate_job import (
    JobPolicy,
    MigrationJob,
)
from ansible_collections.virtops.kvm.plugins.module_utils._migrate_options import (
    build_call,
    default_migrate_uri,
    default_timeout,
    validate,
    volume_xml,
)
from ansible_collections.virtops.kvm.plugins.module_utils._migrate_place import (
    Candidate,
    Disk,
    GuestNeeds,
    HostMemory,
    choose,
)
from ansible_collections.virtops.kvm.plugins.module_utils._migrate_result import Progress

from .migrate_fakes import DST, GUEST_XML, SRC, FakeHost, FakeKvm, error, move, opener_for, params

DST2 = "qemu+tcp://198.18.0.13/system"
UUID = "11111111-2222-3333-4444-555555555555"
DISK = "/var/lib/libvirt/images/g.qcow2"


@pytest.fixture
def hosts():
    return {
        SRC: FakeHost(SRC),
        DST: FakeHost(DST, pools={"images": "/var/lib/libvirt/images"}),
        DST2: FakeHost(DST2, pools={"images": "/var/lib/libvirt/images"}),
    }


def migrator(hosts, *, check_mode=False, diff_mode=False, **overrides):
    kvm = FakeKvm(params(**overrides), hosts[SRC], check_mode=check_mode, diff_mode=diff_mode)
    return Migrator(kvm, opener=opener_for(hosts))


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "offline", "max_downtime": 100}, "max_downtime apply to live"),
        ({"mode": "offline", "storage_copy": "all"}, "storage_copy apply to live"),
        ({"mode": "offline", "persistent": False}, "needs persistent=true"),
        ({"tunnelled": True, "peer2peer": False}, "tunnelled=true needs peer2peer=true"),
        ({"tunnelled": True, "migrate_uri": "tcp://x"}, "migrate_uri cannot be used"),
        ({"postcopy_after_iterations": 3}, "need postcopy=true"),
        ({"postcopy": True, "timeout_action": "postcopy"}, "needs a timeout"),
        ({"bandwidth": 0}, "bandwidth must be greater than 0"),
        ({"copy_disks": ["vda"]}, "copy_disks needs storage_copy"),
        ({"auto_converge_initial": 20}, "needs auto_converge=true"),
        ({"auto_converge": True, "auto_converge_increment": 150}, "between 1 and 100"),
        ({"dest_uri": None, "dest_candidates": []}, "dest_candidates is empty"),
        ({"timeout": -1}, "timeout cannot be negative"),
        ({"mode": "offline", "verify_agent": True}, "verify_agent needs mode=live"),
        ({"verify_agent": True, "verify_agent_timeout": 0}, "verify_agent_timeout must be"),
    ],
)
def test_validate_refuses_contradictions(overrides, message):
    with pytest.raises(KvmValidationError, match=message):
        validate(params(**overrides))


def test_validate_accepts_a_full_live_request():
    validate(
        params(
            max_downtime=200,
            bandwidth=50,
            auto_converge=True,
            auto_converge_initial=20,
            postcopy=True,
            postcopy_after_iterations=5,
            timeout=60,
            timeout_action="postcopy",
            compression=["xbzrle"],
            parallel_connections=4,
            storage_copy="all",
            copy_disks=["vda"],
        )
    )


def test_build_call_defaults_move_the_guest_for_good():
    flags, mig = build_call(params(), DST)
    want = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    assert flags == want
    assert mig == {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://198.18.0.12"}


def test_build_call_options_become_flags_and_typed_params():
    flags, mig = build_call(
        params(
            storage_copy="incremental",
            bandwidth=5,
            compression=["xbzrle", "mt"],
            parallel_connections=3,
            auto_converge=True,
            postcopy=True,
            tls=True,
            copy_disks=["vda"],
            migrate_uri="tcp://10.0.0.2:49152",
        ),
        DST,
    )
    for name in (
        "NON_SHARED_INC",
        "COMPRESSED",
        "PARALLEL",
        "AUTO_CONVERGE",
        "POSTCOPY",
        "TLS",
    ):
        assert flags & getattr(libvirt, f"VIR_MIGRATE_{name}"), name
    assert not flags & libvirt.VIR_MIGRATE_NON_SHARED_DISK
    assert mig == {
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.0.0.2:49152",
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 5,
        libvirt.VIR_MIGRATE_PARAM_COMPRESSION: ["xbzrle", "mt"],
        libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS: 3,
        libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: ["vda"],
    }


def test_build_call_offline_and_tunnelled_send_no_data_uri():
    flags, mig = build_call(params(mode="offline"), DST)
    assert flags & libvirt.VIR_MIGRATE_OFFLINE and not flags & libvirt.VIR_MIGRATE_LIVE
    assert mig == {}
    flags, mig = build_call(params(tunnelled=True), DST)
    assert flags & libvirt.VIR_MIGRATE_TUNNELLED
    assert libvirt.VIR_MIGRATE_PARAM_URI not in mig


@pytest.mark.parametrize(
    ("uri", "want"),
    [
        ("qemu+ssh://root@kvm2.example.com/system", "tcp://kvm2.example.com"),
        ("qemu+tcp://[fd00::2]/system", "tcp://[fd00::2]"),
        ("qemu:///system", None),
    ],
)
def test_default_migrate_uri(uri, want):
    assert default_migrate_uri(uri) == want


# -- what the guest needs, where it can go ---------------------------------------------------


def test_guest_needs_from_xml():
    xml = GUEST_XML.format(name="g1", uuid=UUID, mem=262144, disk=DISK, net="lab")
    needs = GuestNeeds.from_xml(xml)
    assert (needs.name, needs.uuid, needs.memory_mib) == ("g1", UUID, 256)
    assert needs.networks == ["lab"]
    assert [(d.target, d.copyable) for d in needs.disks] == [("vda", True), ("sda", False)]
    assert needs.cpu_xml is None


def test_volume_xml_keeps_name_size_format_and_base():
    disk = Disk("vda", "/p/top.qcow2", "qcow2", backing_path="/base/b.raw", backing_format="raw")
    xml = volume_xml(disk, 1 << 30, incremental=True)
    assert "<name>top.qcow2</name>" in xml
    assert '<capacity unit="bytes">1073741824</capacity>' in xml
    assert "<path>/base/b.raw</path>" in xml
    assert "backingStore" not in volume_xml(disk, 1, incremental=False)


def _cand(uri, uncommitted, free=10_000, ok=True):
    cand = Candidate(uri, memory=HostMemory(20_000, free, 20_000 - uncommitted))
    if not ok:
        cand.refuse("no")
    return cand


def test_choose_prefers_uncommitted_memory_then_free_then_order():
    a, b, c = _cand("a", 1000), _cand("b", 3000), _cand("c", 3000)
    assert choose([a, b, c]) is b
    d = _cand("d", 3000, free=20_000)
    assert choose([a, b, d]) is d
    assert choose([_cand("x", 9000, ok=False), a]) is a
    assert choose([_cand("x", 9000, ok=False)]) is None


# -- the job watcher -------------------------------------------------------------------------


def test_job_aborts_at_timeout_and_reports_the_error(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = move(hosts[SRC], hosts[DST], seconds=5)
    policy = JobPolicy(timeout=0.2, poll_interval=0.02)
    outcome = MigrationJob(dom, lambda: dom.migrateToURI3(DST, {}, 0), policy).run()
    assert outcome.timed_out and outcome.aborted
    assert isinstance(outcome.error, libvirt.libvirtError)
    assert ("abort", None) in hosts[SRC].calls
    assert outcome.elapsed < 3


def test_job_switches_to_postcopy_after_iterations_and_sets_downtime_once(hosts):
    dom = hosts[SRC].add("g1")
    stats = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "memory_iteration": 4}
    dom.migrate_impl = move(hosts[SRC], hosts[DST], seconds=0.3, stats=stats)
    policy = JobPolicy(max_downtime_ms=123, postcopy_after_iterations=3, poll_interval=0.02)
    samples = []
    job = MigrationJob(
        dom, lambda: dom.migrateToURI3(DST, {}, 0), policy, on_sample=lambda e, s: samples.append(s)
    )
    outcome = job.run()
    assert outcome.ok and outcome.postcopy_started
    assert outcome.postcopy_reason == "4 memory iterations"
    calls = hosts[SRC].calls
    assert calls.count(("max_downtime", 123)) == 1
    assert calls.count(("postcopy", None)) == 1
    assert samples and samples[0]["memory_iteration"] == 4


def _stepped(src, dest, steps, *, completed=None, fail=None):
    """A migrate_impl that shows each job statistics dict of ``steps`` for 0.1 s, then moves
    the guest (or raises ``fail``)."""
    finish = move(src, dest, completed=completed)

    def impl(dom, uri, params, flags):
        for stats in steps:
            dom.stats = dict(stats, type=libvirt.VIR_DOMAIN_JOB_UNBOUNDED)
            time.sleep(0.1)
        dom.stats = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        if fail is not None:
            raise fail
        return finish(dom, uri, params, flags)

    return impl


def test_job_keeps_real_figures_and_peaks_when_the_job_is_torn_down(hosts):
    dom = hosts[SRC].add("g1")
    steps = [
        {},  # setting up: no figures yet
        {"data_total": 100, "data_processed": 10, "auto_converge_throttle": 20},
        {
            "data_total": 100,
            "data_processed": 60,
            "auto_converge_throttle": 40,
            "disk_processed": 4096,
        },
        {"data_total": 100, "data_processed": 70, "auto_converge_throttle": 30},
        {},  # cancelled: libvirt zeroes the figures before the call returns
    ]
    dom.migrate_impl = _stepped(
        hosts[SRC], hosts[DST], steps, fail=error(libvirt.VIR_ERR_OPERATION_ABORTED, "aborted")
    )
    samples = []
    outcome = MigrationJob(
        dom,
        lambda: dom.migrateToURI3(DST, {}, 0),
        JobPolicy(poll_interval=0.02),
        on_sample=lambda e, s: samples.append(s),
    ).run()
    assert isinstance(outcome.error, libvirt.libvirtError)
    assert outcome.last_stats["data_processed"] == 70
    assert outcome.max_throttle == 40 and outcome.max_disk_processed == 4096
    assert samples[0].get("data_total") is None  # the setup sample is reported
    assert samples[-1]["data_processed"] == 70  # the torn-down ones are not


def test_completed_figures_gain_the_peaks_and_compression(hosts):
    dom = hosts[SRC].add("g1")
    steps = [
        {
            "data_total": 100,
            "data_processed": 50,
            "auto_converge_throttle": 35,
            "disk_processed": 8192,
        }
    ]
    completed = {
        "type": libvirt.VIR_DOMAIN_JOB_COMPLETED,
        "time_elapsed": 500,
        "downtime": 30,
        "compression_pages": 3821,
        "compression_bytes": 5656018,
        "compression_cache": 67108864,
        "compression_cache_misses": 9164,
        "compression_overflow": 1355,
    }
    dom.migrate_impl = _stepped(hosts[SRC], hosts[DST], steps, completed=completed)
    stats = migrator(hosts, auto_converge=True, compression=["xbzrle"]).run()["stats"]
    assert stats["auto_converge_throttle"] == 35
    assert stats["disk_transferred_bytes"] == 8192
    assert stats["compression_pages"] == 3821 and stats["compression_bytes"] == 5656018
    assert stats["compression_cache_bytes"] == 67108864
    assert stats["compression_cache_misses"] == 9164 and stats["compression_overflow"] == 1355


def test_postcopy_refused_by_the_destination_says_why(hosts):
    dom = hosts[SRC].add("g1")
    refused = error(
        libvirt.VIR_ERR_INTERNAL_ERROR,
        "internal error: unable to execute QEMU command 'migrate-set-capabilities': "
        "Postcopy is not supported",
    )
    dom.migrate_impl = _stepped(hosts[SRC], hosts[DST], [], fail=refused)
    with pytest.raises(KvmLibvirtError) as err:
        migrator(hosts, postcopy=True, timeout=5, timeout_action="postcopy").run()
    assert "userfaultfd" in err.value.msg and "still running on the source" in err.value.msg
    assert hosts[SRC].domains["g1"].active and "g1" not in hosts[DST].domains


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_job_reports_an_unexpected_end_of_the_thread(hosts):
    dom = hosts[SRC].add("g1")

    def boom():
        raise ValueError("not a libvirt error")

    outcome = MigrationJob(dom, boom, JobPolicy(poll_interval=0.01)).run()
    assert isinstance(outcome.error, RuntimeError)


def test_progress_writes_json_lines_and_keeps_bounded_samples(tmp_path):
    path = tmp_path / "progress.jsonl"
    logs = []
    progress = Progress("g1", str(path), logs.append)
    for i in range(200):
        progress.sample(i, {"type": 2, "data_total": 100, "data_processed": i % 100})
    progress.event("completed", location=DST)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 201 and len(logs) == 201
    assert lines[5]["percent"] == 5.0 and lines[-1]["event"] == "completed"
    assert len(progress.samples) <= Progress.MAX_SAMPLES
    assert progress.samples[0]["elapsed_s"] == 0 and progress.samples[-1]["elapsed_s"] == 199


# -- the module's work -----------------------------------------------------------------------


def test_live_migration_moves_the_guest_and_reports_figures(hosts, tmp_path):
    dom = hosts[SRC].add("g1")
    completed = {
        "type": libvirt.VIR_DOMAIN_JOB_COMPLETED,
        "time_elapsed": 900,
        "downtime": 42,
        "data_processed": 12345,
        "memory_iteration": 3,
    }
    dom.migrate_impl = move(hosts[SRC], hosts[DST], seconds=0.1, completed=completed)
    progress = tmp_path / "p.jsonl"
    result = migrator(hosts, diff_mode=True, max_downtime=200, progress_file=str(progress)).run()
    assert result["changed"] is True
    assert result["location"] == DST and result["state"] == "running"
    assert result["stats"]["downtime_ms"] == 42
    assert result["stats"]["total_time_ms"] == 900
    assert result["stats"]["memory_iterations"] == 3
    assert result["stats"]["stats_from"] == "destination"
    assert result["stats"]["requested"]["max_downtime_ms"] == 200
    assert result["diff"] == {"before": {"location": SRC}, "after": {"location": DST}}
    assert "g1" not in hosts[SRC].domains and hosts[DST].domains["g1"].active
    call = next(c for c in hosts[SRC].calls if c[0] == "migrateToURI3")
    assert call[1] == DST and call[2] == {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://198.18.0.12"}
    events = [json.loads(line)["event"] for line in progress.read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "completed"


def test_managed_direct_mode_uses_migrate3(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = move(hosts[SRC], hosts[DST])
    result = migrator(hosts, peer2peer=False).run()
    assert result["changed"] and result["location"] == DST
    call = next(c for c in hosts[SRC].calls if c[0].startswith("migrate"))
    assert call[0] == "migrate3"
    assert not call[3] & libvirt.VIR_MIGRATE_PEER2PEER


def test_already_on_the_destination_is_ok(hosts):
    hosts[DST].add("g1")
    result = migrator(hosts).run()
    assert result["changed"] is False and result["location"] == DST
    assert not any(c[0].startswith("migrate") for c in hosts[SRC].calls)


def test_leftover_stopped_definition_on_the_source_is_removed(hosts):
    hosts[DST].add("g1")
    hosts[SRC].add("g1", active=False)
    result = migrator(hosts, check_mode=True).run()
    assert result["changed"] is True and "g1" in hosts[SRC].domains
    result = migrator(hosts).run()
    assert result["changed"] is True and "g1" not in hosts[SRC].domains
    assert migrator(hosts).run()["changed"] is False
    hosts[SRC].add("g1", active=False)
    assert migrator(hosts, undefine_source=False).run()["changed"] is False


def test_check_mode_reports_the_move_and_moves_nothing(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = move(hosts[SRC], hosts[DST])
    result = migrator(hosts, check_mode=True, storage_copy="all").run()
    assert result["changed"] is True and result["dest_uri"] == DST
    assert result["location"] == SRC
    assert result["volumes_created"] == [DISK]
    assert hosts[DST].volumes == {} and hosts[DST].domains == {}
    assert not any(c[0].startswith("migrate") for c in hosts[SRC].calls)


def test_running_on_both_hosts_is_refused(hosts):
    hosts[SRC].add("g1")
    hosts[DST].add("g1")
    with pytest.raises(KvmError, match="running both"):
        migrator(hosts).run()


def test_unknown_guest_and_wrong_state_are_refused(hosts):
    with pytest.raises(KvmValidationError, match="not defined on the source"):
        migrator(hosts).run()
    hosts[SRC].add("g1", active=False)
    with pytest.raises(KvmValidationError, match="not running"):
        migrator(hosts).run()
    hosts[SRC].domains["g1"].active = True
    with pytest.raises(KvmValidationError, match="mode=offline moves only a stopped guest"):
        migrator(hosts, mode="offline").run()


def test_offline_migration_moves_the_definition(hosts):
    dom = hosts[SRC].add("g1", active=False)
    dom.migrate_impl = move(hosts[SRC], hosts[DST])
    result = migrator(hosts, mode="offline").run()
    assert result["changed"] and result["state"] == "shutoff"
    assert hosts[DST].domains["g1"].persistent and "g1" not in hosts[SRC].domains
    assert migrator(hosts, mode="offline").run()["changed"] is False


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda h: h[DST].networks.clear(), "network default does not exist there"),
        (lambda h: setattr(h[DST], "free_mib", 100), "not enough memory"),
        (
            lambda h: h[DST].add("g1", uuid="99999999-0000-0000-0000-000000000000", active=False),
            "another guest named g1",
        ),
    ],
)
def test_destination_checks_refuse_before_anything_changes(hosts, setup, reason):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = move(hosts[SRC], hosts[DST])
    setup(hosts)
    with pytest.raises(KvmValidationError, match=reason) as info:
        migrator(hosts).run()
    assert "nothing was changed" in info.value.msg
    assert not any(c[0].startswith("migrate") for c in hosts[SRC].calls)


def test_cpu_model_the_destination_cannot_run_is_refused(hosts):
    dom = hosts[SRC].add("g1")
    xml = dom.XMLDesc().replace(
        "<devices>", "<cpu mode='custom'><model>Skylake</model></cpu><devices>"
    )
    dom.XMLDesc = lambda flags=0: xml
    hosts[DST].cpu_result = libvirt.VIR_CPU_COMPARE_INCOMPATIBLE
    with pytest.raises(KvmValidationError, match="CPU cannot run"):
        migrator(hosts).run()
    assert migrator(hosts, check_mode=True, check_cpu=False).run()["changed"]


def test_destination_that_is_the_source_host_is_refused(hosts):
    # The source under another URI: the guest shows up on "both" hosts.
    hosts[DST] = hosts[SRC]
    hosts[SRC].add("g1")
    with pytest.raises(KvmValidationError, match="is the source host itself"):
        migrator(hosts).run()
    hosts[SRC].domains["g1"].active = False
    with pytest.raises(KvmValidationError, match="is the source host itself"):
        migrator(hosts, mode="offline").run()
    assert "g1" in hosts[SRC].domains


def test_unreachable_destination_fails_clearly(hosts):
    hosts[SRC].add("g1")
    hosts[DST].alive = False
    with pytest.raises(KvmError, match="is not reachable, nothing was changed"):
        migrator(hosts).run()


def test_candidates_choose_the_roomiest_host_and_skip_the_source(hosts):
    dom = hosts[SRC].add("g1", mem_mib=512)
    hosts[DST].add("big", uuid="22222222-0000-0000-0000-000000000000", mem_mib=4096)
    dom.migrate_impl = move(hosts[SRC], hosts[DST2])
    result = migrator(hosts, dest_uri=None, dest_candidates=[SRC, DST, DST2]).run()
    assert result["dest_uri"] == DST2 and result["location"] == DST2
    by_uri = {c["uri"]: c for c in result["placement"]}
    assert by_uri[SRC]["can_take"] is False
    assert by_uri[DST]["memory_committed_mib"] == 4096


def test_no_candidate_can_take_the_guest(hosts):
    hosts[SRC].add("g1", mem_mib=7000)
    hosts[DST2].alive = False
    with pytest.raises(KvmValidationError, match="No destination can take guest g1") as info:
        migrator(hosts, dest_uri=None, dest_candidates=[DST, DST2]).run()
    reasons = {c["uri"]: c["reasons"] for c in info.value.details["placement"]}
    assert "not enough memory" in reasons[DST][0]
    assert "not reachable" in reasons[DST2][0]


def test_failure_keeps_the_guest_on_the_source_and_cleans_the_destination(hosts):
    dom = hosts[SRC].add("g1")
    dst = hosts[DST]

    def fail_half_way(d, uri, params, flags):
        partial = dst.add("g1", active=True)
        partial.paused = True
        d.paused = True
        raise error(libvirt.VIR_ERR_OPERATION_FAILED, "migration failed: connection reset")

    dom.migrate_impl = fail_half_way
    with pytest.raises(KvmLibvirtError) as info:
        migrator(hosts, storage_copy="all").run()
    msg = info.value.msg
    assert "connection reset" in msg and "still running on the source" in msg
    assert "resumed" in msg
    assert dom.active and not dom.paused
    assert "g1" not in dst.domains
    assert ("vol.create", DISK) in dst.calls and ("vol.delete", DISK) in dst.calls
    assert dst.volumes == {}
    assert info.value.details["location"] == SRC


def test_failure_with_the_destination_gone_says_what_is_left(hosts):
    dom = hosts[SRC].add("g1")
    dst = hosts[DST]

    def destination_dies(d, uri, params, flags):
        dst.alive = False
        raise error(libvirt.VIR_ERR_OPERATION_FAILED, "Unable to read from monitor")

    dom.migrate_impl = destination_dies
    with pytest.raises(KvmLibvirtError, match="not reachable, so it could not be cleaned up"):
        migrator(hosts, storage_copy="all").run()
    assert dom.active


def test_timeout_aborts_and_the_guest_stays(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = move(hosts[SRC], hosts[DST], seconds=5)
    with pytest.raises(KvmLibvirtError, match="timed out after 1 s") as info:
        migrator(hosts, timeout=1).run()
    assert "still running on the source" in info.value.msg
    assert dom.active and "g1" not in hosts[DST].domains
    assert info.value.details["events"] == ["timeout of 1 s reached", "job aborted"]


def test_error_after_the_guest_arrived_is_not_a_failure(hosts):
    dom = hosts[SRC].add("g1")
    inner = move(hosts[SRC], hosts[DST])

    def arrived_then_error(d, uri, params, flags):
        inner(d, uri, params, flags)
        raise error(libvirt.VIR_ERR_RPC, "connection closed during finish")

    dom.migrate_impl = arrived_then_error
    result = migrator(hosts).run()
    assert result["changed"] and result["location"] == DST
    assert "connection closed during finish" in result["warnings"][0]


# -- success needs both hosts' word (issue 13) -----------------------------------------------


def _arrive_then_lose_the_source(src, dest, *, keep_source_definition=False, dest_paused=False):
    """A migrate_impl: the guest arrives on ``dest``, then the source connection breaks."""

    def impl(dom, uri, params, flags):
        moved = dest.add(dom.name(), uuid=dom.uuid)
        moved.paused = dest_paused
        dom.active = False
        if not keep_source_definition:
            src.domains.pop(dom.name(), None)
        src.alive = False
        raise error(libvirt.VIR_ERR_SYSTEM_ERROR, "End of file while reading data")

    return impl


def test_source_lost_with_the_guest_running_on_the_destination_is_a_failure(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = _arrive_then_lose_the_source(hosts[SRC], hosts[DST])
    with pytest.raises(KvmLibvirtError) as info:
        migrator(hosts).run()
    msg = info.value.msg
    assert f"Guest g1 is running on {DST}" in msg
    assert f"the source {SRC} cannot be reached to confirm" in msg
    details = info.value.details
    assert details["location"] == DST and details["state"] == "running"
    assert details["source_state"].startswith("unknown") and details["changed"] is True
    assert hosts[DST].domains["g1"].active  # the only copy is left alone
    assert ("destroy", "g1") not in hosts[DST].calls


def test_source_connection_lost_but_the_host_confirms_the_guest_is_gone(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = _arrive_then_lose_the_source(hosts[SRC], hosts[DST])
    again = FakeHost(SRC)  # a fresh connection to the same host
    again.domains = hosts[SRC].domains
    result = migrator(dict(hosts, **{SRC: again})).run()
    assert result["changed"] and result["location"] == DST and result["state"] == "running"
    assert "End of file" in result["warnings"][0]


def test_leftover_source_definition_is_removed_when_the_job_was_cut_short(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = _arrive_then_lose_the_source(
        hosts[SRC], hosts[DST], keep_source_definition=True
    )
    again = FakeHost(SRC)
    again.domains = hosts[SRC].domains
    result = migrator(dict(hosts, **{SRC: again})).run()
    assert result["location"] == DST
    assert "g1" not in hosts[SRC].domains and ("undefine", "g1") in hosts[SRC].calls
    assert any("was removed (undefine_source=true)" in w for w in result["warnings"])


def test_leftover_source_definition_stays_without_undefine_source(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = _arrive_then_lose_the_source(
        hosts[SRC], hosts[DST], keep_source_definition=True
    )
    again = FakeHost(SRC)
    again.domains = hosts[SRC].domains
    result = migrator(dict(hosts, **{SRC: again}), undefine_source=False).run()
    assert result["location"] == DST
    assert not hosts[SRC].domains["g1"].active and hosts[SRC].domains["g1"].persistent


def test_guest_paused_on_the_destination_is_not_a_success(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = _arrive_then_lose_the_source(hosts[SRC], hosts[DST], dest_paused=True)
    again = FakeHost(SRC)
    again.domains = hosts[SRC].domains
    with pytest.raises(KvmLibvirtError) as info:
        migrator(dict(hosts, **{SRC: again})).run()
    assert f"Guest g1 is paused on {DST} and not there on the source {SRC}" in info.value.msg
    assert info.value.details["location"] == DST and info.value.details["state"] == "paused"
    assert hosts[DST].domains["g1"].active and ("destroy", "g1") not in hosts[DST].calls


def test_running_on_the_destination_and_paused_on_the_source_resumes_nothing(hosts):
    dom = hosts[SRC].add("g1")

    def switched_over_then_failed(d, uri, params, flags):
        hosts[DST].add("g1")
        d.paused = True  # what QEMU leaves on the source after the switch-over
        raise error(libvirt.VIR_ERR_OPERATION_FAILED, "confirm phase failed")

    dom.migrate_impl = switched_over_then_failed
    with pytest.raises(KvmLibvirtError) as info:
        migrator(hosts).run()
    assert "do not resume it on the source" in info.value.msg
    assert info.value.details["location"] == DST
    assert dom.paused and hosts[DST].domains["g1"].active
    assert ("destroy", "g1") not in hosts[DST].calls


def test_stuck_job_after_a_refused_abort_is_bounded(hosts):
    dom = hosts[SRC].add("g1")
    release = threading.Event()

    def never_ends(d, uri, params, flags):
        d.stats = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "memory_iteration": 1}
        release.wait(30)
        raise error(libvirt.VIR_ERR_OPERATION_ABORTED, "too late")

    def refuse():
        raise error(libvirt.VIR_ERR_OPERATION_INVALID, "cannot abort in this phase")

    dom.migrate_impl = never_ends
    dom.abortJob = refuse
    m = migrator(hosts, timeout=1)
    m.abort_grace = 0.5
    began = time.monotonic()
    try:
        with pytest.raises(KvmLibvirtError) as info:
            m.run()
    finally:
        release.set()
    assert time.monotonic() - began < 5
    msg = info.value.msg
    assert "had not ended 0.5 s after it was aborted" in msg and "cannot abort" in msg
    assert "still running on the source" in msg and "was not resumed" in msg
    assert info.value.details["location"] == SRC


def test_job_with_a_hanging_abort_returns_in_bounded_time(hosts):
    dom = hosts[SRC].add("g1")
    release = threading.Event()

    def hang():
        release.wait(30)

    dom.abortJob = hang
    dom.migrate_impl = lambda d, uri, params, flags: release.wait(30)
    policy = JobPolicy(timeout=0.2, poll_interval=0.02, abort_grace=0.5, abort_call_wait=0.2)
    try:
        outcome = MigrationJob(dom, lambda: dom.migrateToURI3(DST, {}, 0), policy).run()
    finally:
        release.set()
    assert outcome.stuck and not outcome.aborted and outcome.elapsed < 3
    assert "did not answer within 0.2 s" in outcome.warnings[0]
    assert "job still not ended 0.5 s after the abort" in outcome.events


def test_default_timeout_scales_with_the_data_to_send():
    needs = GuestNeeds("g1", UUID, memory_kib=1024 * 1024)
    assert default_timeout(params(), needs) == 600 + 64
    assert default_timeout(params(bandwidth=2), needs) == 600 + 512
    assert default_timeout(params(storage_copy="all"), needs, 16 << 30) == 600 + 64 + 1024
    assert default_timeout(params(mode="offline"), needs) == 600


def test_the_default_timeout_applies_and_zero_means_none(hosts):
    dom = hosts[SRC].add("g1", mem_mib=256)
    dom.migrate_impl = move(hosts[SRC], hosts[DST])
    assert migrator(hosts).run()["stats"]["requested"]["timeout_s"] == 600 + 16
    hosts[SRC].add("g2", uuid="22222222-0000-0000-0000-000000000000").migrate_impl = move(
        hosts[SRC], hosts[DST]
    )
    assert migrator(hosts, name="g2", timeout=0).run()["stats"]["requested"]["timeout_s"] is None


def _agent(answers):
    """A fake qemuAgentCommand: each call takes the next answer (an exception or a reply)."""
    calls = []

    def agent(dom, command, timeout, flags):
        calls.append((dom.name(), command, timeout))
        answer = answers.pop(0) if answers else answers_last[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    answers_last = [answers[-1]]
    agent.calls = calls
    return agent


def test_verify_agent_waits_for_the_agent_on_the_destination(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = move(hosts[SRC], hosts[DST])
    agent = _agent(
        [error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "agent not connected"), '{"return":{}}']
    )
    kvm = FakeKvm(params(verify_agent=True, verify_agent_timeout=10), hosts[SRC])
    result = Migrator(kvm, opener=opener_for(hosts), agent=agent).run()
    assert result["location"] == DST and 0.9 < result["verified_agent_s"] < 5
    assert agent.calls[-1][:2] == ("g1", '{"execute":"guest-ping"}')
    assert hosts[DST].domains["g1"] is not dom  # asked on the destination


def test_verify_agent_failure_names_where_the_guest_is(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = move(hosts[SRC], hosts[DST])
    agent = _agent([error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "agent not connected")])
    kvm = FakeKvm(params(verify_agent=True, verify_agent_timeout=2), hosts[SRC])
    with pytest.raises(KvmError) as info:
        Migrator(kvm, opener=opener_for(hosts), agent=agent).run()
    msg = info.value.msg
    assert f"Guest g1 moved to {DST} and is running there" in msg
    assert "did not answer a ping within 2 s (agent not connected)" in msg
    assert info.value.details["location"] == DST and info.value.details["changed"] is True
    assert hosts[DST].domains["g1"].active and len(agent.calls) >= 2


def test_verify_agent_without_an_agent_fails_at_once(hosts):
    dom = hosts[SRC].add("g1")
    dom.migrate_impl = move(hosts[SRC], hosts[DST])
    agent = _agent(
        [error(libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, "QEMU guest agent is not configured")]
    )
    kvm = FakeKvm(params(verify_agent=True, verify_agent_timeout=30), hosts[SRC])
    began = time.monotonic()
    with pytest.raises(KvmError, match="agent is not configured"):
        Migrator(kvm, opener=opener_for(hosts), agent=agent).run()
    assert time.monotonic() - began < 5 and len(agent.calls) == 1
