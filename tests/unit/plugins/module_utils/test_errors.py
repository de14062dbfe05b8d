"""Typed errors and the translation of libvirt errors."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmError,
    KvmLibvirtError,
    KvmTimeoutError,
    KvmValidationError,
    error_code_name,
    from_libvirt,
    is_error,
)


@pytest.fixture
def conn():
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def real_error(conn) -> libvirt.libvirtError:
    with pytest.raises(libvirt.libvirtError) as err:
        conn.lookupByName("no-such-guest")
    return err.value


def test_error_hierarchy_and_details():
    for cls in (KvmValidationError, KvmTimeoutError, KvmLibvirtError):
        assert issubclass(cls, KvmError)
    exc = KvmValidationError("bad memory", option="memory", value=-1)
    assert str(exc) == exc.msg == "bad memory"
    assert exc.details == {"option": "memory", "value": -1}


def test_error_code_name():
    assert error_code_name(libvirt.VIR_ERR_NO_DOMAIN) == "VIR_ERR_NO_DOMAIN"
    assert error_code_name(libvirt.VIR_ERR_AUTH_FAILED) == "VIR_ERR_AUTH_FAILED"
    # 1 and 2 are also error *levels* (VIR_ERR_WARNING, VIR_ERR_ERROR): the code names win.
    assert error_code_name(1) == "VIR_ERR_INTERNAL_ERROR"
    assert error_code_name(2) == "VIR_ERR_NO_MEMORY"
    assert error_code_name(None) is None
    assert error_code_name(987654) is None


def test_from_libvirt_keeps_code_domain_and_message(conn):
    exc = real_error(conn)
    err = from_libvirt(exc, "find guest no-such-guest", guest="no-such-guest")
    assert isinstance(err, KvmLibvirtError)
    assert err.code == libvirt.VIR_ERR_NO_DOMAIN
    assert err.code_name == "VIR_ERR_NO_DOMAIN"
    assert err.domain == libvirt.VIR_FROM_TEST
    assert err.libvirt_message == exc.get_error_message()
    assert err.msg == f"Failed to find guest no-such-guest: {exc.get_error_message()}"
    assert err.details == {"guest": "no-such-guest"}


def test_from_libvirt_with_another_exception():
    err = from_libvirt(OSError("disk on fire"), "read a file")
    assert err.msg == "Failed to read a file: disk on fire"
    assert err.code is None and err.code_name is None and err.domain is None


def test_is_error(conn):
    exc = real_error(conn)
    assert is_error(exc, libvirt.VIR_ERR_NO_DOMAIN)
    assert is_error(exc, libvirt.VIR_ERR_NO_NETWORK, libvirt.VIR_ERR_NO_DOMAIN)
    assert not is_error(exc, libvirt.VIR_ERR_NO_NETWORK)
    assert not is_error(ValueError("x"), libvirt.VIR_ERR_NO_DOMAIN)
