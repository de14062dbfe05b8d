"""Read, compute, re-read and compare, write: the guard against lost updates."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._concurrency import (
    ConcurrentChange,
    Guard,
    canonical_definition,
    reconcile,
)
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmConcurrencyError,
    KvmLibvirtError,
    from_libvirt,
)

XML = "<domain type='qemu'><name>g</name><memory unit='KiB'>1024</memory></domain>"


def libvirt_error(code: int) -> libvirt.libvirtError:
    exc = libvirt.libvirtError("boom")
    exc.err = (code, 0, "boom", libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return exc


def test_unchanged_definition_passes_even_when_formatted_differently():
    reformatted = (
        "<domain type='qemu'>\n  <name>g</name>\n  <memory unit='KiB'>1024</memory>\n</domain>"
    )
    Guard("guest g", XML, lambda: reformatted).check()


def test_changed_definition_is_a_concurrent_change():
    changed = XML.replace("1024", "2048")
    with pytest.raises(ConcurrentChange) as err:
        Guard("guest g", XML, lambda: changed).check()
    assert err.value.what == "guest g"


def test_created_meanwhile_and_removed_meanwhile_are_changes():
    with pytest.raises(ConcurrentChange):
        Guard("guest g", None, lambda: XML).check()
    with pytest.raises(ConcurrentChange):
        Guard("guest g", XML, lambda: None).check()
    Guard("guest g", None, lambda: None).check()  # still absent: no change


@pytest.mark.parametrize("wrap", [True, False])
def test_object_gone_on_reread_is_a_change(wrap):
    def reread():
        exc = libvirt_error(libvirt.VIR_ERR_NO_DOMAIN)
        raise from_libvirt(exc, "read guest g") if wrap else exc

    with pytest.raises(ConcurrentChange):
        Guard("guest g", XML, reread).check()


def test_other_reread_errors_propagate():
    def reread():
        raise from_libvirt(libvirt_error(libvirt.VIR_ERR_RPC), "read guest g")

    with pytest.raises(KvmLibvirtError):
        Guard("guest g", XML, reread).check()


def test_ignored_paths_do_not_count():
    pool = "<pool type='dir'><name>p</name><capacity unit='bytes'>{}</capacity></pool>"
    ignore = ("capacity",)
    Guard("pool p", pool.format(1), lambda: pool.format(2), ignore=ignore).check()
    with pytest.raises(ConcurrentChange):
        Guard("pool p", pool.format(1), lambda: pool.format(2)).check()
    assert canonical_definition(None) is None


def test_reconcile_runs_again_once_from_the_new_state():
    calls = []

    def attempt():
        calls.append(len(calls))
        if len(calls) == 1:
            raise ConcurrentChange("guest g")
        return {"attempt": len(calls)}

    assert reconcile(attempt, "guest g") == {"attempt": 2}
    assert calls == [0, 1]


def test_reconcile_fails_clearly_when_it_changes_again():
    calls = []

    def attempt():
        calls.append(1)
        raise ConcurrentChange("guest g")

    with pytest.raises(KvmConcurrencyError) as err:
        reconcile(attempt, "guest g")
    assert len(calls) == 2
    assert err.value.msg.startswith("guest g was changed concurrently by someone else")
    assert "nothing was written" in err.value.msg
    assert err.value.details == {"attempts": 2}
