"""CIB files made by Pacemaker's own tools, for tests that run the cluster modules offline.

``CIB_file`` makes cibadmin, crm_attribute, crm_resource and crm_mon work on a file as they
would on a live cluster; crm_simulate brings nodes up and runs the scheduler's transitions on
it (simulated agents), so the status section is what a cluster would write.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

TOOLS_MISSING = shutil.which("cibadmin") is None or shutil.which("crm_simulate") is None
needs_pacemaker = pytest.mark.skipif(
    TOOLS_MISSING, reason="Pacemaker's tools are not installed (scripts/setup.sh installs them)"
)


class CibFile:
    """One CIB file and the tools run on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {**os.environ, "CIB_file": str(path)}

    def tool(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def run(self, argv: list[str], data: str | None) -> tuple[int, str, str]:
        """A runner for ``_pacemaker.Tools``, as run_command is in a module."""
        done = subprocess.run(
            argv, input=data, env=self.env, capture_output=True, text=True, check=False
        )
        return done.returncode, done.stdout, done.stderr

    def create(self, section: str, xml: str) -> None:
        self.tool("cibadmin", "--create", "-o", section, "--xml-text", xml)

    def prop(self, name: str, value: str) -> None:
        self.tool("crm_attribute", "--type", "crm_config", "--name", name, "--update", value)

    def simulate(self, *args: str) -> str:
        """crm_simulate on the file, its result written back; returns its report."""
        out = subprocess.run(
            ["crm_simulate", "--xml-file", str(self.path), "--save-output", str(self.path), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return out.stdout

    def transition(self) -> str:
        """What the scheduler would do now (the 'Transition Summary'), without doing it."""
        out = subprocess.run(
            ["crm_simulate", "--xml-file", str(self.path), "--simulate"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return out.split("Transition Summary:", 1)[1].split("Executing Cluster Transition", 1)[0]

    def query(self) -> str:
        return self.tool("cibadmin", "--query").stdout


def make_cib(path: Path, nodes=("n1", "n2", "n3"), *, fencing: bool = True) -> CibFile:
    """An empty CIB with ``nodes`` online and quorate, and a stonith device when ``fencing``."""
    path.write_text(
        subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, check=True).stdout
    )
    cib = CibFile(path)
    if fencing:
        cib.create(
            "resources",
            '<primitive id="fence-lab" class="stonith" type="fence_virtopslab">'
            '<instance_attributes id="fence-lab-ia"><nvpair id="fence-lab-ia-hosts" '
            f'name="pcmk_host_list" value="{" ".join(nodes)}"/></instance_attributes></primitive>',
        )
    else:
        cib.prop("stonith-enabled", "false")
    args = [a for node in nodes for a in ("--node-up", node)]
    cib.simulate(*args, "--quorum", "true", "--simulate")
    return cib


def cib_for_modules(tmp_path: Path, monkeypatch) -> CibFile:
    """A fresh CIB file that modules run in this process work on (``CIB_file`` set)."""
    made = make_cib(tmp_path / "cib.xml")
    monkeypatch.setenv("CIB_file", str(made.path))
    return made


def c14n(text: str) -> bytes:
    """``text`` (XML) canonical: equal bytes, equal XML."""
    return etree.tostring(etree.fromstring(text.encode()), method="c14n")
