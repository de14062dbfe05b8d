# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Libvirt's cpuset syntax (``0-3,^2,6``): parsed into CPU numbers and written back."""

from __future__ import annotations

from ._errors import KvmValidationError

# The highest CPU number a cpuset may name: libvirt's cpumaps hold 16384 CPUs
# (VIR_DOMAIN_CPUMASK_LEN; libvirt 9.0 refuses "16384" with "Failed to parse bitmap").
MAX_CPU_ID = 16383


def parse_cpuset(text: str | int, what: str = "cpuset") -> frozenset:
    """``"0-3,^2,6"`` -> ``{0, 1, 3, 6}`` (libvirt's cpuset syntax).

    CPU numbers are bounded (``MAX_CPU_ID``) before any range is expanded, and ranges are
    set as bit masks, so no input costs more than a few thousand small integers.
    """
    cpus = excluded = 0
    shown = repr(str(text)) if len(str(text)) <= 60 else repr(f"{str(text)[:57]}...")
    for raw in str(text).split(","):
        part = raw.strip()
        if not part:
            continue
        exclude = part.startswith("^")
        if exclude:
            part = part[1:]
        try:
            lo, dash, hi = part.partition("-")
            first, last = int(lo), int(hi if dash else lo)
            if not 0 <= first <= last:
                raise ValueError(part)
        except ValueError as exc:
            raise KvmValidationError(f"Invalid {what} {shown}: expected e.g. 0-3,^2,6") from exc
        if last > MAX_CPU_ID:
            raise KvmValidationError(
                f"Invalid {what} {shown}: CPU {last} is beyond the highest CPU number libvirt "
                f"accepts ({MAX_CPU_ID})"
            )
        mask = ((1 << (last - first + 1)) - 1) << first
        if exclude:
            excluded |= mask
        else:
            cpus |= mask
    result = cpus & ~excluded
    if not result:
        raise KvmValidationError(f"Invalid {what} {shown}: selects no CPU")
    return frozenset(i for i in range(result.bit_length()) if result >> i & 1)


def format_cpuset(cpus) -> str:
    """``{0, 1, 3}`` -> ``"0-1,3"`` (the canonical form libvirt writes back)."""
    ordered = sorted(cpus)
    ranges: list[str] = []
    start = prev = None
    for cpu in [*ordered, None]:
        if start is None:
            start = prev = cpu
            continue
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(ranges)


def canonical_cpuset(text: str | int | None, what: str = "cpuset") -> str | None:
    return None if text is None else format_cpuset(parse_cpuset(text, what))
