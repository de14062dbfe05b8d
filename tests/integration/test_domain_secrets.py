"""Console passwords never leave the host, and other console changes keep them (issue 14).

A guest with a VNC password is changed in ways that do not name the password (memory, the
console's listen address), with ``--diff``, in check mode and at -vvv; the password must show
in no output in any form, and the stored definition must still hold it.
"""

from __future__ import annotations

import json

import libvirt
import pytest
from lxml import etree

from devtools.libvirt_cleanup import remove_domain

# 8 characters (the VNC limit) that XML and JSON both escape
PASSWORD = "N&e<\"w'9"
LEAKS = (
    "N&e<",  # raw, and the JSON form (which escapes only the quote)
    "N&amp;e&lt;",  # XML-escaped, in any attribute or text quoting
    "N\\u0026e\\u003c",  # JSON with HTML-safe escapes
    "N&#38;e&#60;",
    'e<\\"w',  # the JSON-escaped middle
    "e&lt;&quot;w",
)
VERBOSE = {"ANSIBLE_VERBOSITY": "3"}


@pytest.fixture
def guest(conn, name_prefix):
    name = f"{name_prefix}-sec"
    yield name
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    remove_domain(dom)


def stored_graphics(conn, name: str):
    xml = conn.lookupByName(name).XMLDesc(
        libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    )
    return etree.fromstring(xml).find("devices/graphics")


def assert_no_leak(run) -> None:
    texts = {
        "stdout": run.stdout,
        "stderr": run.stderr,
        "results": json.dumps(run.results),
        "results (ascii)": json.dumps(run.results, ensure_ascii=True),
    }
    for where, text in texts.items():
        for leak in LEAKS:
            assert leak not in text, f"{leak!r} in {where}"


def spec(name: str, **extra) -> dict:
    return {"name": name, "virt_type": "qemu", "memory": 64, "max_memory": 128, "vcpus": 1, **extra}


def task(name: str, args: dict, **keywords) -> dict:
    return {"name": name, "virtops.kvm.domain": args, **keywords}


@pytest.mark.integration
def test_console_password_is_kept_and_never_shown(playbook, conn, guest):
    console = {"type": "vnc", "listen": "127.0.0.1", "password": PASSWORD}
    moved = {"type": "vnc", "listen": "0.0.0.0"}
    run = playbook(
        [
            task("create", spec(guest, graphics=console)),
            task("memory check", spec(guest, memory=80), check_mode=True, diff=True),
            task("memory", spec(guest, memory=80), diff=True),
            task("listen check", spec(guest, memory=80, graphics=moved), check_mode=True),
            task("listen", spec(guest, memory=80, graphics=moved), diff=True),
            task("listen again", spec(guest, memory=80, graphics=moved), diff=True),
            task(
                "same password",
                spec(guest, memory=80, graphics=dict(moved, password=PASSWORD)),
                diff=True,
            ),
            {
                "name": "info",
                "virtops.kvm.domain_info": {"name": guest, "include_xml": True},
            },
        ],
        env=VERBOSE,
    )
    assert run.rc == 0, run.stdout[-3000:]
    assert_no_leak(run)
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in run.stdout  # -vvv showed the arguments

    assert run.task("memory check")["changes"] == ["memory"]
    assert run.task("memory")["changes"] == ["memory"]
    listen = run.task("listen")
    assert listen["changed"] is True and listen["changes"] == ["graphics"]
    before, after = listen["diff"]["before"]["graphics"], listen["diff"]["after"]["graphics"]
    assert (before["listen"], after["listen"]) == ("127.0.0.1", "0.0.0.0")
    assert "password" not in after  # not managed in this run, so not compared
    assert run.task("listen again")["changed"] is False
    same = run.task("same password")
    assert same["changed"] is False
    password = same["diff"]["after"]["graphics"]["password"]
    assert password.startswith("secret:")
    assert same["diff"]["before"]["graphics"]["password"] == password
    for name in ("memory", "listen", "same password"):
        assert "passwd" not in run.task(name)["xml"]
    info = run.task("info")["guests"][0]
    assert "passwd" not in info["xml"]
    assert "password" not in info["config"]["graphics"]

    graphics = stored_graphics(conn, guest)
    assert graphics.get("passwd") == PASSWORD
    assert graphics.get("listen") == "0.0.0.0"


@pytest.mark.integration
def test_check_and_diff_flags_and_errors_do_not_show_it(playbook, conn, guest):
    console = {"type": "vnc", "listen": "127.0.0.1", "password": PASSWORD}
    assert playbook([task("create", spec(guest, graphics=console))]).rc == 0
    moved = {"type": "vnc", "listen": "0.0.0.0"}
    run = playbook(
        [
            task("listen", spec(guest, graphics=moved)),
            task("memory", spec(guest, memory=96)),
            task(
                "too long",
                spec(guest, graphics=dict(moved, password=PASSWORD + "X")),
                ignore_errors=True,
            ),
        ],
        check=True,
        diff=True,
        env=VERBOSE,
    )
    assert_no_leak(run)
    assert run.task("listen")["changes"] == ["graphics"]
    assert run.task("memory")["changes"] == ["memory"]
    failed = run.task("too long")
    assert [e["status"] for e in run.results if e["task"] == "too long"] == ["failed"]
    assert "graphics.password" in failed["msg"] and "at most 8" in failed["msg"]
    graphics = stored_graphics(conn, guest)  # check mode changed nothing
    assert (graphics.get("passwd"), graphics.get("listen")) == (PASSWORD, "127.0.0.1")


@pytest.mark.integration
def test_empty_password_removes_it(playbook, conn, guest):
    console = {"type": "vnc", "listen": "127.0.0.1", "password": PASSWORD}
    removed = {"type": "vnc", "listen": "127.0.0.1", "password": ""}
    run = playbook(
        [
            task("create", spec(guest, graphics=console)),
            task("remove", spec(guest, graphics=removed), diff=True),
            task("remove again", spec(guest, graphics=removed)),
        ]
    )
    assert run.rc == 0, run.stdout[-3000:]
    assert_no_leak(run)
    assert run.task("remove")["changes"] == ["graphics"]
    assert run.task("remove again")["changed"] is False
    assert stored_graphics(conn, guest).get("passwd") is None
