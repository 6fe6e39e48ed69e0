"""A model folder on disk: plain files, no pickle, nothing executes on load.

A folder holds ``model.safetensors`` (the ``nn.Module``'s weights), ``config.yaml`` (what
builds the module: family, sizes, vocabulary, context, plus the run's full config),
``tokenizer.json``, ``sha256.json`` (:mod:`zoo.hub.checksums`) and, when known,
``metrics.json``. Lightning ``.ckpt`` files (for resuming) are read with
``torch.load(weights_only=True)`` only. A LoRA adapter folder holds the adapter alone, tied
to its base by the sha256 of the base's weights.
"""

from __future__ import annotations

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
from zoo.hub.checksums import sha256, verify_checksums, write_checksums
from zoo.models import build_model
from zoo.models.adapters import ADAPTER_META

#: the files every model folder has
FILES = ("model.safetensors", "config.yaml", "tokenizer.json")


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


def read_yaml(path: Path) -> Any:
    """A YAML file read with ``yaml.safe_load`` (plain data only: a ``!!python/...`` tag is
    refused, never run); a one-line :class:`ZooError` naming the file otherwise."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        why = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ZooError(f"{path} is not plain YAML ({why}); zoo reads data only, so tags that would build "
                       "Python objects are refused; restore the file or export the folder again") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZooError(f"cannot read {path}: {e}") from None


def read_spec(folder: Path) -> dict[str, Any]:
    """A model folder's ``config.yaml``: a mapping with a ``model:`` section, ``vocab_size`` and
    ``n_ctx``; a one-line :class:`ZooError` naming the file otherwise."""
    path = folder / "config.yaml"
    spec = read_yaml(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise ZooError(f"{path} has no model: section (the family and its options); "
                       "this is not a config.yaml written by zoo; export the folder again")
    missing = [k for k in ("vocab_size", "n_ctx") if k not in spec]
    if missing:
        raise ZooError(f"{path} lacks {', '.join(missing)}; export the folder again")
    return spec


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
    spec = read_spec(folder)
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


# ------------------------------------------------------------------ LoRA adapter folders


def save_adapter(model: nn.Module, folder: str | Path, spec: Mapping[str, Any], base: str | None = None) -> Path:
    """Write the adapter alone to ``folder`` (a few hundred kB, not the base's weights).

    ``spec`` is the base's ``config.yaml`` content (``model`` without ``adapter``,
    ``vocab_size``, ``n_ctx``); ``base`` the model folder it was trained on, recorded with
    the SHA-256 of its weights so :func:`load_adapter` can refuse another base.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's generic model card
    meta: dict[str, Any] = {"base": None, "base_sha256": None, **dict(spec)}
    if base:
        base_path = Path(base).expanduser().resolve()
        weights = base_path / "model.safetensors" if base_path.is_dir() else base_path
        meta["base"] = str(base_path)
        meta["base_sha256"] = sha256(weights) if weights.is_file() else None
    (out / ADAPTER_META).write_text(yaml.safe_dump(meta, sort_keys=False))
    write_checksums(out)
    return out


def load_adapter(folder: str | Path, base: str | Path | None = None, merge: bool = False):
    """Load a saved adapter onto its base: ``(model in eval mode, tokenizer, base spec)``.

    ``base`` is the base model folder (default: the one recorded at training time); it must
    hold the very weights the adapter was trained on (checked by SHA-256). With ``merge``
    the adapter is folded into the weights and the plain family module is returned.

    Raises:
        ZooError: for a folder that is not an adapter, a changed file, or another base.
    """
    from peft import PeftModel

    folder = Path(folder).expanduser()
    meta_path = folder / ADAPTER_META
    if not meta_path.is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise ZooError(f"{folder} is not a zoo adapter folder: missing {ADAPTER_META} or adapter_model.safetensors")
    verify_checksums(folder)
    meta = read_yaml(meta_path)
    if not isinstance(meta, dict):
        raise ZooError(f"{meta_path} must be a mapping (base, base_sha256, model, ...); save the adapter again")
    base_path = Path(base).expanduser() if base is not None else (Path(meta["base"]) if meta.get("base") else None)
    if base_path is None or not base_path.is_dir():
        raise ZooError(f"adapter {folder}: base model folder not found ({base_path}); pass base=PATH")
    expected = meta.get("base_sha256")
    if expected and sha256(base_path / "model.safetensors") != expected:
        raise ZooError(
            f"adapter {folder} was trained on other base weights than {base_path} "
            f"(sha256 {expected[:16]}... expected); pass the base it was trained on"
        )
    model, tokenizer, spec = load_pretrained(base_path)
    adapted = PeftModel.from_pretrained(model, str(folder))
    if merge:
        return adapted.merge_and_unload().eval(), tokenizer, spec
    return adapted.eval(), tokenizer, spec
