# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The collection's one size parser: ``10GiB``, ``512M``, ``1.5 G``, ``1048576`` -> bytes.

Units are case-insensitive. ``K``/``M``/``G``/``T``/``P`` and ``KiB``/``MiB``... are binary
(powers of 1024), like libvirt's and qemu-img's single-letter units; ``KB``/``MB``/``GB``...
are decimal (powers of 1000). A bare number is in ``default_unit`` (bytes unless told).
"""

from __future__ import annotations

import re

from ._errors import KvmValidationError

_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?|bytes?)?\s*$", re.IGNORECASE)


def unit_factor(unit: str) -> int:
    """Bytes in one ``unit`` (``B``, ``K``, ``KiB``, ``KB``, ``MiB``, ``GB``...)."""
    m = _SIZE_RE.match(f"1{unit}")
    if m is None:
        raise KvmValidationError(f"Unknown size unit '{unit}'")
    prefix, suffix = m.group(2).lower(), (m.group(3) or "").lower()
    if suffix == "b" and prefix:  # KB, MB, GB: decimal
        return 1000 ** _POWERS[prefix]
    return 1024 ** _POWERS[prefix]


def parse_size(value: int | str, *, what: str = "size", default_unit: str = "B") -> int:
    """Bytes in ``value``: an int (in ``default_unit``) or a string with an optional unit.

    Raises ``KvmValidationError`` naming ``what`` when the value cannot be read, is
    negative, or is not a whole number of bytes.
    """
    if isinstance(value, bool):
        raise KvmValidationError(f"{what}: expected a size such as 10GiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise KvmValidationError(f"{what} must not be negative, got {value}")
        return value * unit_factor(default_unit)
    if isinstance(value, float):
        value = repr(value)
    m = _SIZE_RE.match(str(value))
    if m is None:
        raise KvmValidationError(
            f"{what}: cannot read {value!r} as a size (examples: 10GiB, 512M, 1048576)"
        )
    number, prefix, suffix = m.group(1), m.group(2), m.group(3) or ""
    factor = unit_factor(prefix + suffix) if (prefix or suffix) else unit_factor(default_unit)
    if "." in number:
        whole, frac = number.split(".")
        scale = 10 ** len(frac)
        total = int(whole) * factor + (int(frac) * factor) // scale
        if (int(frac) * factor) % scale:
            raise KvmValidationError(f"{what}: {value!r} is not a whole number of bytes")
        return total
    return int(number) * factor


# --- memory sizes of guests (virtops.kvm.domain) ----------------------------------------------
MIB = 1024 * 1024


def parse_mib(value: int | str, *, what: str = "memory") -> int:
    """Whole MiB in ``value``: an int is MiB, a string may carry a unit (``2GiB``, ``1G``)."""
    size = parse_size(value, what=what, default_unit="MiB")
    if size % MIB:
        raise KvmValidationError(f"{what}: {value!r} is not a whole number of MiB")
    return size // MIB


def from_libvirt(value: str, unit: str | None) -> int:
    """Bytes of a libvirt value such as ``<memory unit='KiB'>524288</memory>`` (KiB if no unit)."""
    return int(value.strip()) * unit_factor(unit or "KiB")
