"""A fake QEMU guest agent (``qemuAgentCommand``) for the _qemu_ga and qemu_ga connection
tests: files and processes held in memory, the agent's JSON replies and libvirt's errors."""

from __future__ import annotations

import base64
import json

import libvirt

from ansible_collections.virtops.kvm.plugins.module_utils._qemu_ga import (
    EXEC_COMMANDS,
    FILE_COMMANDS,
)


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, 0, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return exc


class FakeAgent:
    """qemuAgentCommand(dom, json, timeout, flags) of a guest with files and processes."""

    def __init__(self, *, max_write: int | None = None, polls_before_exit: int = 2):
        self.files: dict[str, bytes] = {}
        self.handles: dict[int, list] = {}  # handle -> [path, position, mode]
        self.procs: dict[int, dict] = {}
        self.requests: list[dict] = []
        self.max_write = max_write
        self.polls_before_exit = polls_before_exit
        self.disabled: set[str] = set()
        self.fail_with: libvirt.libvirtError | None = None
        self.next_id = 1000

    def __call__(self, dom, command: str, timeout: int, flags: int) -> str:
        assert dom == "dom" and flags == 0 and timeout >= 1
        request = json.loads(command)
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        name = request["execute"]
        if name in self.disabled:
            raise libvirt_error(
                libvirt.VIR_ERR_INTERNAL_ERROR,
                f"unable to execute QEMU agent command '{name}': The command {name} has been "
                "disabled for this instance",
            )
        handler = getattr(self, "do_" + name.replace("-", "_"))
        return json.dumps({"return": handler(**request.get("arguments", {}))})

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def do_guest_ping(self):
        return {}

    def do_guest_info(self):
        names = EXEC_COMMANDS + FILE_COMMANDS + ("guest-ping", "guest-info")
        return {
            "version": "7.2.0",
            "supported_commands": [
                {"name": n, "enabled": n not in self.disabled, "success-response": True}
                for n in names
            ],
        }

    # processes: the "program" is a Python callable stored by the test under its path
    programs: dict = {}

    def do_guest_exec(self, path, arg=(), env=None, **kwargs):
        stdin = base64.b64decode(kwargs["input-data"]) if "input-data" in kwargs else None
        pid = self._id()
        self.procs[pid] = {"path": path, "arg": list(arg), "stdin": stdin, "polls": 0}
        self.procs[pid]["capture"] = kwargs.get("capture-output")
        return {"pid": pid}

    def do_guest_exec_status(self, pid):
        proc = self.procs[pid]
        proc["polls"] += 1
        if proc["path"] == "sleep-forever" or proc["polls"] <= self.polls_before_exit:
            return {"exited": False}
        result = self.programs[proc["path"]](proc["arg"], proc["stdin"])
        del self.procs[pid]  # the agent forgets a process once its end is reported
        return {"exited": True, **result}

    def do_guest_file_open(self, path, mode):
        if mode.startswith("r") and path not in self.files:
            raise libvirt_error(
                libvirt.VIR_ERR_INTERNAL_ERROR,
                f"unable to execute QEMU agent command 'guest-file-open': failed to open file "
                f"'{path}' (mode: '{mode}'): No such file or directory",
            )
        if mode.startswith("w"):
            self.files[path] = b""
        handle = self._id()
        self.handles[handle] = [path, 0, mode]
        return handle

    def do_guest_file_write(self, handle, **kwargs):
        path, pos, mode = self.handles[handle]
        assert mode == "wb"
        data = base64.b64decode(kwargs["buf-b64"], validate=True)
        if self.max_write is not None:
            data = data[: self.max_write]
        self.files[path] = self.files[path][:pos] + data
        self.handles[handle][1] = pos + len(data)
        return {"count": len(data), "eof": False}

    def do_guest_file_read(self, handle, count):
        path, pos, mode = self.handles[handle]
        assert mode == "rb"
        data = self.files[path][pos : pos + count]
        self.handles[handle][1] = pos + len(data)
        eof = pos + len(data) >= len(self.files[path])
        return {"count": len(data), "buf-b64": base64.b64encode(data).decode(), "eof": eof}

    def do_guest_file_close(self, handle):
        del self.handles[handle]
        return {}

    def calls(self, name: str) -> list[dict]:
        return [r for r in self.requests if r["execute"] == name]
