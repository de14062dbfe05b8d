# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""No lost updates: read, compute, re-read and compare, write.

libvirt has no compare-and-swap for definitions: ``defineXML`` replaces the whole stored
definition, so a run that computed its XML from a definition someone else has changed since
would silently undo their change. A reconciler therefore keeps what it read in a ``Guard``,
and just before its first write calls ``guard.check()``: one more read of the stored
definition, compared with the first. When they differ the run is redone once from the new
state (``reconcile``); when it changes again the run fails having written nothing. This
narrows the window to the time between that re-read and the write (one libvirt call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from . import _xml
from ._errors import KvmConcurrencyError, KvmLibvirtError
from ._libvirt import libvirt

T = TypeVar("T")

# The object was removed (or removed and defined anew) since it was read.
_GONE_CODE_NAMES = ("VIR_ERR_NO_DOMAIN", "VIR_ERR_NO_NETWORK", "VIR_ERR_NO_STORAGE_POOL")


class ConcurrentChange(Exception):
    """The stored definition changed between a run's read and its first write."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _gone(exc: Exception) -> bool:
    if libvirt is None:
        return False
    codes = {getattr(libvirt, n) for n in _GONE_CODE_NAMES if hasattr(libvirt, n)}
    if isinstance(exc, KvmLibvirtError):
        return exc.code in codes
    return isinstance(exc, libvirt.libvirtError) and exc.get_error_code() in codes


def canonical_definition(text: str | None, ignore: Sequence[str] = ()) -> tuple | None:
    """A comparable form of a definition libvirt wrote, without the ``ignore`` paths."""
    if text is None:
        return None
    root = _xml.parse(text, "definition")
    for path in ignore:
        for elem in root.findall(path):
            _xml.remove(elem)
    return _xml.canonical(root)


@dataclass
class Guard:
    """What a run read (``seen``, None when the object did not exist) and how to read it again.

    ``reread`` is one libvirt call on the object the run found (or a lookup by name when it
    found none) and returns None when the object is gone. ``ignore`` names elements libvirt
    itself changes while nobody edits the definition (a pool's capacity figures).
    """

    what: str
    seen: str | None
    reread: Callable[[], str | None]
    ignore: Sequence[str] = ()

    def check(self) -> None:
        """Raise ``ConcurrentChange`` when the stored definition is no longer the one read."""
        try:
            now = self.reread()
        except (KvmLibvirtError, libvirt.libvirtError) as exc:
            if not _gone(exc):
                raise
            now = None
        if canonical_definition(now, self.ignore) != canonical_definition(self.seen, self.ignore):
            raise ConcurrentChange(self.what)


def reconcile(attempt: Callable[[], T], what: str, *, tries: int = 2) -> T:
    """Run ``attempt`` (read, compute, ``Guard.check``, write) and return its result.

    When the definition changed under it, it runs again from the new state; when it changed
    once more, this fails with nothing written (``check`` comes before the first write).
    """
    for remaining in range(tries - 1, -1, -1):
        try:
            return attempt()
        except ConcurrentChange:
            if remaining == 0:
                break
    raise KvmConcurrencyError(
        f"{what} was changed concurrently by someone else while this task ran "
        f"({tries} times in a row); nothing was written. Run the task again to apply it to "
        "the new definition.",
        attempts=tries,
    )
