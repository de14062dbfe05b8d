"""devtools/libvirt_cleanup.py: how the tests and the benchmarks remove the guests they made."""

from __future__ import annotations

import libvirt
import pytest

from devtools.libvirt_cleanup import remove_domain, remove_domain_named, undefine_flags


class FakeDomain:
    """A guest that forgets itself once destroyed if it is transient, as libvirt's do."""

    def __init__(self, *, persistent: bool, active: bool, fail_destroy: bool = False):
        self.persistent, self.active, self.fail_destroy = persistent, active, fail_destroy
        self.gone = False
        self.undefined_with: int | None = None

    def _check(self) -> None:
        if self.gone:
            raise libvirt.libvirtError("Domain not found")

    def isPersistent(self) -> bool:
        self._check()
        return self.persistent

    def isActive(self) -> bool:
        self._check()
        return self.active

    def destroy(self) -> None:
        self._check()
        if self.fail_destroy:
            raise libvirt.libvirtError("cannot destroy")
        self.active = False
        self.gone = not self.persistent

    def undefineFlags(self, flags: int) -> None:
        self._check()
        self.undefined_with = flags
        self.gone = True


def test_a_running_persistent_guest_is_destroyed_and_undefined_with_its_metadata():
    dom = FakeDomain(persistent=True, active=True)
    remove_domain(dom)
    assert dom.gone and dom.undefined_with == undefine_flags()
    assert undefine_flags() & libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    assert undefine_flags() & libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA


def test_a_transient_guest_is_only_destroyed():
    dom = FakeDomain(persistent=False, active=True)
    remove_domain(dom)
    assert dom.gone and dom.undefined_with is None


def test_undefine_is_tried_after_a_failed_destroy_and_the_error_raised():
    dom = FakeDomain(persistent=True, active=True, fail_destroy=True)
    with pytest.raises(libvirt.libvirtError, match="cannot destroy"):
        remove_domain(dom)
    assert dom.undefined_with == undefine_flags()


class FakeConn:
    def __init__(self, **domains: FakeDomain):
        self.domains = domains

    def lookupByName(self, name: str) -> FakeDomain:
        if name not in self.domains:
            raise libvirt.libvirtError("Domain not found")
        return self.domains[name]


def test_remove_domain_named_finds_the_guest_on_any_connection_and_ignores_errors():
    here = FakeDomain(persistent=True, active=False)
    stuck = FakeDomain(persistent=False, active=True, fail_destroy=True)
    remove_domain_named([FakeConn(), FakeConn(g=here), FakeConn(g=stuck)], "g")
    assert here.gone and not stuck.gone
