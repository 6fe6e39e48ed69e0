"""``checkpoints/``: where published models live, and its ``manifest.json``.

The manifest records, per published name, the summary numbers the listings show and the
sha256 of every file of its folder. :func:`verify_manifest` checks a folder against it with
:func:`zoo.hub.checksums.verify_files` (the same check a folder's own ``sha256.json`` gets),
and also refuses files the manifest does not list.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.hub.checksums import folder_checksums, verify_files

MANIFEST = "manifest.json"


def checkpoints_dir() -> Path:
    """Where published models live: ``$ZOO_CHECKPOINTS``, else ``checkpoints/`` beside ``zoo``."""
    env = os.environ.get("ZOO_CHECKPOINTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "checkpoints"


def read_manifest(root: Path | None = None) -> dict[str, Any]:
    """``checkpoints/manifest.json`` as a dict (``{"models": {}}`` when there is none)."""
    path = (root or checkpoints_dir()) / MANIFEST
    if not path.is_file():
        return {"format": 1, "models": {}}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path} is not valid JSON ({e}); restore it from git") from None
    if not isinstance(manifest, dict):
        raise ZooError(f"{path} must be a JSON object with a 'models' object, got a {type(manifest).__name__}; "
                       "restore it from git")
    manifest.setdefault("models", {})
    if not isinstance(manifest["models"], dict):
        raise ZooError(f"{path}: 'models' must be an object of name -> entry, got a "
                       f"{type(manifest['models']).__name__}; restore it from git")
    return manifest


def manifest_record(manifest: Mapping[str, Any], name: str, root: Path | None = None) -> dict[str, Any] | None:
    """The manifest entry of ``name`` (``None`` when it has none); an entry that is not an
    object (``null``, a list) is a one-line :class:`ZooError` that breaks only that model."""
    entry = manifest["models"].get(name)
    if entry is None and name not in manifest["models"]:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("files", {}), dict):
        shown = "null" if entry is None else f"a {type(entry).__name__}"
        raise ZooError(f"{(root or checkpoints_dir()) / MANIFEST}: the entry of {name} is {shown}, not an object "
                       "with its files; restore the manifest from git or publish the model again")
    return entry


def write_manifest(manifest: Mapping[str, Any], root: Path | None = None) -> Path:
    """Write ``manifest`` (models sorted by name) as ``root/manifest.json``; hold
    :func:`manifest_lock` around the read-modify-write."""
    path = (root or checkpoints_dir()) / MANIFEST
    out = dict(manifest)
    out["models"] = dict(sorted(dict(out.get("models", {})).items()))
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path


@contextlib.contextmanager
def manifest_lock(root: Path) -> Iterator[None]:
    """An exclusive lock around read-modify-write of the manifest (several publishers at once)."""
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"zoo-manifest-{key}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def manifest_entry(card: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The manifest's record of one published model: summary numbers from its card data
    (:mod:`zoo.hub.card`) and every file's sha256."""
    metrics: dict[str, Any] = {}
    for data, row in card["eval"].items():
        metrics[f"{data}_val_bpb"] = row["bpb"]
        if "bpb_free_vector" in row:
            metrics[f"{data}_val_bpb_free_vector"] = row["bpb_free_vector"]
        metrics[f"{data}_val_xz"] = row.get("xz")
    return {
        "family": card["family"],
        "description": card["description"],
        "data": card["data"],
        "parameters": card["parameters"],
        "weights": card["weights"],
        "published": card["published"],
        "metrics": metrics,
        "files": folder_checksums(folder),
    }


def verify_manifest(name: str) -> None:
    """Check ``checkpoints/NAME`` against its manifest entry: every listed file present with its
    sha256, and no unlisted file."""
    root = checkpoints_dir()
    entry = manifest_record(read_manifest(root), name, root)
    if entry is None:
        raise ZooError(f"{name} is not in {root / MANIFEST}; publish it with python -m zoo.publish")
    verify_files(root / name, entry.get("files", {}), MANIFEST,
                 "it was changed since it was published; restore it (git checkout) or publish it again", exact=True)
