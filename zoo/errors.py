"""User-facing errors.

Anything the user can fix (a wrong recipe name, a missing file, a text column that is not
there) raises :class:`ZooError`. The command-line entry points catch it and print its message
without a traceback; library callers get an ordinary exception they can catch.
"""

from __future__ import annotations

import difflib
import errno
import os
import resource
import shutil
from collections.abc import Iterable
from pathlib import Path

#: the errno values that mean "no room to write": a full disk, a quota, a file size limit
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class ZooError(Exception):
    """An error caused by input the user can fix; its message says what and how."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def human_bytes(n: float) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def space_note(path: str | os.PathLike) -> str:
    """``12.3 GB free on its disk`` (plus the file size limit, if ``ulimit -f`` sets one)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = human_bytes(shutil.disk_usage(folder).free)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    cap = f", files limited to {human_bytes(limit)} (ulimit -f)" if limit != resource.RLIM_INFINITY else ""
    return f"{free} free on its disk{cap}"


def unknown(kind: str, name: str, choices: Iterable[str]) -> ZooError:
    """A :class:`ZooError` for an unknown name that lists what exists."""
    choices = sorted(choices)
    return ZooError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; available: {', '.join(choices)}"
    )
