# Copyright (c) virtops.kvm contributors (!UNKNOWN)
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: qemu_ga
short_description: Run tasks in a libvirt guest through the QEMU guest agent
version_added: 1.0.0
description:
  - Reaches a guest of a libvirt hypervisor without any network in the guest. Commands run
    through the QEMU guest agent's C(guest-exec) and C(guest-exec-status) calls, files are
    copied with C(guest-file-open), C(guest-file-read), C(guest-file-write) and
    C(guest-file-close), all through libvirt's C(virDomainQemuAgentCommand) on O(uri).
  - The guest needs a guest agent channel (M(virtops.kvm.domain) with C(guest_agent=true)) and
    C(qemu-guest-agent) running, with those six calls allowed. The connection checks this
    first (C(guest-ping), C(guest-info)) and fails with the reason - the host is then
    unreachable - when the agent does not answer or blocks a call.
  - Commands run as the agent's user (root in a Linux guest) with C(/bin/sh -c), in the
    agent's environment plus C(HOME) (from the user database, as a login sets it) and in
    that directory; C(remote_user) is not used. Standard input (pipelining) is given to
    the command as the agent's C(input-data), or, when larger than O(chunk_size), written
    to a temporary file in the guest in chunks first.
  - The inventory plugin P(virtops.kvm.libvirt#inventory) sets this connection for guests whose
    agent answers with O(virtops.kvm.libvirt#inventory:guest_agent_connection=true).
author:
  - virtops.kvm contributors (!UNKNOWN)
requirements:
  - libvirt-python (with its C(libvirt_qemu) module) on the controller
  - qemu-guest-agent in the guest
options:
  uri:
    description:
      - The libvirt connection URI of the hypervisor the guest runs on.
    type: str
    default: qemu:///system
    vars:
      - name: virtops_qemu_ga_uri
    env:
      - name: LIBVIRT_DEFAULT_URI
  guest:
    description:
      - The libvirt name of the guest. By default the inventory host name.
    type: str
    vars:
      - name: inventory_hostname
      - name: virtops_qemu_ga_guest
  connect_timeout:
    description:
      - Seconds to keep retrying while the libvirt daemon does not accept the connection.
    type: int
    default: 10
    vars:
      - name: virtops_qemu_ga_connect_timeout
  agent_timeout:
    description:
      - Seconds one guest agent call may take (each chunk of a file, each look at a running
        command) before the agent counts as not answering.
    type: int
    default: 10
    vars:
      - name: virtops_qemu_ga_agent_timeout
  exec_timeout:
    description:
      - Seconds a command may run. A command still running then is killed (C(kill -KILL)
        of the process the agent started) and the task fails. V(0) waits as long as it takes
        (a task's own C(timeout) still applies).
    type: int
    default: 3600
    vars:
      - name: virtops_qemu_ga_exec_timeout
  chunk_size:
    description:
      - Bytes per agent call when a file is copied (in either direction), at most 1048576.
      - The agent parses a message slowly (under emulation, a 260 KB message took it longer
        than 10 seconds, and libvirt then counts the agent as not answering for a while), so
        the default is small.
      - Standard input (pipelining) larger than this is written to a temporary file in the
        guest (C(mktemp)) in chunks and given to the command from there.
    type: int
    default: 65536
    vars:
      - name: virtops_qemu_ga_chunk_size
extends_documentation_fragment:
  - connection_pipelining
notes:
  - B(become) works only without a password (the agent runs as root, so C(sudo) to another
    user needs none unless the guest's sudoers says otherwise); there is no terminal to answer
    a password prompt, and a task with C(become_password) fails before anything runs. The
    C(su) become method always expects a prompt and so does not work; use C(sudo).
  - B(Speed) - each agent call is a round trip through libvirt and the agent's virtio serial
    channel, and a command's end is found by polling C(guest-exec-status) (5 ms, doubling up
    to 0.5 s). Enable pipelining (C(ANSIBLE_PIPELINING=true) or O(pipelining=true)) to save
    the module upload and the temporary directory's commands. Measured in the lab (TCG
    guest, loaded 2-core host), each including Ansible's own start of several seconds - a
    C(command) task 10 to 18 seconds, C(setup) 22 to 26, the copy of a 4 MiB file 42 and
    its fetch 20.
  - The agent keeps at most 16 MiB of a command's standard output and error each; a task whose
    output was cut says so in a warning. A command's output comes back only when it has ended.
  - Commands are killed after O(exec_timeout) with the one process the agent started (the
    shell); processes it started in the background may survive.
  - Only guests whose shell is C(/bin/sh) (Linux, BSD); Windows guests are not supported.
  - Guests whose agent blocks C(guest-exec) or the file calls (some distributions ship
    C(qemu-guest-agent) with a C(--block-rpcs) or C(--allow-rpcs) list, or an SELinux policy
    that forbids them) cannot be reached; the error names the blocked calls.
seealso:
  - module: virtops.kvm.domain
  - plugin: virtops.kvm.libvirt
    plugin_type: inventory
"""

EXAMPLES = r"""
# inventory.yml: a guest of the local hypervisor, reached through its agent
all:
  hosts:
    build01:
      ansible_connection: virtops.kvm.qemu_ga
      virtops_qemu_ga_uri: qemu:///system

# A guest of another hypervisor whose inventory name is not its libvirt name
all:
  hosts:
    db:
      ansible_connection: virtops.kvm.qemu_ga
      virtops_qemu_ga_uri: qemu+ssh://root@kvm1.example.com/system
      virtops_qemu_ga_guest: db-01
      ansible_pipelining: true

# ansible -i inventory.yml build01 -m ansible.builtin.setup
"""

import io  # noqa: E402
import os  # noqa: E402
import traceback  # noqa: E402

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound  # noqa: E402
from ansible.module_utils.common.text.converters import to_bytes, to_text  # noqa: E402
from ansible.plugins.connection import ConnectionBase  # noqa: E402
from ansible.utils.display import Display  # noqa: E402

try:
    from ansible_collections.virtops.kvm.plugins.module_utils._client import open_connection
    from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmError
    from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
        LIBVIRT_IMPORT_ERROR,
        libvirt,
    )
    from ansible_collections.virtops.kvm.plugins.module_utils._qemu_ga import (
        EXEC_COMMANDS,
        FILE_COMMANDS,
        AgentError,
        AgentUnreachable,
        GuestAgent,
        libvirt_qemu,
    )
except ImportError as exc:  # lxml missing: the plugin says so when used
    libvirt = libvirt_qemu = None
    LIBVIRT_IMPORT_ERROR = f"{exc}\n{traceback.format_exc()}"

display = Display()

SHELL = "/bin/sh"
# The agent's own environment (a system service) has no HOME, so ``echo ~`` would not
# expand: as a login would, take HOME from the user database and start there, then run the
# command (given as $0, so it is not quoted a second time).
LOGIN = (
    '[ -n "$HOME" ] || HOME=$(getent passwd "$(id -u)" | cut -d: -f6); '
    'export HOME="${HOME:-/}"; cd "$HOME" 2>/dev/null || cd /; '
)
RUN = 'exec /bin/sh -c "$0"'
# Standard input bigger than one chunk is written to a private temporary file first ($1),
# which becomes the command's standard input and is removed before the command starts.
RUN_WITH_INPUT = 'exec <"$1" && rm -f -- "$1" && exec /bin/sh -c "$0"'


class Connection(ConnectionBase):
    """Commands and files of a libvirt guest through its QEMU guest agent."""

    transport = "virtops.kvm.qemu_ga"
    has_pipelining = True
    has_tty = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._conn = None
        self._agent = None
        self._guest = None

    # -- connection -------------------------------------------------------------------------
    def _connect(self):
        if self._connected:
            return self
        if LIBVIRT_IMPORT_ERROR or libvirt_qemu is None:
            raise AnsibleError(
                "The virtops.kvm.qemu_ga connection needs libvirt-python (with libvirt_qemu) "
                f"and lxml on the controller: {LIBVIRT_IMPORT_ERROR or 'libvirt_qemu missing'}"
            )
        uri = self.get_option("uri")
        guest = self.get_option("guest") or self._play_context.remote_addr
        self._guest = guest
        display.vvv(f"QEMU_GA CONNECT {uri} GUEST {guest}", host=guest)
        try:
            self._conn = open_connection(uri, timeout=self.get_option("connect_timeout"))
        except KvmError as exc:
            raise AnsibleConnectionFailure(f"virtops.kvm.qemu_ga: {exc.msg}") from exc
        try:
            dom = self._conn.lookupByName(guest)
        except libvirt.libvirtError as exc:
            self._close_conn()
            raise AnsibleConnectionFailure(
                f"virtops.kvm.qemu_ga: no guest {guest} on {uri}: {exc.get_error_message()}"
            ) from exc
        agent = GuestAgent(dom, timeout=self.get_option("agent_timeout"))
        try:
            agent.ping()
            blocked = agent.disabled(EXEC_COMMANDS + FILE_COMMANDS)
        except AgentError as exc:
            self._close_conn()
            raise AnsibleConnectionFailure(
                f"virtops.kvm.qemu_ga: the guest agent of {guest} on {uri} does not answer "
                f"({exc}). The guest must be running, have a guest agent channel "
                "(virtops.kvm.domain guest_agent=true) and run qemu-guest-agent."
            ) from exc
        if blocked:
            self._close_conn()
            raise AnsibleConnectionFailure(
                f"virtops.kvm.qemu_ga: the guest agent of {guest} on {uri} does not allow "
                f"{', '.join(blocked)} (see its --block-rpcs/--allow-rpcs configuration)"
            )
        self._agent = agent
        self._connected = True
        return self

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
        self._conn = None

    def close(self):
        self._agent = None
        self._close_conn()
        self._connected = False

    def _failure(self, what: str, exc: AgentError) -> AnsibleError:
        if isinstance(exc, AgentUnreachable):
            return AnsibleConnectionFailure(
                f"virtops.kvm.qemu_ga: {what} on {self._guest}: the agent stopped answering ({exc})"
            )
        return AnsibleError(f"virtops.kvm.qemu_ga: {what} on {self._guest}: {exc}")

    # -- commands ---------------------------------------------------------------------------
    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if sudoable and self.become and self.become.expect_prompt():
            raise AnsibleError(
                "virtops.kvm.qemu_ga: become with a password prompt is not possible through the "
                "guest agent (no terminal to answer it). The agent runs commands as root: "
                f"use become_method sudo without become_password ({self.become.name} expects one)"
            )
        display.vvv(f"QEMU_GA EXEC {cmd}", host=self._guest)
        command = to_text(cmd, errors="surrogate_or_strict")
        chunk = self.get_option("chunk_size")
        try:
            if in_data and len(in_data) > chunk:
                # one agent message that large would take the agent longer than a call may
                stdin_file = self._agent.temp_file()
                self._agent.write_file(stdin_file, io.BytesIO(in_data), chunk)
                args, in_data = ["-c", LOGIN + RUN_WITH_INPUT, command, stdin_file], None
            else:
                args = ["-c", LOGIN + RUN, command]
            result = self._agent.run(
                SHELL, args, input_data=in_data, timeout=self.get_option("exec_timeout")
            )
        except AgentError as exc:
            raise self._failure("running a command", exc) from exc
        if result.truncated:
            display.warning(
                f"virtops.kvm.qemu_ga: the guest agent of {self._guest} cut a command's output "
                "at 16 MiB"
            )
        return result.rc, result.stdout, result.stderr

    # -- files ------------------------------------------------------------------------------
    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv(f"QEMU_GA PUT {in_path} TO {out_path}", host=self._guest)
        local = to_bytes(in_path, errors="surrogate_or_strict")
        if not os.path.exists(local):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        try:
            with open(local, "rb") as source:
                self._agent.write_file(out_path, source, self.get_option("chunk_size"))
        except AgentError as exc:
            raise self._failure(f"writing {out_path}", exc) from exc

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv(f"QEMU_GA FETCH {in_path} TO {out_path}", host=self._guest)
        local = to_bytes(out_path, errors="surrogate_or_strict")
        try:
            with open(local, "wb") as dest:
                self._agent.read_file(in_path, dest, self.get_option("chunk_size"))
        except AgentError as exc:
            try:
                os.unlink(local)
            except OSError:
                pass
            raise self._failure(f"reading {in_path}", exc) from exc

    def reset(self):
        self.close()
