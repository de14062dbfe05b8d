"""The migrate module end to end in-process, against libvirt's test driver (which cannot migrate:
these tests cover option handling and the refusals that come before any migration)."""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.modules import migrate

TEST_URI = "test:///default"


def test_contradictory_options_fail_before_connecting(module_runner):
    result = module_runner(
        migrate,
        {
            "uri": "qemu+tcp://198.18.0.250/system",  # never contacted
            "name": "test",
            "dest_uri": "qemu+tcp://198.18.0.251/system",
            "mode": "offline",
            "max_downtime": 100,
        },
    )
    assert result["failed"] is True
    assert "max_downtime apply to live" in result["msg"]


def test_dest_uri_and_candidates_are_exclusive(module_runner):
    result = module_runner(
        migrate,
        {"uri": TEST_URI, "name": "test", "dest_uri": TEST_URI, "dest_candidates": [TEST_URI]},
    )
    assert result["failed"] is True
    assert "mutually exclusive" in result["msg"]


def test_the_source_host_is_not_a_destination(module_runner):
    result = module_runner(migrate, {"uri": TEST_URI, "name": "test", "dest_uri": TEST_URI})
    assert result["failed"] is True
    assert "is the source host itself" in result["msg"]


def test_no_candidate_besides_the_source(module_runner):
    result = module_runner(
        migrate,
        {"uri": TEST_URI, "name": "test", "dest_candidates": [TEST_URI]},
        check_mode=True,
    )
    assert result["failed"] is True
    assert "No destination can take guest test" in result["msg"]
    assert result["placement"][0]["reasons"] == ["it is the source host itself"]


def test_verify_agent_of_an_offline_move_and_a_negative_timeout_fail_before_connecting(
    module_runner,
):
    result = module_runner(
        migrate,
        {
            "uri": "qemu+tcp://198.18.0.250/system",  # never contacted
            "name": "test",
            "dest_uri": "qemu+tcp://198.18.0.251/system",
            "mode": "offline",
            "verify_agent": True,
            "timeout": -1,
        },
    )
    assert result["failed"] is True
    assert "verify_agent needs mode=live" in result["msg"]
    assert "timeout cannot be negative" in result["msg"]
