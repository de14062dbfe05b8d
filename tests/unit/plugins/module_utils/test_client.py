"""The module wrapper: common options, imports, connection retries, the one fail_json."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from types import SimpleNamespace

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _client
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmLibvirtError,
    KvmValidationError,
    from_libvirt,
)
from tests.module_runner import keep_tracebacks, patch_module_args

TEST_URI = "test:///default"


def libvirt_error(code: int, message: str = "boom", domain: int = 0) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return exc


class FlakyOpener:
    """Fails with ``codes`` in turn, then returns a connection; records each URI."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes)
        self.calls: list[str] = []

    def __call__(self, uri: str):
        self.calls.append(uri)
        if self.codes:
            raise libvirt_error(self.codes.pop(0), f"attempt {len(self.calls)} failed")
        return SimpleNamespace(uri=uri)


@pytest.fixture
def tracebacks_on(monkeypatch):
    """Make fail_json keep tracebacks, as ansible-playbook -vvv or DISPLAY_TRACEBACK does."""
    keep_tracebacks(monkeypatch)


def run_main(main, args):
    """Run ``main`` as a module with ``args``; return the JSON it printed."""
    out = io.StringIO()
    with patch_module_args(args), redirect_stdout(out), pytest.raises(SystemExit):
        main()
    return json.loads(out.getvalue())


# --- open_connection ------------------------------------------------------------------------


def test_transient_errors_are_retried_without_real_sleeping():
    sleeps: list[float] = []
    opener = FlakyOpener(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_NO_CONNECT)
    conn = _client.open_connection("qemu:///system", timeout=30, sleep=sleeps.append, opener=opener)
    assert conn.uri == "qemu:///system"
    assert opener.calls == ["qemu:///system"] * 3
    assert sleeps == [0.25, 0.5]  # backs off


def test_transient_errors_give_up_at_the_timeout():
    sleeps: list[float] = []
    opener = FlakyOpener(*[libvirt.VIR_ERR_SYSTEM_ERROR] * 10)
    with pytest.raises(KvmLibvirtError) as err:
        _client.open_connection("qemu:///system", timeout=0.9, sleep=sleeps.append, opener=opener)
    # 0.25 and 0.5 fit in 0.9 s; the next back-off (1 s) would not, so it stops at attempt 3.
    assert sleeps == [0.25, 0.5]
    assert err.value.details["attempts"] == 3
    assert err.value.code == libvirt.VIR_ERR_SYSTEM_ERROR
    assert err.value.msg == "Failed to connect to libvirt at qemu:///system: attempt 3 failed"


def test_non_transient_error_is_not_retried():
    sleeps: list[float] = []
    opener = FlakyOpener(libvirt.VIR_ERR_AUTH_FAILED)
    with pytest.raises(KvmLibvirtError) as err:
        _client.open_connection("qemu:///system", timeout=30, sleep=sleeps.append, opener=opener)
    assert opener.calls == ["qemu:///system"]
    assert sleeps == []
    assert err.value.code_name == "VIR_ERR_AUTH_FAILED"
    assert err.value.details["attempts"] == 1


def test_opener_returning_none_fails():
    with pytest.raises(KvmLibvirtError, match="Failed to connect to libvirt at x:///y"):
        _client.open_connection("x:///y", opener=lambda uri: None)


def test_real_test_driver_connection():
    conn = _client.open_connection(TEST_URI, readonly=True)
    try:
        assert conn.getURI() == TEST_URI
        with pytest.raises(libvirt.libvirtError) as err:
            conn.networkDefineXML("<network><name>ro-check</name></network>")
        assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED
    finally:
        conn.close()


# --- KvmModule ------------------------------------------------------------------------------


def test_common_options_are_merged():
    seen = {}

    def main():
        module = _client.KvmModule({"name": {"type": "str", "required": True}})
        seen.update(module.params)
        module.run(lambda m: {"changed": False})

    result = run_main(main, {"name": "guest1"})
    assert result["changed"] is False
    assert seen == {"name": "guest1", "uri": "qemu:///system", "connect_timeout": 30}


def test_module_option_wins_over_common_default():
    seen = {}

    def main():
        module = _client.KvmModule({"connect_timeout": {"type": "int", "default": 5}})
        seen.update(module.params)
        module.run(lambda m: {"changed": False})

    run_main(main, {})
    assert seen["connect_timeout"] == 5


def test_uri_falls_back_to_libvirt_default_uri(monkeypatch):
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", TEST_URI)

    def main():
        module = _client.KvmModule({}, supports_check_mode=True)
        module.run(lambda m: {"changed": False, "uri": m.conn.getURI()})

    assert run_main(main, {})["uri"] == TEST_URI
    # An explicit option wins over the environment.
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu:///nothing-here")
    assert run_main(main, {"uri": TEST_URI})["uri"] == TEST_URI


def test_one_connection_per_run_and_closed_at_the_end():
    modules = []

    def main():
        module = _client.KvmModule({})
        modules.append(module)

        def body(m):
            first = m.conn
            return {"changed": False, "same": m.conn is first, "uri": first.getURI()}

        module.run(body)

    result = run_main(main, {"uri": TEST_URI})
    assert result["same"] is True and result["uri"] == TEST_URI
    assert modules[0]._conn is None  # closed and dropped after the run


def test_missing_libvirt_python_message(monkeypatch, tracebacks_on):
    monkeypatch.setattr(_client, "LIBVIRT_IMPORT_ERROR", "Traceback: No module named 'libvirt'")

    def main():
        _client.KvmModule({})

    result = run_main(main, {})
    assert result["failed"] is True
    assert "Failed to import the required Python library (libvirt-python)" in result["msg"]
    assert "No module named 'libvirt'" in result["exception"]


def test_missing_lxml_message(monkeypatch):
    monkeypatch.setattr(_client, "LXML_IMPORT_ERROR", "Traceback: No module named 'lxml'")
    result = run_main(lambda: _client.KvmModule({}), {})
    assert result["failed"] is True
    assert "(lxml)" in result["msg"]


def test_fail_json_carries_libvirt_code_and_name(tracebacks_on):
    def main():
        module = _client.KvmModule({})

        def body(m):
            try:
                m.conn.lookupByName("no-such-guest")
            except libvirt.libvirtError as exc:
                raise from_libvirt(exc, "find guest no-such-guest", guest="no-such-guest") from exc
            return {"changed": False}

        module.run(body)

    result = run_main(main, {"uri": TEST_URI})
    assert result["failed"] is True
    assert result["msg"].startswith("Failed to find guest no-such-guest: ")
    assert result["libvirt_error_code"] == libvirt.VIR_ERR_NO_DOMAIN
    assert result["libvirt_error_name"] == "VIR_ERR_NO_DOMAIN"
    assert result["libvirt_error_domain"] == libvirt.VIR_FROM_TEST
    assert result["libvirt_message"] and result["libvirt_message"] in result["msg"]
    assert result["guest"] == "no-such-guest"
    assert "KvmLibvirtError" in result["exception"]  # the traceback is kept


def test_unwrapped_libvirt_error_still_fails_cleanly():
    def main():
        module = _client.KvmModule({})
        module.run(lambda m: m.conn.lookupByName("missing"))

    result = run_main(main, {"uri": TEST_URI})
    assert result["failed"] is True
    assert result["msg"].startswith("Failed to complete a libvirt call: ")
    assert result["libvirt_error_name"] == "VIR_ERR_NO_DOMAIN"


def test_validation_error_fails_without_libvirt_fields():
    def main():
        module = _client.KvmModule({})

        def body(m):
            raise KvmValidationError("memory must be positive", option="memory")

        module.run(body)

    result = run_main(main, {"uri": TEST_URI})
    assert result["failed"] is True
    assert result["msg"] == "memory must be positive"
    assert result["option"] == "memory"
    assert "libvirt_error_code" not in result


def test_connection_failure_reports_code(monkeypatch):
    def main():
        module = _client.KvmModule({})
        module.run(lambda m: {"changed": False, "uri": m.conn.getURI()})

    result = run_main(main, {"uri": "nosuchdriver:///x", "connect_timeout": 0})
    assert result["failed"] is True
    assert result["msg"].startswith("Failed to connect to libvirt at nosuchdriver:///x")
    assert result["libvirt_error_name"] == "VIR_ERR_NO_CONNECT"
    assert result["attempts"] == 1


# --- unexpected exceptions and text XML cannot hold ------------------------------------------


def test_unexpected_exception_is_a_clear_failure_with_the_traceback(tracebacks_on):
    def main():
        module = _client.KvmModule({"name": {"type": "str"}, "state": {"type": "str"}})

        def body(m):
            raise ValueError("All strings must be XML compatible")

        module.run(body)

    result = run_main(main, {"uri": TEST_URI, "name": "web1", "state": "present"})
    assert result["failed"] is True
    assert result["msg"].startswith("Unexpected error in ")
    assert "(name='web1', state='present')" in result["msg"]
    assert "ValueError: All strings must be XML compatible" in result["msg"]
    assert "-vvv" in result["msg"]
    assert result["error_type"] == "ValueError"
    assert 'raise ValueError("All strings must be XML compatible")' in result["exception"]


def test_unexpected_os_error_names_the_option_holding_the_file(tmp_path):
    missing = str(tmp_path / "gone.img")

    def main():
        module = _client.KvmModule({"name": {"type": "str"}, "source_path": {"type": "path"}})

        def body(m):
            with open(m.params["source_path"], "rb"):
                pass

        module.run(body)

    result = run_main(main, {"uri": TEST_URI, "name": "v1", "source_path": missing})
    assert result["failed"] is True
    assert f"option source_path: No such file or directory: {missing}" in result["msg"]
    assert result["option"] == "source_path"
    assert result["errno"] == 2


def test_unexpected_exception_closes_the_connection():
    modules = []

    def main():
        module = _client.KvmModule({})
        modules.append(module)

        def body(m):
            m.conn.getURI()
            raise RuntimeError("boom")

        module.run(body)

    assert run_main(main, {"uri": TEST_URI})["failed"] is True
    assert modules[0]._conn is None


@pytest.mark.parametrize(
    ("args", "option"),
    [
        ({"name": "web\x01"}, "name"),
        ({"title": "a\x1bb"}, "title"),
        ({"disks": [{"path": "/ok"}, {"path": "/x\x00y"}]}, "disks[1].path"),
        ({"tags": ["ok", "b\x7fad\x08"]}, "tags[1]"),
        ({"graphics": {"password": "se\x02cret"}}, "graphics.password"),
    ],
)
def test_control_characters_fail_before_connecting(args, option):
    spec = {
        "name": {"type": "str"},
        "title": {"type": "str"},
        "tags": {"type": "list", "elements": "str"},
        "disks": {"type": "list", "elements": "dict", "options": {"path": {"type": "str"}}},
        "graphics": {"type": "dict", "options": {"password": {"type": "str", "no_log": True}}},
    }
    ran = []

    def main():
        module = _client.KvmModule(spec)
        module.run(lambda m: ran.append(m.conn) or {"changed": True})

    result = run_main(main, {"uri": "nosuchdriver:///x", **args})
    assert result["failed"] is True
    assert result["msg"].startswith(f"Option {option} contains the control character U+")
    assert "libvirt's XML cannot hold; nothing was changed" in result["msg"]
    assert result["option"] == option
    assert ran == []  # failed before the body (and before connecting)
    assert "cret" not in json.dumps(result)  # a secret's value is never echoed


def test_tab_newline_and_unicode_are_fine():
    def main():
        module = _client.KvmModule({"description": {"type": "str"}})
        module.run(lambda m: {"changed": False, "d": m.params["description"]})

    text = "line 1\n\tline 2\r\nGrüße 😀"
    assert run_main(main, {"uri": TEST_URI, "description": text})["d"] == text
