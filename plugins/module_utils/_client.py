# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The one module wrapper of the collection.

``KvmModule`` merges the common options into a module's argument spec, checks that the
Python libraries are importable, opens one libvirt connection per run (with bounded
retries while the daemon starts or restarts), and is the only place that calls
``fail_json``: library code raises :mod:`._errors` exceptions instead.

Typical use in a module::

    def main():
        module = KvmModule(argument_spec=..., supports_check_mode=True)
        module.run(lambda m: MyManager(m).run())
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from . import _xml
from ._errors import (
    KvmError,
    KvmLibvirtError,
    KvmUnexpectedError,
    KvmValidationError,
    from_libvirt,
)
from ._libvirt import LIBVIRT_IMPORT_ERROR, libvirt

LXML_IMPORT_ERROR = None
try:
    # Checked here so that every module fails with one clear message when lxml is missing.
    # pylint: disable-next=unused-import
    from lxml import etree  # noqa: F401
except ImportError:
    LXML_IMPORT_ERROR = traceback.format_exc()


# Nothing to catch when libvirt-python is missing (only a connection=False module runs then).
_LIBVIRT_ERRORS: Any = libvirt.libvirtError if libvirt is not None else ()

COMMON_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "uri": {
        "type": "str",
        "default": "qemu:///system",
        "fallback": (env_fallback, ["LIBVIRT_DEFAULT_URI"]),
    },
    "connect_timeout": {"type": "int", "default": 30},
}

# libvirt error codes that mean "the daemon is not there yet" (starting, restarting),
# worth retrying until connect_timeout runs out. Anything else (bad URI, auth) fails at once.
_TRANSIENT_CODE_NAMES = (
    "VIR_ERR_SYSTEM_ERROR",
    "VIR_ERR_NO_CONNECT",
    "VIR_ERR_RPC",
    "VIR_ERR_OPERATION_TIMEOUT",
)


def _transient_codes() -> set[int]:
    return {getattr(libvirt, name) for name in _TRANSIENT_CODE_NAMES if hasattr(libvirt, name)}


def open_connection(
    uri: str,
    *,
    readonly: bool = False,
    timeout: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    opener: Callable[[str], Any] | None = None,
):
    """Open a libvirt connection, retrying transient failures for up to ``timeout`` seconds."""
    if opener is None:
        opener = libvirt.openReadOnly if readonly else libvirt.open
    deadline = time.monotonic() + max(timeout, 0)
    delay = 0.25
    attempts = 0
    transient = _transient_codes()
    while True:
        attempts += 1
        try:
            conn = opener(uri)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in transient or time.monotonic() + delay > deadline:
                raise from_libvirt(exc, f"connect to libvirt at {uri}", attempts=attempts) from exc
            sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        if conn is None:  # very old bindings returned None instead of raising
            raise KvmLibvirtError(f"Failed to connect to libvirt at {uri}", attempts=attempts)
        return conn


def check_text_options(params: dict[str, Any], prefix: str = "") -> None:
    """Fail on any string option holding a character libvirt's XML cannot hold.

    Names, titles, descriptions, paths and every other text end up in an XML definition or in
    a libvirt name; lxml would crash on them halfway through a run. The value is not shown
    (it may be a secret), only the option and the character's position.
    """
    for key, value in params.items():
        where = f"{prefix}{key}"
        if isinstance(value, str):
            bad = _xml.invalid_char(value)
            if bad is not None:
                raise KvmValidationError(
                    f"Option {where} contains the control character {bad[1]} at position "
                    f"{bad[0]}, which libvirt's XML cannot hold; nothing was changed",
                    option=where,
                )
        elif isinstance(value, dict):
            check_text_options(value, f"{where}.")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if isinstance(item, (str, dict, list, tuple)):
                    check_text_options({f"[{index}]": item}, where)


def _option_holding(params: dict[str, Any], value: Any) -> str | None:
    """The name of the top-level option whose value is ``value`` (a file name), if any."""
    if not value:
        return None
    for key, given in params.items():
        if given == value:
            return key
    return None


class KvmModule:
    """AnsibleModule plus the libvirt connection and the collection's error handling."""

    def __init__(
        self,
        argument_spec: dict[str, Any],
        *,
        readonly: bool = False,
        connection: bool = True,
        **kwargs: Any,
    ) -> None:
        # connection=False: a module that never talks to libvirt (image) takes no uri and
        # needs neither libvirt-python nor lxml.
        spec = dict(COMMON_ARGUMENT_SPEC) if connection else {}
        spec.update(argument_spec)
        self.module = AnsibleModule(argument_spec=spec, **kwargs)
        self.readonly = readonly
        self._conn = None
        if connection and LIBVIRT_IMPORT_ERROR:
            self.module.fail_json(
                msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR
            )
        if connection and LXML_IMPORT_ERROR:
            self.module.fail_json(msg=missing_required_lib("lxml"), exception=LXML_IMPORT_ERROR)
        try:
            check_text_options(self.params)  # before connecting: nothing has changed yet
        except KvmValidationError as exc:
            self.fail(exc)

    @property
    def params(self) -> dict[str, Any]:
        return self.module.params

    @property
    def check_mode(self) -> bool:
        return self.module.check_mode

    @property
    def diff_mode(self) -> bool:
        return self.module._diff

    @property
    def conn(self):
        """The run's one libvirt connection, opened on first use."""
        if self._conn is None:
            self._conn = open_connection(
                self.params["uri"], readonly=self.readonly, timeout=self.params["connect_timeout"]
            )
        return self._conn

    def warn(self, msg: str) -> None:
        self.module.warn(msg)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None

    def run(self, func: Callable[[KvmModule], dict[str, Any]]) -> None:
        """Run ``func(self)``; exit with its result, or fail with the error it raised."""
        try:
            result = func(self)
        except KvmError as exc:
            self.close()
            self.fail(exc)
        except _LIBVIRT_ERRORS as exc:  # a call the library code did not wrap
            self.close()
            self.fail(from_libvirt(exc, "complete a libvirt call"))
        except Exception as exc:  # never a bare module crash
            self.close()
            self.fail(self.unexpected(exc))
        self.close()
        self.module.exit_json(**result)

    def unexpected(self, exc: Exception) -> KvmUnexpectedError:
        """An exception nobody foresaw, as a failure naming the module, its object and option."""
        what = self.module._name or "the module"
        target = ", ".join(
            f"{key}={self.params[key]!r}"
            for key in ("name", "pool", "domain", "state")
            if isinstance(self.params.get(key), str)
        )
        details: dict[str, Any] = {"error_type": type(exc).__name__}
        cause = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, OSError):
            cause = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            details["errno"] = exc.errno
            option = _option_holding(self.params, exc.filename)
            if option:
                cause = f"option {option}: {cause}"
                details["option"] = option
        where = f"{what} ({target})" if target else what
        return KvmUnexpectedError(
            f"Unexpected error in {where}: {cause}. This is not an error the collection "
            "expected; the traceback is in 'exception' (shown with -vvv).",
            **details,
        )

    def fail(self, exc: KvmError) -> None:
        """The collection's only ``fail_json``: message, libvirt error code and traceback."""
        extra: dict[str, Any] = dict(exc.details)
        if isinstance(exc, KvmLibvirtError):
            extra.update(
                libvirt_error_code=exc.code,
                libvirt_error_name=exc.code_name,
                libvirt_error_domain=exc.domain,
                libvirt_message=exc.libvirt_message,
            )
        self.module.fail_json(msg=exc.msg, exception=traceback.format_exc(), **extra)
