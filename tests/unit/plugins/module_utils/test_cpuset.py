"""Unit tests of _cpuset: libvirt's cpuset syntax, parsed and written back."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _cpuset
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError


def test_cpuset_canonical():
    assert _cpuset.canonical_cpuset("0,1,2,5") == "0-2,5"
    assert _cpuset.canonical_cpuset("0-3,^2") == "0-1,3"
    with pytest.raises(KvmValidationError):
        _cpuset.parse_cpuset("a-b")
    with pytest.raises(KvmValidationError):
        _cpuset.parse_cpuset("1,^1")


def test_cpuset_exclusions_ranges_and_the_highest_cpu():
    assert _cpuset.parse_cpuset("0-7,^2-5,^7") == {0, 1, 6}
    assert _cpuset.parse_cpuset(" 3 , 1-2 ") == {1, 2, 3}
    assert _cpuset.parse_cpuset(4) == {4}
    assert max(_cpuset.parse_cpuset(f"0-{_cpuset.MAX_CPU_ID}")) == _cpuset.MAX_CPU_ID == 16383


@pytest.mark.parametrize(
    "text", ["0-1000000", "0-99999999999999999999999", "16384", "1,2,^3,0-16384"]
)
def test_cpuset_beyond_libvirts_limit_fails_before_expanding(text):
    with pytest.raises(KvmValidationError, match=r"CPU \d+ is beyond the highest CPU number"):
        _cpuset.parse_cpuset(text, "tuning.emulator_pin")


@pytest.mark.parametrize("text", ["-1", "3-1", "1-", "^", "0x3"])
def test_cpuset_malformed(text):
    with pytest.raises(KvmValidationError, match=r"expected e\.g\. 0-3,\^2,6"):
        _cpuset.parse_cpuset(text)


def test_cpuset_error_does_not_echo_a_huge_input():
    text = "0-3," * 10000 + "99999"
    with pytest.raises(KvmValidationError) as err:
        _cpuset.parse_cpuset(text)
    assert len(err.value.msg) < 200 and "..." in err.value.msg
