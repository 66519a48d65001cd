"""Dotted keys (``loss.box_weight``) through nested dicts and pydantic models, and pydantic errors
told by them: one walk for the config, the search spaces and the trainer."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails


class KeyPathError(ValueError):
    """A dotted key that does not lead where it should; the message says where it stops."""


def get_dotted(obj: Any, key: str | Sequence[str]) -> Any:
    """``obj.loss.box_weight`` for the key ``loss.box_weight`` (or its parts)."""
    return functools.reduce(getattr, key.split(".") if isinstance(key, str) else key, obj)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``tree["loss"]["box_weight"] = value``; raises :class:`KeyPathError` with the key up to the first non-dict."""
    *parents, leaf = key.split(".")
    for i, part in enumerate(parents):
        child = tree.get(part)
        if not isinstance(child, dict):
            raise KeyPathError(".".join(parents[: i + 1]))
        tree = child
    tree[leaf] = value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"box_weight": 1}}`` → ``{"loss.box_weight": 1}`` (the search's key format)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def field_at(root: type[BaseModel], key: str) -> FieldInfo:
    """The field a dotted key names; an unknown key, a setting used as a section or a section
    raises :class:`KeyPathError`."""
    section, parts = root, key.split(".")
    for i, part in enumerate(parts):
        field = section.model_fields.get(part)
        if field is None:
            where, hint = ".".join(parts[:i]) or "the top level", did_you_mean(part, section.model_fields)
            keys = ", ".join(section.model_fields)
            raise KeyPathError(f"not a {root.__name__} key: {where} has no {part!r}{hint}; keys there: {keys}")
        sub = field.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            if i < len(parts) - 1:
                raise KeyPathError(f"not a {root.__name__} key: {'.'.join(parts[: i + 1])} is a setting, not a section")
            return field
        section = sub
    raise KeyPathError(f"{key} is a section; name a key inside it, e.g. {key}.{next(iter(section.model_fields))}")


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``word``, or nothing."""
    options = list(options)
    # A case slip or a truncated name first (val/AP, grace), then anything spelled alike.
    close = [o for o in options if o.lower() == word.lower()] or [o for o in options if o.startswith(word)]
    close = close or difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(key: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    return f"unknown key{did_you_mean(key, allowed)}; allowed keys here: {', '.join(allowed)}"


def dotted_path(loc: Iterable[str | int]) -> str:
    """An error's location as text: ``params.optim.lr.low``, a list index as ``choices[1]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def error_message(err: ErrorDetails) -> str:
    """Pydantic's message and the value it rejected (not a whole mapping)."""
    got = err.get("input")
    return err["msg"] + ("" if isinstance(got, dict) else f" (got {got!r})")
