"""The connection plugin virtops.kvm.qemu_ga on the fake agent of the _qemu_ga tests: what it
asks the agent to run, standard input small (input-data) and large (a temporary file written
in chunks), the refusal of a become password prompt, and errors as Ansible errors."""

from __future__ import annotations

import base64

import pytest
from ansible.errors import AnsibleConnectionFailure, AnsibleError

from ansible_collections.virtops.kvm.plugins.connection import qemu_ga
from ansible_collections.virtops.kvm.plugins.module_utils._qemu_ga import GuestAgent
from tests.unit.plugins.module_utils.qemu_ga_fakes import FakeAgent, libvirt_error


class Become:
    name = "sudo"

    def __init__(self, prompt: bool):
        self.prompt = prompt

    def expect_prompt(self) -> bool:
        return self.prompt


def connection(fake: FakeAgent, *, chunk_size=1024, become=None) -> qemu_ga.Connection:
    """A connected plugin instance whose agent is ``fake`` (no play context needed)."""
    conn = qemu_ga.Connection.__new__(qemu_ga.Connection)
    options = {"chunk_size": chunk_size, "exec_timeout": 60}
    conn.get_option = options.__getitem__
    conn._agent = GuestAgent("dom", command=fake, sleep=lambda s: None)
    conn._guest = "g1"
    conn._connected = True
    conn.become = become
    conn._display = qemu_ga.display
    return conn


def shell(fake: FakeAgent, stdout=b"ok"):
    seen = []

    def program(arg, stdin):
        seen.append((arg, stdin))
        return {"exitcode": 0, "out-data": base64.b64encode(stdout).decode()}

    fake.programs = {
        "/bin/sh": program,
        "mktemp": lambda arg, stdin: {
            "exitcode": 0,
            "out-data": base64.b64encode(b"/tmp/tmp.Xy12\n").decode(),
        },
    }
    return seen


def test_command_runs_through_a_login_like_shell_with_small_input_inline():
    fake = FakeAgent(polls_before_exit=0)
    seen = shell(fake)
    rc, out, err = connection(fake).exec_command("echo ~", in_data=b"x" * 1024)
    assert (rc, out, err) == (0, b"ok", b"")
    ((arg, stdin),) = seen
    assert arg[0] == "-c" and arg[2] == "echo ~" and len(arg) == 3
    assert 'getent passwd "$(id -u)"' in arg[1] and arg[1].endswith('exec /bin/sh -c "$0"')
    assert stdin == b"x" * 1024
    assert not fake.calls("guest-file-open")


def test_large_input_goes_through_a_temporary_file():
    fake = FakeAgent(polls_before_exit=0)
    seen = shell(fake)
    payload = bytes(range(256)) * 20  # 5120 bytes, five chunks of 1024
    connection(fake).exec_command("/usr/bin/python3", in_data=payload)
    ((arg, stdin),) = seen
    assert stdin is None  # no input-data
    assert arg[2:] == ["/usr/bin/python3", "/tmp/tmp.Xy12"]
    assert 'exec <"$1" && rm -f -- "$1" && exec /bin/sh -c "$0"' in arg[1]
    assert fake.files["/tmp/tmp.Xy12"] == payload
    assert len(fake.calls("guest-file-write")) == 5


def test_become_with_a_password_prompt_is_refused_before_anything_runs():
    fake = FakeAgent(polls_before_exit=0)
    shell(fake)
    conn = connection(fake, become=Become(prompt=True))
    with pytest.raises(AnsibleError, match="become with a password prompt is not possible"):
        conn.exec_command("sudo -S true")
    assert fake.requests == []
    # without a prompt it runs
    conn = connection(fake, become=Become(prompt=False))
    assert conn.exec_command("sudo -n true")[0] == 0


def test_agent_gone_is_a_connection_failure_other_errors_are_task_errors(tmp_path):
    import libvirt  # noqa: PLC0415

    fake = FakeAgent(polls_before_exit=0)
    fake.fail_with = libvirt_error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "agent not connected")
    with pytest.raises(AnsibleConnectionFailure, match="the agent stopped answering"):
        connection(fake).exec_command("true")
    fake.fail_with = None
    missing = tmp_path / "out"
    with pytest.raises(AnsibleError, match=r"reading /nope on g1.*No such file") as info:
        connection(fake).fetch_file("/nope", str(missing))
    assert not isinstance(info.value, AnsibleConnectionFailure)
    assert not missing.exists()  # no half file left
