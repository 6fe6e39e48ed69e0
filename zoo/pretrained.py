"""Saving and loading trained models as plain folders: no pickle, nothing executes on load.

A folder holds ``model.safetensors`` (the ``nn.Module``'s weights), ``config.yaml`` (what
builds the module: family, sizes, vocabulary, context, plus the run's full config),
``tokenizer.json`` and, when known, ``metrics.json``. Lightning ``.ckpt`` files (for
resuming) are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import PreTrainedTokenizerFast

from zoo.data.tokenizer import load_tokenizer, save_tokenizer, wrap
from zoo.errors import ZooError
from zoo.models import build_model

FILES = ("model.safetensors", "config.yaml", "tokenizer.json")
CHECKSUMS = "sha256.json"


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: str | Path) -> dict[str, str]:
    """Write ``sha256.json`` listing the SHA-256 of every other file in ``folder``."""
    folder = Path(folder)
    sums = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1))
    return sums


def verify_checksums(folder: str | Path) -> None:
    """Raise a :class:`ZooError` naming any file whose SHA-256 differs from ``sha256.json``."""
    folder = Path(folder)
    listed = folder / CHECKSUMS
    if not listed.is_file():
        raise ZooError(f"{folder} has no {CHECKSUMS}; cannot verify its files")
    for name, expected in json.loads(listed.read_text()).items():
        path = folder / name
        if not path.is_file():
            raise ZooError(f"{path} is listed in {CHECKSUMS} but missing")
        if sha256(path) != expected:
            raise ZooError(
                f"checksum mismatch for {path}: the file is corrupt or was changed "
                f"(expected sha256 {expected[:16]}...); download or export it again"
            )


def save_pretrained(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    spec: Mapping[str, Any],
    out_dir: str | Path,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` with the ``spec`` that rebuilds it (``model``, ``vocab_size``, ``n_ctx``, ...)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / "model.safetensors"))
    (out / "config.yaml").write_text(yaml.safe_dump(dict(spec), sort_keys=False))
    save_tokenizer(tokenizer, out / "tokenizer.json")
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(dict(metrics), indent=1))
    write_checksums(out)
    return out


def load_pretrained(path: str | Path, verify: bool = True) -> tuple[nn.Module, PreTrainedTokenizerFast, dict[str, Any]]:
    """Load a saved folder: ``(model in eval mode, tokenizer, spec)``.

    With ``verify`` (the default) every file is checked against ``sha256.json`` first.
    """
    folder = Path(path).expanduser()
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise ZooError(f"{folder} is not a zoo model folder: missing {', '.join(missing)}")
    if verify:
        verify_checksums(folder)
    spec = yaml.safe_load((folder / "config.yaml").read_text())
    model = build_model(spec["model"], spec["vocab_size"], spec["n_ctx"])
    try:
        load_model(model, str(folder / "model.safetensors"))
    except Exception as e:  # safetensors raises plain errors for corrupt files / shape mismatch
        raise ZooError(f"cannot load weights from {folder / 'model.safetensors'}: {e}") from e
    return model.eval(), load_tokenizer(folder), spec


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning ``.ckpt`` safely (``weights_only=True``: plain data and tensors only)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ZooError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle payloads, truncation and corruption all land here
        raise ZooError(
            f"refusing or unable to read checkpoint {p}: {str(e).splitlines()[0]}. "
            "zoo reads checkpoints with weights_only=True, so files that would run code are refused."
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "zoo" not in ckpt:
        raise ZooError(f"{p} is not a zoo training checkpoint (no state_dict / zoo metadata)")
    return ckpt


def model_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The ``nn.Module`` weights inside a LightningModule checkpoint (``model.`` prefix removed)."""
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def tokenizer_from_checkpoint(ckpt: Mapping[str, Any]) -> PreTrainedTokenizerFast:
    """The tokenizer stored inside a zoo ``.ckpt``."""
    from tokenizers import Tokenizer

    return wrap(Tokenizer.from_str(ckpt["zoo"]["tokenizer"]))
