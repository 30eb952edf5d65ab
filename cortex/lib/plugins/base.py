"""What a plugin is: its definition, its settings fields and their validation, and what session plugins receive.

Pure code (standard library only). A plugin is one frozen :class:`PluginDefinition` — identity, catalogue text,
the events it reacts to, the annotation type it writes, its settings fields and its analyzer functions:

- ``on_message(text, settings)`` for ``message.created`` plugins: the annotation data for one chat line, or
  ``None`` when the line gets no annotation. Called for every message, so it must be fast (well under a
  millisecond) and must not block.
- ``on_session_end(lines, settings, ctx)`` for ``session.ended`` plugins: the annotation data for the whole
  transcript (``lines`` in transcript order), or ``None``. May call out through ``ctx.post_json`` (the server's
  outbound client and address policy); raises :class:`PluginError` when the run failed.

``settings`` is always the complete, validated dictionary :func:`validate_settings` returned (defaults filled in,
password fields in plain text — the models layer encrypts them at rest and masks them in responses with
:data:`MASK`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = [
    "FIELD_TYPES",
    "MASK",
    "MAX_CHIP_LENGTH",
    "MAX_CHIPS",
    "MAX_STRING_LENGTH",
    "Action",
    "Line",
    "PluginDefinition",
    "PluginError",
    "SessionContext",
    "SettingField",
    "SettingsError",
    "split_sentences",
    "validate_settings",
]

FIELD_TYPES = ("text", "number", "email", "select", "boolean", "password", "chips")
CATEGORIES = ("moderation", "analytics", "automation", "integration")
ANNOTATION_TYPES = ("profanity", "summary", "action_items", "sentiment")

MASK = "********"
"""What responses show instead of a stored password value; sent back in an update it means "keep the value"."""

MAX_STRING_LENGTH = 2000
MAX_CHIPS = 500
MAX_CHIP_LENGTH = 100

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_ABBREVIATIONS = frozenset("mr mrs ms dr prof sr jr st vs etc e.g i.e cf approx inc ltd corp dept".split())
_BOUNDARY = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"')\]]))\s+|\s*\n\s*")


@dataclass(frozen=True)
class SettingField:
    """One setting of a plugin, as the UI renders it (``PluginSettingField``) and :func:`validate_settings`
    checks it. ``minimum``/``maximum`` apply to numbers, ``pattern`` (searched, as in JSON Schema — anchor it
    with ``^…$``) to non-empty text and password values, ``options`` to selects. A list default (chips) is
    stored as a tuple so definitions stay hashable."""

    key: str
    type: str
    label: str
    description: str = ""
    required: bool = False
    default: object = None
    options: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise ValueError(f"setting {self.key!r}: unknown type {self.type!r}")
        if isinstance(self.default, list):
            object.__setattr__(self, "default", tuple(self.default))
        if self.options is not None:
            object.__setattr__(self, "options", tuple(self.options))
        if self.type == "select" and not self.options:
            raise ValueError(f"setting {self.key!r}: a select needs options")
        if self.pattern is not None:
            re.compile(self.pattern)
        if self.default is not None:
            _check(self, _default_copy(self.default))  # a definition whose default is invalid is a bug

    def body(self) -> dict:
        """The OpenAPI ``PluginSettingField`` object (absent optional members are left out, never null)."""
        out: dict = {
            "key": self.key,
            "type": self.type,
            "label": self.label,
            "description": self.description,
            "required": self.required,
        }
        if self.default is not None:
            out["default"] = _default_copy(self.default)
        if self.options is not None:
            out["options"] = list(self.options)
        validation: dict = {}
        if self.minimum is not None:
            validation["min"] = self.minimum
        if self.maximum is not None:
            validation["max"] = self.maximum
        if self.pattern is not None:
            validation["pattern"] = self.pattern
        if validation:
            out["validation"] = validation
        return out


@dataclass(frozen=True)
class Action:
    """A session action the plugin offers (``SessionAction``), e.g. "Generate Minutes"."""

    id: str
    label: str
    endpoint_path: str
    method: str
    type: str
    icon: str | None = None

    def body(self) -> dict:
        out: dict = {"id": self.id, "label": self.label}
        if self.icon is not None:
            out["icon"] = self.icon
        out.update(endpointPath=self.endpoint_path, method=self.method, type=self.type)
        return out


@dataclass(frozen=True)
class Line:
    """One transcript line handed to session plugins, in transcript order."""

    message_id: str
    external_user_id: str | None
    sender_name: str
    content: str
    timestamp: datetime


class SessionContext(Protocol):
    """What a session plugin may do outside itself (implemented above the models layer)."""

    def post_json(self, url: str, body: dict, headers: dict[str, str], timeout: float) -> dict:
        """POST ``body`` as JSON through the server's outbound address policy and return the JSON answer;
        raises :class:`PluginError` on any failure (refused address, network error, non-2xx, not JSON)."""
        ...


class PluginError(Exception):
    """A plugin run failed. The message is safe to log and to show: it never contains a secret."""


@dataclass(frozen=True)
class PluginDefinition:
    """One plugin of the catalogue. ``id`` is a fixed UUID literal, the same on every install."""

    id: str
    slug: str
    name: str
    description: str
    version: str
    category: str
    events: tuple[str, ...]
    annotation_type: str
    settings: tuple[SettingField, ...] = ()
    icon: str | None = None
    actions: tuple[Action, ...] = ()
    on_message: Callable[[str, dict], dict | None] | None = dataclasses.field(default=None, compare=False)
    on_session_end: Callable[[list[Line], dict, SessionContext], dict | None] | None = dataclasses.field(
        default=None, compare=False
    )
    check: Callable[[dict], None] | None = dataclasses.field(default=None, compare=False)
    """Cross-field rules, called last by :func:`validate_settings` with the complete settings; raises
    :class:`SettingsError`."""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"plugin {self.slug!r}: unknown category {self.category!r}")
        if self.annotation_type not in ANNOTATION_TYPES:
            raise ValueError(f"plugin {self.slug!r}: unknown annotation type {self.annotation_type!r}")
        keys = [f.key for f in self.settings]
        if len(set(keys)) != len(keys):
            raise ValueError(f"plugin {self.slug!r}: duplicate setting keys")

    def body(self) -> dict:
        """The OpenAPI ``Plugin`` object."""
        out: dict = {
            "id": self.id,
            "slug": self.slug,
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "category": self.category,
            "events": list(self.events),
            "outputAnnotationType": self.annotation_type,
            "settingsSchema": [f.body() for f in self.settings],
        }
        if self.icon is not None:
            out["icon"] = self.icon
        out["isActive"] = True
        return out

    def secret_keys(self) -> tuple[str, ...]:
        """The keys of the password fields (encrypted at rest, masked in responses)."""
        return tuple(f.key for f in self.settings if f.type == "password")

    def setting(self, key: str) -> SettingField | None:
        """The settings field called ``key``, or None."""
        for f in self.settings:
            if f.key == key:
                return f
        return None


class SettingsError(ValueError):
    """An invalid settings value; ``field`` is the setting key (empty for the settings object itself)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"settings.{field}: {message}" if field else f"settings: {message}")


def validate_settings(plugin: PluginDefinition, given: dict | None, current: dict | None = None) -> dict:
    """Return the complete settings: ``current`` (or the defaults when None) merged with ``given``, validated.

    - Unknown keys in ``given`` are refused; unknown keys in ``current`` (a setting a newer version dropped)
      are left out.
    - ``None`` for a field resets it to its default (or removes it when it has none).
    - For a password field, :data:`MASK` means "keep the current value".
    - Types: number = int or float, not bool, finite; boolean = bool; text, email, password and select = str
      (at most 2000 characters); chips = list of str (at most 500 entries, each 1–100 characters after
      stripping; entries are stripped and duplicates dropped, first one kept).
    - select values must be one of the options, numbers within minimum/maximum, non-empty text and password
      values must match the pattern, non-empty emails must look like an address.
    - A required field missing or empty ("" or []) after the merge is refused.
    - Defaults are filled in; ``plugin.check`` (cross-field rules) runs last.

    Raises :class:`SettingsError` naming the first offending field.
    """
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise SettingsError("", "must be an object")
    fields = {f.key: f for f in plugin.settings}
    for key in given:
        if key not in fields:
            raise SettingsError(str(key), "unknown setting")

    base = current if current is not None else {}
    merged: dict = {}
    for f in plugin.settings:
        if f.key in given:
            value = given[f.key]
            if value is None:
                continue  # reset: the default is filled in below
            if f.type == "password" and value == MASK:
                if base.get(f.key) is not None:
                    merged[f.key] = base[f.key]
                continue
            merged[f.key] = value
        elif current is not None and current.get(f.key) is not None:
            merged[f.key] = current[f.key]

    result: dict = {}
    for f in plugin.settings:
        if f.key in merged:
            result[f.key] = _check(f, merged[f.key])
        elif f.default is not None:
            result[f.key] = _default_copy(f.default)
        if f.required and (f.key not in result or result[f.key] in ("", [])):
            raise SettingsError(f.key, "is required")
    if plugin.check is not None:
        plugin.check(result)
    return result


def _default_copy(default: object) -> object:
    return list(default) if isinstance(default, tuple | list) else default


def _check(f: SettingField, value: object) -> object:
    """The validated (and, for chips, normalised) value of one field; raises SettingsError."""
    if f.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(f.key, "must be a number")
        if not math.isfinite(value):
            raise SettingsError(f.key, "must be a finite number")
        if f.minimum is not None and value < f.minimum:
            raise SettingsError(f.key, f"must be at least {_number(f.minimum)}")
        if f.maximum is not None and value > f.maximum:
            raise SettingsError(f.key, f"must be at most {_number(f.maximum)}")
        return value
    if f.type == "boolean":
        if not isinstance(value, bool):
            raise SettingsError(f.key, "must be a boolean")
        return value
    if f.type == "chips":
        return _chips(f, value)
    if not isinstance(value, str):
        raise SettingsError(f.key, "must be a string")
    if len(value) > MAX_STRING_LENGTH:
        raise SettingsError(f.key, f"must be at most {MAX_STRING_LENGTH} characters")
    if f.type == "select":
        if value not in (f.options or ()):
            raise SettingsError(f.key, "must be one of: " + ", ".join(f.options or ()))
    elif f.type == "email":
        if value and not _EMAIL.fullmatch(value):
            raise SettingsError(f.key, "must be an e-mail address")
    if value and f.pattern is not None and f.type in ("text", "password") and not re.search(f.pattern, value):
        raise SettingsError(f.key, f"must match the pattern {f.pattern}")
    return value


def _chips(f: SettingField, value: object) -> list[str]:
    if not isinstance(value, list | tuple):
        raise SettingsError(f.key, "must be a list of strings")
    if len(value) > MAX_CHIPS:
        raise SettingsError(f.key, f"must have at most {MAX_CHIPS} entries")
    out: list[str] = []
    seen: set[str] = set()
    for entry in value:
        if not isinstance(entry, str):
            raise SettingsError(f.key, "must be a list of strings")
        entry = entry.strip()
        if not 1 <= len(entry) <= MAX_CHIP_LENGTH:
            raise SettingsError(f.key, f"entries must be 1 to {MAX_CHIP_LENGTH} characters long")
        if entry not in seen:
            seen.add(entry)
            out.append(entry)
    return out


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def split_sentences(text: str) -> list[str]:
    """``text`` cut into sentences (stripped, none empty): after ``. ! ? …`` (and closing quotes or brackets)
    followed by white space, except after a few common abbreviations ("Dr.", "etc.", "e.g.", "U.S."), and at
    every line break. A regular expression, no language data."""
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        head = text[start : m.start()]
        if "\n" not in m.group() and _ends_with_abbreviation(head):
            continue
        if head.strip():
            sentences.append(head.strip())
        start = m.end()
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


def _ends_with_abbreviation(text: str) -> bool:
    words = text.split()
    last = words[-1] if words else ""
    return last.rstrip(".").lower() in _ABBREVIATIONS or bool(re.fullmatch(r"(?:\w\.){2,}", last))
