"""_qemu_ga against a fake guest agent that speaks the agent's JSON: command runs (polling,
exit status, signals, base64 output, input data, the timeout), chunked binary-safe file
copies in both directions (short writes, the size of every call), and error classes."""

from __future__ import annotations

import base64
import io

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._qemu_ga import (
    EXEC_COMMANDS,
    FILE_COMMANDS,
    AgentError,
    AgentUnreachable,
    ExecTimeout,
    GuestAgent,
)
from tests.unit.plugins.module_utils.qemu_ga_fakes import FakeAgent, libvirt_error


def agent_for(fake: FakeAgent, **kwargs) -> GuestAgent:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    agent = GuestAgent("dom", command=fake, sleep=sleep, clock=lambda: clock[0], **kwargs)
    agent.slept = clock
    return agent


BINARY = bytes(range(256)) * 40 + b"\x00\r\n\xff\xfe" + bytes(7)  # 10 247 bytes


def test_run_decodes_output_and_keeps_the_exit_status():
    fake = FakeAgent(polls_before_exit=3)
    fake.programs = {
        "/bin/sh": lambda arg, stdin: {
            "exitcode": 3,
            "out-data": base64.b64encode(BINARY).decode(),
            "err-data": base64.b64encode(b"oops\n").decode(),
        }
    }
    agent = agent_for(fake)
    result = agent.run("/bin/sh", ["-c", "echo hi"], input_data=None)
    assert (result.rc, result.stdout, result.stderr) == (3, BINARY, b"oops\n")
    assert result.truncated is False
    (exec_req,) = fake.calls("guest-exec")
    assert exec_req["arguments"] == {
        "path": "/bin/sh",
        "arg": ["-c", "echo hi"],
        "capture-output": True,
    }
    assert len(fake.calls("guest-exec-status")) == 4
    # polling backs off: 5, 10, 20 ms
    assert agent.slept[0] == pytest.approx(0.035)


def test_run_passes_standard_input_and_reports_signals_and_truncation():
    fake = FakeAgent(polls_before_exit=0)
    seen = []
    fake.programs = {
        "/usr/bin/python3": lambda arg, stdin: (
            seen.append(stdin) or {"signal": 9, "out-truncated": True}
        )
    }
    result = agent_for(fake).run("/usr/bin/python3", [], input_data=BINARY)
    assert seen == [BINARY]
    assert (result.rc, result.stdout, result.stderr, result.truncated) == (-9, b"", b"", True)


def test_empty_output_is_empty_bytes_and_garbage_base64_fails():
    fake = FakeAgent(polls_before_exit=0)
    fake.programs = {"true": lambda arg, stdin: {"exitcode": 0, "out-data": ""}}
    assert agent_for(fake).run("true", []).stdout == b""
    fake.programs = {"bad": lambda arg, stdin: {"exitcode": 0, "out-data": "not base64!"}}
    with pytest.raises(ValueError):  # binascii.Error
        agent_for(fake).run("bad", [])


def test_run_timeout_kills_the_process_and_collects_it():
    fake = FakeAgent(polls_before_exit=0)
    fake.programs = {"kill": lambda arg, stdin: {"exitcode": 0}}
    agent = agent_for(fake)
    with pytest.raises(ExecTimeout, match=r"did not end within 2 s; it was sent SIGKILL"):
        agent.run("sleep-forever", [], timeout=2)
    assert 2 <= agent.slept[0] < 2.6  # polls at most 0.5 s apart
    kill = fake.calls("guest-exec")[-1]["arguments"]
    sleeper = fake.calls("guest-exec-status")[0]["arguments"]["pid"]
    assert kill["path"] == "kill" and kill["arg"] == ["-KILL", str(sleeper)]


def test_put_in_chunks_binary_safe_with_short_writes():
    fake = FakeAgent(max_write=1000)
    agent = agent_for(fake)
    written = agent.write_file("/tmp/x.bin", io.BytesIO(BINARY), chunk_size=4096)
    assert written == len(BINARY) and fake.files["/tmp/x.bin"] == BINARY
    sizes = [
        len(base64.b64decode(r["arguments"]["buf-b64"])) for r in fake.calls("guest-file-write")
    ]
    # each 4096-byte chunk is sent until the agent has taken all of it, 1000 bytes at a time
    assert max(sizes) == 4096 and sum(min(s, 1000) for s in sizes) == len(BINARY)
    assert len(sizes) == 5 + 5 + 3  # 4096, 4096, 2055 bytes
    assert fake.handles == {}  # closed
    assert fake.calls("guest-file-open")[0]["arguments"] == {"path": "/tmp/x.bin", "mode": "wb"}


def test_fetch_in_chunks_until_eof():
    fake = FakeAgent()
    fake.files["/var/log/x"] = BINARY
    dest = io.BytesIO()
    assert agent_for(fake).read_file("/var/log/x", dest, chunk_size=1024) == len(BINARY)
    assert dest.getvalue() == BINARY
    reads = fake.calls("guest-file-read")
    assert len(reads) == 11 and {r["arguments"]["count"] for r in reads} == {1024}
    assert fake.handles == {}


def test_empty_file_both_ways():
    fake = FakeAgent()
    agent = agent_for(fake)
    assert agent.write_file("/e", io.BytesIO(b"")) == 0 and fake.files["/e"] == b""
    dest = io.BytesIO()
    assert agent.read_file("/e", dest) == 0 and dest.getvalue() == b""
    assert fake.handles == {}


def test_a_read_whose_count_disagrees_fails_and_still_closes():
    fake = FakeAgent()
    fake.files["/f"] = b"abc"

    def lying_read(handle, count):
        return {"count": 5, "buf-b64": base64.b64encode(b"abc").decode(), "eof": True}

    fake.do_guest_file_read = lying_read
    with pytest.raises(AgentError, match="3 bytes decoded, 5 announced"):
        agent_for(fake).read_file("/f", io.BytesIO())
    assert fake.handles == {}


def test_a_write_the_agent_does_not_take_fails():
    fake = FakeAgent(max_write=0)
    with pytest.raises(AgentError, match="wrote 0 of 3 bytes"):
        agent_for(fake).write_file("/f", io.BytesIO(b"abc"))
    assert fake.handles == {}


def test_missing_file_is_an_agent_error_with_the_agents_reason():
    with pytest.raises(AgentError) as info:
        agent_for(FakeAgent()).read_file("/nope", io.BytesIO())
    assert not isinstance(info.value, AgentUnreachable)
    assert "guest-file-open" in str(info.value) and "No such file or directory" in str(info.value)


@pytest.mark.parametrize(
    "code",
    [
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        libvirt.VIR_ERR_OPERATION_INVALID,
        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
    ],
)
def test_no_answer_is_unreachable(code):
    fake = FakeAgent()
    fake.fail_with = libvirt_error(code, "Guest agent is not responding")
    with pytest.raises(AgentUnreachable, match="guest-ping: Guest agent is not responding"):
        agent_for(fake).ping()


def test_disabled_commands_are_named():
    fake = FakeAgent()
    fake.disabled = {"guest-exec", "guest-file-write"}
    assert agent_for(fake).disabled(EXEC_COMMANDS + FILE_COMMANDS) == [
        "guest-exec",
        "guest-file-write",
    ]
    with pytest.raises(AgentError, match="has been disabled"):
        agent_for(fake).run("/bin/true", [])


def test_chunk_size_is_bounded():
    with pytest.raises(AgentError, match="chunk size"):
        agent_for(FakeAgent()).write_file("/f", io.BytesIO(b"x"), chunk_size=3 * 1024 * 1024)
