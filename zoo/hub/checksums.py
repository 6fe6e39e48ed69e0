"""The sha256 of files: the one place that computes and compares them.

A model folder lists its files in ``sha256.json`` (:func:`write_checksums`,
:func:`verify_checksums`); ``checkpoints/manifest.json`` lists a published folder's files
again (:mod:`zoo.hub.manifest`). Both are checked with :func:`verify_files`, so a corrupt or
changed file gets the same kind of message whichever list caught it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from zoo.errors import ZooError

CHECKSUMS = "sha256.json"


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_checksums(folder: str | Path, exclude: Iterable[str] = ()) -> dict[str, str]:
    """``{file name: sha256}`` of every file directly in ``folder`` (sorted), but ``exclude``."""
    skip = set(exclude)
    return {p.name: sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name not in skip}


def verify_files(folder: str | Path, expected: Mapping[str, str], listed_in: str, remedy: str,
                 exact: bool = False) -> None:
    """Check that every file in ``expected`` (name -> sha256) is in ``folder`` with that sha256.

    ``listed_in`` names the list (for the messages), ``remedy`` says what to do about a
    changed file; with ``exact`` a file in ``folder`` that the list lacks is an error too.

    Raises:
        ZooError: naming the first missing, changed or (with ``exact``) unlisted file.
    """
    folder = Path(folder)
    for name, want in expected.items():
        path = folder / name
        if not path.is_file():
            raise ZooError(f"{path} is listed in {listed_in} but missing")
        if sha256(path) != want:
            raise ZooError(f"checksum mismatch for {path} against {listed_in}: the file is corrupt or was changed "
                           f"(expected sha256 {want[:16]}...); {remedy}")
    if exact:
        extra = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in expected)
        if extra:
            raise ZooError(f"{folder} has files not in {listed_in}: {', '.join(extra)}")


def write_checksums(folder: str | Path) -> dict[str, str]:
    """Write ``sha256.json`` listing the SHA-256 of every other file in ``folder``."""
    folder = Path(folder)
    sums = folder_checksums(folder, exclude=(CHECKSUMS,))
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1))
    return sums


def verify_checksums(folder: str | Path) -> None:
    """Raise a :class:`ZooError` naming any file whose SHA-256 differs from ``sha256.json``."""
    folder = Path(folder)
    listed = folder / CHECKSUMS
    if not listed.is_file():
        raise ZooError(f"{folder} has no {CHECKSUMS}; cannot verify its files")
    verify_files(folder, read_checksums(listed), CHECKSUMS, "download or export it again")


def read_checksums(path: str | Path) -> dict[str, str]:
    """A ``sha256.json`` (or any list of file -> sha256) read and checked: a JSON object whose
    values are hex strings, else a one-line :class:`ZooError` naming the file."""
    path = Path(path)
    try:
        listed = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path} is not valid JSON ({e}); download or export the folder again") from None
    if not isinstance(listed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in listed.items()):
        raise ZooError(f"{path} must be a JSON object of file name -> sha256, got {type(listed).__name__}; "
                       "download or export the folder again")
    return listed
