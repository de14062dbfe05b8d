"""Ansible connection to a lab host (tests/lab/hosts.py): commands run in its namespaces."""

from __future__ import annotations

import shlex

from ansible.plugins.connection.local import Connection as LocalConnection

DOCUMENTATION = """
name: virtops_lab_nsenter
short_description: run commands in a virtops lab host's namespaces (tests only)
description:
  - The local connection, with every command run through
    C(nsenter -t PID -m -n -u -i) of the lab host's namespace holder. Files are put and
    fetched on this machine, whose temporary directories the lab hosts share.
options:
  holder_pid:
    description: PID of the lab host's namespace holder (LabHost.holder_pid).
    type: int
    required: true
    vars:
      - name: virtops_lab_holder_pid
  become_success_timeout:
    description: As the local connection's.
    type: int
    default: 10
  become_strip_preamble:
    description: As the local connection's.
    type: bool
    default: true
extends_documentation_fragment:
  - connection_pipelining
"""


class Connection(LocalConnection):
    transport = "virtops_lab_nsenter"

    def exec_command(self, cmd, in_data=None, sudoable=True):
        pid = int(self.get_option("holder_pid"))
        wrapped = f"nsenter -t {pid} -m -n -u -i -- /bin/sh -c {shlex.quote(cmd)}"
        return super().exec_command(wrapped, in_data=in_data, sudoable=sudoable)
