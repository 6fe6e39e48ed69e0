"""Checkers for source options: each returns the value or raises a one-line :class:`ZooError`
that names the source, the option, what it got and what is allowed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zoo.errors import ZooError


def check_fraction(source: str, options: Mapping[str, Any], key: str) -> float:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ZooError(f"source '{source}': {key} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_string(source: str, options: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = options[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        what = "a non-empty string or null" if optional else "a non-empty string"
        raise ZooError(f"source '{source}': {key} must be {what}, got {value!r}")
    return value


def check_count(source: str, options: Mapping[str, Any], key: str, *, minimum: int, optional=False):
    value = options[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise ZooError(f"source '{source}': {key} must be {what}, got {value!r}")
    return value


def check_string_list(source: str, options: Mapping[str, Any], key: str) -> list[str]:
    value = options[key]
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(isinstance(v, str) and v for v in items)
    ):
        raise ZooError(
            f"source '{source}': {key} must be a path/glob or a non-empty list of them, got {value!r}"
        )
    return list(items)


