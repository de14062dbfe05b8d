# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Typed errors raised by the collection's library code.

Library code raises these; only the module wrapper (``_client.KvmModule``) turns them
into ``fail_json``.
"""

from __future__ import annotations

import sys


class KvmError(Exception):
    """An error with a message for the user and optional structured details."""

    def __init__(self, msg: str, **details) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class KvmValidationError(KvmError):
    """Bad input, found before anything was changed."""


class KvmTimeoutError(KvmError):
    """A transition did not finish within its timeout."""


class KvmConcurrencyError(KvmError):
    """Someone else changed the object between this run's read and its write; nothing written."""


class KvmUnexpectedError(KvmError):
    """An exception the library code did not expect (a bug, or a state nobody foresaw)."""


class KvmLibvirtError(KvmError):
    """A libvirt call failed; keeps libvirt's error code, domain and message."""

    def __init__(
        self,
        msg: str,
        code: int | None = None,
        domain: int | None = None,
        libvirt_message: str | None = None,
        **details,
    ) -> None:
        super().__init__(msg, **details)
        self.code = code
        self.domain = domain
        self.libvirt_message = libvirt_message

    @property
    def code_name(self) -> str | None:
        return error_code_name(self.code)


def error_code_name(code: int | None) -> str | None:
    """``VIR_ERR_*`` name of a libvirt error code, e.g. 42 -> ``VIR_ERR_NO_DOMAIN``."""
    # An error with a libvirt code means libvirt-python is loaded; this file does not import
    # it (the one guarded import is ._libvirt, which builds on this file).
    libvirt = sys.modules.get("libvirt")
    if code is None or libvirt is None:
        return None
    for name in dir(libvirt):
        if name.startswith("VIR_ERR_") and getattr(libvirt, name) == code:
            if name in ("VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR"):
                continue  # error levels, not codes
            return name
    return None


def from_libvirt(exc: Exception, action: str, **details) -> KvmLibvirtError:
    """Turn a ``libvirt.libvirtError`` into a ``KvmLibvirtError`` saying what failed."""
    code = domain = None
    message = str(exc)
    if _is_libvirt_error(exc):
        code = exc.get_error_code()
        domain = exc.get_error_domain()
        message = exc.get_error_message() or message
    return KvmLibvirtError(
        f"Failed to {action}: {message}",
        code=code,
        domain=domain,
        libvirt_message=message,
        **details,
    )


def is_error(exc: Exception, *codes: int) -> bool:
    """True if ``exc`` is a libvirt error with one of ``codes``."""
    return _is_libvirt_error(exc) and exc.get_error_code() in codes


def _is_libvirt_error(exc: Exception) -> bool:
    libvirt = sys.modules.get("libvirt")
    return libvirt is not None and isinstance(exc, libvirt.libvirtError)
