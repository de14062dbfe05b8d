# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The QEMU guest agent as a way into a guest: commands (``guest-exec`` and
``guest-exec-status``) and files (``guest-file-open``/``read``/``write``/``close``), through
libvirt's ``virDomainQemuAgentCommand`` (``libvirt_qemu.qemuAgentCommand``).

Used by the connection plugin ``virtops.kvm.qemu_ga`` and, for ``guest-ping``, by the
inventory plugin. Everything crosses the agent as JSON, binary data as base64; tests pass a
fake ``command`` callable in place of ``qemuAgentCommand``.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

from ._libvirt import libvirt

try:
    import libvirt_qemu
except ImportError:  # shipped with libvirt-python; the connection plugin says so when used
    libvirt_qemu = None

EXEC_COMMANDS = ("guest-exec", "guest-exec-status")
FILE_COMMANDS = ("guest-file-open", "guest-file-read", "guest-file-write", "guest-file-close")
# The agent parses a message slowly: under TCG on a loaded host a 175 KB message (128 KiB in
# base64) took 0.1 s, a 260 KB one more than 10 s (it never answered in time). 64 KiB a call.
DEFAULT_CHUNK = 64 * 1024
MAX_CHUNK = 1024 * 1024


class AgentError(Exception):
    """The agent answered with an error (a file it cannot open, a disabled command...)."""


class AgentUnreachable(AgentError):
    """No answer: no agent channel, no agent running in the guest, the guest is not running,
    or the call timed out."""


class ExecTimeout(AgentError):
    """A command ran longer than allowed."""


def _unreachable_codes() -> set[int]:
    names = (
        "VIR_ERR_AGENT_UNRESPONSIVE",
        "VIR_ERR_AGENT_COMMAND_TIMEOUT",
        "VIR_ERR_OPERATION_INVALID",  # the guest is not running
        "VIR_ERR_NO_DOMAIN",
        "VIR_ERR_ARGUMENT_UNSUPPORTED",  # "QEMU guest agent is not configured": no channel
    )
    return {getattr(libvirt, n) for n in names if libvirt is not None and hasattr(libvirt, n)}


@dataclass
class ExecResult:
    rc: int
    stdout: bytes
    stderr: bytes
    truncated: bool = False  # the agent kept only the first 16 MiB of an output


def b64decode(text: str | None) -> bytes:
    return base64.b64decode(text, validate=True) if text else b""


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class GuestAgent:
    """The agent of one guest (``dom``); ``timeout`` is the seconds each call may take."""

    def __init__(
        self,
        dom,
        *,
        timeout: int = 10,
        command: Callable[..., str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if command is None:
            if libvirt_qemu is None:
                raise AgentError("The guest agent needs the libvirt_qemu module of libvirt-python")
            command = libvirt_qemu.qemuAgentCommand
        self.dom = dom
        self.timeout = max(1, int(timeout))
        self.command = command
        self.sleep = sleep
        self.clock = clock

    # -- one call ---------------------------------------------------------------------------
    def call(self, execute: str, **arguments: Any) -> Any:
        """``execute`` with ``arguments``; its ``return`` value."""
        request: dict[str, Any] = {"execute": execute}
        if arguments:
            request["arguments"] = arguments
        try:
            reply = self.command(self.dom, json.dumps(request), self.timeout, 0)
        except libvirt.libvirtError as exc:
            msg = f"{execute}: {exc.get_error_message()}"
            if exc.get_error_code() in _unreachable_codes():
                raise AgentUnreachable(msg) from exc
            raise AgentError(msg) from exc
        try:
            data = json.loads(reply)
        except (TypeError, ValueError) as exc:
            raise AgentError(f"{execute}: the agent's reply is not JSON: {reply!r:.200}") from exc
        if isinstance(data, dict) and "error" in data:  # libvirt normally raises these itself
            error = data["error"] or {}
            raise AgentError(f"{execute}: {error.get('desc') or error}")
        if not isinstance(data, dict) or "return" not in data:
            raise AgentError(f"{execute}: unexpected reply {reply!r:.200}")
        return data["return"]

    def ping(self) -> None:
        self.call("guest-ping")

    def disabled(self, wanted: tuple[str, ...]) -> list[str]:
        """Those of ``wanted`` the agent does not offer (unknown, or blocked by its
        ``--block-rpcs``/``--allow-rpcs`` configuration)."""
        info = self.call("guest-info") or {}
        enabled = {c.get("name") for c in info.get("supported_commands") or [] if c.get("enabled")}
        return [name for name in wanted if name not in enabled]

    # -- commands ---------------------------------------------------------------------------
    def run(
        self,
        path: str,
        args: list[str],
        *,
        input_data: bytes | None = None,
        env: list[str] | None = None,
        timeout: float = 0,
        poll_max: float = 0.5,
    ) -> ExecResult:
        """Run ``path`` with ``args`` in the guest and wait for it to end (at most ``timeout``
        seconds; 0 waits as long as it takes). ``input_data`` is its standard input."""
        arguments: dict[str, Any] = {"path": path, "arg": list(args), "capture-output": True}
        if env is not None:
            arguments["env"] = list(env)
        if input_data:
            arguments["input-data"] = b64encode(input_data)
        pid = (self.call("guest-exec", **arguments) or {}).get("pid")
        if not isinstance(pid, int):
            raise AgentError(f"guest-exec: no process id in the reply ({pid!r})")
        deadline = self.clock() + timeout if timeout and timeout > 0 else None
        delay = 0.005
        while True:
            status = self.call("guest-exec-status", pid=pid) or {}
            if status.get("exited"):
                break
            if deadline is not None and self.clock() >= deadline:
                self._kill(pid)
                raise ExecTimeout(
                    f"{path} (process {pid} in the guest) did not end within {timeout} s; "
                    "it was sent SIGKILL"
                )
            self.sleep(delay)
            delay = min(delay * 2, poll_max)
        if "exitcode" in status:
            rc = int(status["exitcode"])
        elif "signal" in status:
            rc = -int(status["signal"])  # as subprocess reports a process killed by a signal
        else:
            raise AgentError(f"guest-exec-status: neither exit code nor signal in {status!r:.200}")
        return ExecResult(
            rc,
            b64decode(status.get("out-data")),
            b64decode(status.get("err-data")),
            bool(status.get("out-truncated") or status.get("err-truncated")),
        )

    def temp_file(self) -> str:
        """A new private (0600) temporary file of the guest, by ``mktemp``."""
        result = self.run("mktemp", [], timeout=max(30, self.timeout))
        path = result.stdout.decode("utf-8", "replace").strip()
        if result.rc != 0 or not path.startswith("/"):
            raise AgentError(f"mktemp in the guest failed ({result.rc}): {result.stderr!r:.200}")
        return path

    def _kill(self, pid: int) -> None:
        try:
            killer = (self.call("guest-exec", path="kill", arg=["-KILL", str(pid)]) or {}).get(
                "pid"
            )
            # collect both, or the agent keeps their status until it restarts
            for each in (killer, pid):
                if isinstance(each, int):
                    self.call("guest-exec-status", pid=each)
        except AgentError:
            pass

    # -- files ------------------------------------------------------------------------------
    def _close(self, handle: int, failing: bool) -> None:
        try:
            self.call("guest-file-close", handle=handle)
        except AgentError:
            if not failing:
                raise

    def write_file(self, path: str, source: BinaryIO, chunk_size: int = DEFAULT_CHUNK) -> int:
        """Write everything ``source`` gives into ``path`` in the guest (created or
        truncated); the bytes written."""
        chunk_size = _checked_chunk(chunk_size)
        handle = self.call("guest-file-open", path=path, mode="wb")
        total = 0
        failing = True
        try:
            while True:
                chunk = source.read(chunk_size)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    reply = self.call(
                        "guest-file-write", handle=handle, **{"buf-b64": b64encode(view)}
                    )
                    count = int((reply or {}).get("count", 0))
                    if count <= 0 or count > len(view):
                        raise AgentError(
                            f"guest-file-write: {path}: the agent wrote {count} of "
                            f"{len(view)} bytes"
                        )
                    total += count
                    view = view[count:]
            failing = False
        finally:
            self._close(handle, failing)
        return total

    def read_file(self, path: str, dest: BinaryIO, chunk_size: int = DEFAULT_CHUNK) -> int:
        """Copy ``path`` of the guest into ``dest``; the bytes read."""
        chunk_size = _checked_chunk(chunk_size)
        handle = self.call("guest-file-open", path=path, mode="rb")
        total = 0
        failing = True
        try:
            while True:
                reply = self.call("guest-file-read", handle=handle, count=chunk_size) or {}
                data = b64decode(reply.get("buf-b64"))
                if len(data) != int(reply.get("count", len(data))):
                    raise AgentError(
                        f"guest-file-read: {path}: {len(data)} bytes decoded, "
                        f"{reply.get('count')} announced"
                    )
                dest.write(data)
                total += len(data)
                if reply.get("eof") or not data:
                    break
            failing = False
        finally:
            self._close(handle, failing)
        return total


def _checked_chunk(size: int) -> int:
    if not 1 <= int(size) <= MAX_CHUNK:
        raise AgentError(f"chunk size must be between 1 and {MAX_CHUNK} bytes, not {size}")
    return int(size)
