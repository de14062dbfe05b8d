"""Run ``molecule`` for one of the collection's roles, with the checkout's venv and collection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def molecule(role: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """``molecule ARGS`` in ``roles/ROLE``; output captured (no colours) for the assertions."""
    venv_bin = Path(sys.executable).parent
    env = dict(os.environ)
    env.update(
        PATH=f"{venv_bin}:{env.get('PATH', '')}",
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".venv" / "collections"),
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        PY_COLORS="0",
    )
    return subprocess.run(
        [str(venv_bin / "molecule"), *args],
        cwd=ROOT / "roles" / role,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
