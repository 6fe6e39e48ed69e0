"""User-facing errors.

Anything the user can fix (a wrong recipe name, a missing file, a text column that is not
there) raises :class:`ZooError`. The command-line entry points catch it and print its message
without a traceback; library callers get an ordinary exception they can catch.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """An error caused by input the user can fix; its message says what and how."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ZooError:
    """A :class:`ZooError` for an unknown name that lists what exists."""
    choices = sorted(choices)
    return ZooError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; available: {', '.join(choices)}"
    )
