"""Run ``molecule`` for one of the collection's roles, with the checkout's venv and collection."""

from __future__ import annotations

import subprocess

from tests.helpers import ROOT, VENV_BIN, checkout_env


def molecule(role: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """``molecule ARGS`` in ``roles/ROLE``; output captured (no colours) for the assertions."""
    env = checkout_env(PY_COLORS="0")
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    return subprocess.run(
        [str(VENV_BIN / "molecule"), *args],
        cwd=ROOT / "roles" / role,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
