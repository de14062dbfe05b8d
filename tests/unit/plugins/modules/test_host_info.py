"""host_info run in-process against libvirt's test driver."""

from __future__ import annotations

import libvirt

from ansible_collections.virtops.kvm.plugins.module_utils._host import SECTIONS
from ansible_collections.virtops.kvm.plugins.modules import host_info

TEST_URI = "test:///default"


def test_all_sections(module_runner):
    result = module_runner(host_info, {"uri": TEST_URI})
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    host = result["host"]
    conn = libvirt.open(TEST_URI)
    try:
        assert host["hostname"] == conn.getHostname()
        major, rest = divmod(conn.getLibVersion(), 1000000)
        assert host["versions"]["libvirt_daemon"] == f"{major}.{rest // 1000}.{rest % 1000}"
        assert host["versions"]["hypervisor_type"] == "TEST"
        assert host["cpu"]["count"] == conn.getInfo()[2]
        assert host["guests"]["total"] == len(conn.listAllDomains())
        assert [p["name"] for p in host["storage_pools"]] == sorted(
            p.name() for p in conn.listAllStoragePools()
        )
        assert [n["name"] for n in host["networks"]] == sorted(
            n.name() for n in conn.listAllNetworks()
        )
    finally:
        conn.close()
    assert host["local"] is False
    assert host["kvm_usable"] is False  # the test driver offers no kvm domain type
    assert host["recommended_virt_type"] == "qemu"
    assert host["kvm_reasons"]
    assert [c["id"] for c in host["cpu"]["numa_cells"]] == [0, 1]
    assert host["memory"]["total_bytes"] > 0
    assert host["resctrl"]["available"] is False
    # The test driver has no domain capabilities: named, not failed.
    assert set(host["unavailable"]) == {"machines", "firmware"}
    assert "machines" not in host


def test_gather_subset_in_check_mode(module_runner):
    result = module_runner(host_info, {"uri": TEST_URI, "gather": ["guests"]}, check_mode=True)
    assert result["changed"] is False
    host = result["host"]
    assert "guests" in host
    for section in SECTIONS:
        if section != "guests":
            assert section not in host
    assert "kvm_usable" not in host


def test_bad_gather_value_fails(module_runner):
    result = module_runner(host_info, {"uri": TEST_URI, "gather": ["cpu", "gpu"]})
    assert result["failed"] is True
    assert "gpu" in result["msg"]


def test_uri_from_environment(module_runner, monkeypatch):
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", TEST_URI)
    result = module_runner(host_info, {"gather": ["versions"]})
    assert result["host"]["uri"] == TEST_URI
    assert result["host"]["versions"]["hypervisor_type"] == "TEST"


def test_unreachable_uri_fails_with_libvirt_code(module_runner):
    result = module_runner(
        host_info, {"uri": "bogus+driver:///nowhere", "connect_timeout": 0, "gather": ["cpu"]}
    )
    assert result["failed"] is True
    assert "Failed to connect to libvirt at bogus+driver:///nowhere" in result["msg"]
    assert isinstance(result["libvirt_error_code"], int)
    assert result["libvirt_error_name"].startswith("VIR_ERR_")
