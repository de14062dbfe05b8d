"""The guest role's example answer files (roles/guest/files/examples) are linted, never run.

The kickstart is parsed by pykickstart with RHEL 9's syntax (errors and deprecation warnings
fail) and must power the guest off; the preseed is checked by debconf-set-selections
--checkonly (a line it skips fails too) and must hold the power-off answer. The role injects
both files as they are (ansible.builtin.copy, no templating): nothing is rendered first.
No Red Hat family mirror is reachable here, so the kickstart never runs an install; the
preseed's full install is not run in ``make test`` either."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest
from pykickstart.constants import KS_SHUTDOWN
from pykickstart.errors import KickstartError
from pykickstart.parser import KickstartParser
from pykickstart.version import RHEL9, makeVersion

from tests.helpers import ROOT

EXAMPLES = ROOT / "roles" / "guest" / "files" / "examples"
KICKSTART = EXAMPLES / "el9-kickstart.cfg"
PRESEED = EXAMPLES / "debian12-preseed.cfg"
PRESEED_POWEROFF = ("d-i", "debian-installer/exit/poweroff", "boolean", "true")


def lint_kickstart(text: str) -> None:
    """Parse ``text`` as a RHEL 9 kickstart; raise on an error, a warning or no power-off."""
    parser = KickstartParser(makeVersion(RHEL9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parser.readKickstartFromString(text)
    if parser.handler.reboot.action != KS_SHUTDOWN:
        raise AssertionError(f"the kickstart does not power off: {parser.handler.reboot}")


def lint_preseed(path: Path) -> None:
    """Check ``path`` with debconf-set-selections --checkonly and for the power-off answer."""
    proc = subprocess.run(
        ["debconf-set-selections", "--checkonly", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    # A line of an unknown type is skipped with a warning and exit code 0.
    if proc.returncode != 0 or proc.stdout or proc.stderr:
        raise AssertionError(f"debconf-set-selections: rc={proc.returncode} {proc.stderr}")
    answers = {tuple(line.split()) for line in path.read_text().splitlines()}
    if PRESEED_POWEROFF not in answers:
        raise AssertionError("the preseed does not power off: " + " ".join(PRESEED_POWEROFF))


def test_kickstart_example():
    lint_kickstart(KICKSTART.read_text())


def test_preseed_example():
    lint_preseed(PRESEED)


@pytest.mark.parametrize(
    "change",
    [
        ("text\n", "textt\n"),  # unknown command
        ("timezone Etc/UTC --utc\n", "timezone Etc/UTC --isUtc\n"),  # deprecated option
        ("\npoweroff\n", "\nreboot\n"),  # no power-off
    ],
)
def test_kickstart_lint_fails(change):
    """The lint catches what it is there for: each change of the example fails it."""
    old, new = change
    text = KICKSTART.read_text()
    assert old in text
    with pytest.raises((KickstartError, Warning, AssertionError)):
        lint_kickstart(text.replace(old, new))


@pytest.mark.parametrize(
    "change",
    [
        ("d-i mirror/http/proxy string\n", "d-i mirror/http/proxy\n"),  # no type
        ("d-i clock-setup/utc boolean true\n", "d-i clock-setup/utc bool true\n"),  # bad type
        ("d-i debian-installer/exit/poweroff boolean true\n", ""),  # no power-off
    ],
)
def test_preseed_lint_fails(tmp_path, change):
    old, new = change
    text = PRESEED.read_text()
    assert old in text
    bad = tmp_path / "preseed.cfg"
    bad.write_text(text.replace(old, new))
    with pytest.raises(AssertionError):
        lint_preseed(bad)
