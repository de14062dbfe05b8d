"""The domain and domain_info modules end to end in-process, on libvirt's test driver."""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.modules import domain, domain_info

URI = "test:///default"


def test_check_mode_creates_nothing_and_predicts(module_runner):
    args = {
        "uri": URI,
        "name": "new1",
        "virt_type": "qemu",
        "memory": "256MiB",
        "state": "running",
        "memory_guard": False,
    }
    result = module_runner(domain, args, check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["state"] == "running"
    assert result["diff"]["before"]["state"] == "absent"
    assert result["diff"]["after"]["memory"] == 256
    assert '<currentMemory unit="KiB">262144</currentMemory>' in result["xml"]


def test_bad_memory_fails_with_message(module_runner):
    args = {"uri": URI, "name": "new1", "memory": "2GiB", "max_memory": "1GiB"}
    result = module_runner(domain, args)
    assert result["failed"] is True
    assert "max_memory (1024 MiB) is below memory (2048 MiB)" in result["msg"]


def test_memory_guard(module_runner):
    # the test driver's host has 3 GiB and almost nothing free
    args = {"uri": URI, "name": "new1", "virt_type": "qemu", "memory": "1GiB", "state": "running"}
    result = module_runner(domain, args, check_mode=True)
    assert result["failed"] is True and "more than the host has free" in result["msg"]
    result = module_runner(domain, dict(args, memory="8GiB", state="present"), check_mode=True)
    assert result["failed"] is True and "more than the host has (" in result["msg"]
    result = module_runner(domain, dict(args, memory_guard=False), check_mode=True)
    assert result["changed"] is True


def test_absent_unknown_is_unchanged(module_runner):
    result = module_runner(domain, {"uri": URI, "name": "nope", "state": "absent"})
    assert result["changed"] is False and result["state"] == "absent"


def test_info_lists_the_test_guest(module_runner):
    result = module_runner(domain_info, {"uri": URI, "include_xml": True})
    [guest] = result["guests"]
    assert guest["name"] == "test" and guest["state"] == "running"
    assert guest["config"]["max_memory"] == 8192
    assert guest["interfaces"][0]["mac"] == "aa:bb:cc:dd:ee:ff"
    assert guest["xml"].startswith("<domain")
