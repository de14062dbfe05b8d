# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Secrets never leave the host: compare them by keyed digest, redact them from all output.

A definition read with ``VIR_DOMAIN_XML_SECURE`` holds console passwords in clear. Code that
needs them (to compare, or to keep them in a definition it writes back) reads them that way;
everything a module returns goes through a ``Redactor`` first. Ansible's ``no_log`` masks a
parameter's raw value only, and knows nothing of a password already stored on the guest, so
the redactor masks every secret it was told about in its raw, XML-escaped and JSON-escaped
forms, and strips the secret attributes from XML structurally.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from typing import Any

from . import _xml

MASK = "********"

# Attributes libvirt shows only with VIR_DOMAIN_XML_SECURE (the console passwords of vnc,
# spice and rdp graphics). Disk and pool <auth>/<secret> elements hold references, not values.
SECRET_ATTRIBUTES = (("graphics", "passwd"),)

# One random key per process, that is per module run: a digest means nothing outside the run
# and cannot be tested against guessed passwords offline.
_KEY = secrets.token_bytes(32)


def fingerprint(value: str | None, key: bytes | None = None) -> str | None:
    """A keyed digest standing for a secret in comparisons and diffs; None when unset."""
    if not value:
        return None
    mac = hmac.new(key or _KEY, value.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"secret:{mac[:16]}"


def _secret_elements(root) -> Iterable[tuple[Any, str]]:
    for tag, attr in SECRET_ATTRIBUTES:
        for elem in root.iter(tag):
            if elem.get(attr) is not None:
                yield elem, attr


def secret_values(root) -> list[str]:
    """The secret attribute values of an XML tree (one read with ``..._XML_SECURE``)."""
    if root is None:
        return []
    return [elem.get(attr) for elem, attr in _secret_elements(root) if elem.get(attr)]


def strip_secrets(root):
    """A copy of ``root`` without secret attributes, as libvirt shows it without SECURE."""
    clean = copy.deepcopy(root)
    for elem, attr in list(_secret_elements(clean)):
        del elem.attrib[attr]
    return clean


_XML_ESCAPES = (
    {"&": "&amp;", "<": "&lt;", ">": "&gt;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"},
    {"&": "&amp;", "<": "&lt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;"},
)


def _xml_escaped(value: str, table: dict[str, str]) -> str:
    return "".join(table.get(ch, ch) for ch in value)


def forms(value: str) -> set[str]:
    """Every way ``value`` may show in output: raw, XML-escaped, JSON-escaped, both."""
    found = {value} | {_xml_escaped(value, t) for t in _XML_ESCAPES}
    for text in list(found):
        for ascii_only in (True, False):
            found.add(json.dumps(text, ensure_ascii=ascii_only)[1:-1])
    found.discard("")
    return found


class Redactor:
    """Masks the secrets it was told about in text, data, XML and exceptions."""

    def __init__(self) -> None:
        self._forms: set[str] = set()
        self._ordered: list[str] = []

    def add(self, *values: str | None) -> None:
        for value in values:
            if value:
                self._forms |= forms(value)
        self._ordered = sorted(self._forms, key=len, reverse=True)

    def add_from_xml(self, root) -> None:
        self.add(*secret_values(root))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, value: str) -> str:
        for form in self._ordered:
            if form in value:
                value = value.replace(form, MASK)
        return value

    def data(self, value: Any) -> Any:
        """A copy of plain data (dicts, lists, strings) with every secret masked.

        Dict keys are left alone: they are the collection's own names (``changed``, ``xml``,
        field names), which a short password must not mask away.
        """
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.data(v) for v in value)
        return value

    def xml(self, root) -> str:
        """The XML text of ``root`` without secret attributes and with known secrets masked."""
        return self.text(_xml.to_string(strip_secrets(root)))

    def exception(self, exc: BaseException | None) -> None:
        """Mask secrets in an exception and its causes, in place (message, details, args)."""
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            exc.args = tuple(self.data(a) for a in exc.args)
            for attr in ("msg", "libvirt_message", "details", "err"):
                if isinstance(getattr(exc, attr, None), (str, dict, list, tuple)):
                    setattr(exc, attr, self.data(getattr(exc, attr)))
            exc = exc.__cause__ or exc.__context__
