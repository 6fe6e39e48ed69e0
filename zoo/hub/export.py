"""A Llama-based zoo model as a plain Hugging Face folder (the work behind ``python -m zoo.export``).

The folder (``config.json``, ``model.safetensors``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``README.md``) loads with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and no zoo code, giving the zoo model's logits:
every export is loaded back and compared before it is put in place.

An export never deletes what it did not create: it is written into a new temporary folder
beside ``out``, checked there, and only then renamed into place. An existing non-empty
``out`` is refused unless ``overwrite=True``, and so is any ``out`` inside the published
checkpoints (:func:`zoo.hub.manifest.checkpoints_dir`) or overlapping the source folder.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.errors import ZooError
from zoo.hub.manifest import checkpoints_dir
from zoo.hub.registry import load, resolve
from zoo.models import LanguageModel


def hf_model(model: nn.Module) -> Any:
    """The ``transformers`` model inside a zoo model (its
    :meth:`~zoo.models.LanguageModel.transformers_model`), or a clear error."""
    from transformers import PreTrainedModel

    zoo_model = next((m for m in model.modules() if isinstance(m, LanguageModel)), None)
    hf = zoo_model.transformers_model() if zoo_model is not None else None
    if not isinstance(hf, PreTrainedModel):
        raise ZooError(
            f"{type(model).__name__} has no transformers equivalent to export to; only Llama-based "
            "causal models (family llama) export with save_pretrained. Use zoo.load() for the others"
        )
    return hf


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or somewhere below it (both resolved)."""
    return path == folder or folder in path.parents


def check_target(out: Path, source: Path | None = None, overwrite: bool = False) -> Path:
    """``out`` resolved, if an export may be written there; else a one-line :class:`ZooError`.

    Refused: a folder inside the published checkpoints, one that is, holds or lies inside the
    ``source`` model folder, a file or a path below one, and a non-empty folder unless ``overwrite``.
    """
    target = out.expanduser().resolve()
    root = checkpoints_dir().expanduser().resolve()
    if _inside(target, root) or _inside(root, target):
        raise ZooError(f"out={out} is inside (or holds) the published checkpoints {root}; "
                       "export somewhere else, e.g. out=exported/NAME")
    if source is not None:
        src = source.expanduser().resolve()
        if _inside(target, src) or _inside(src, target):
            raise ZooError(f"out={out} overlaps the model folder it exports ({src}); export somewhere else")
    if target.exists() and not target.is_dir():
        raise ZooError(f"out={out} is a file, not a folder; choose another out=")
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ZooError(f"out={out}: cannot write there ({blocking} is a file, not a folder); choose another out=")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ZooError(f"out={out} exists and is not empty; pass overwrite=true to replace it, or choose another out=")
    return target


def _verify(hf: Any, out: Path) -> None:
    """Load ``out`` back with plain ``AutoModelForCausalLM`` and compare logits with ``hf``: a
    model whose layers the stock architecture lacks (a mixture of experts, an unmerged adapter)
    would load with missing weights and silently differ, so it is refused instead."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref = copy.deepcopy(hf).float().eval()
    n = min(16, int(hf.config.max_position_embeddings))
    ids = torch.randint(2, int(hf.config.vocab_size), (1, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (loaded(ids).logits - ref(ids).logits).abs().max().item()
    if not diff <= 1e-4:
        raise ZooError(
            f"the export does not reproduce the model (max logit difference {diff:.3g} after loading with "
            f"AutoModelForCausalLM): it has layers the stock {type(hf).__name__} lacks (a mixture of experts, "
            "an unmerged adapter?); nothing was written"
        )


def _write(hf: Any, tokenizer: Any, folder: Path, source: str, out_name: str) -> None:
    """The transformers folder of ``hf`` + ``tokenizer`` in ``folder``, with a short README."""
    hf.save_pretrained(folder)
    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = int(hf.config.max_position_embeddings)
    tok.save_pretrained(folder)
    (folder / "README.md").write_text(
        f"# {Path(source).name}\n\nExported from the zoo model `{source}` with `python -m zoo.export`.\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained(\"{out_name}\")\n"
        f"tokenizer = AutoTokenizer.from_pretrained(\"{out_name}\")\n```\n\n"
        "Documents were separated by `<|endoftext|>` in training: start a prompt with it for a new document.\n"
    )


def _put_in_place(staged: Path, target: Path) -> None:
    """Rename the checked ``staged`` folder to ``target``; an existing ``target`` (empty, or
    replaced with ``overwrite``) is moved aside first and removed only once ``staged`` is in."""
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
        os.rmdir(aside)
        target.rename(aside)
    try:
        staged.rename(target)
    except OSError:
        if aside is not None:
            aside.rename(target)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def export(name_or_path: str | Path | nn.Module, out: str | Path, tokenizer: Any = None,
           dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    """Write ``name_or_path`` (a published name, a model folder, or a loaded model with
    ``tokenizer``) as a plain ``transformers`` folder at ``out``; returns ``out``.

    The folder is written and checked in a temporary folder beside ``out`` and renamed into
    place only when the check passes, so a failed export leaves ``out`` as it was. A
    non-empty ``out`` is replaced only with ``overwrite``; ``out`` inside the published
    checkpoints or overlapping the source folder is refused.
    """
    out = Path(out).expanduser()
    if isinstance(name_or_path, nn.Module):
        if tokenizer is None:
            raise ZooError("export(model, out, tokenizer=...): a loaded model needs its tokenizer")
        target = check_target(out, overwrite=overwrite)
        model, source = name_or_path, type(name_or_path).__name__
    else:
        target = check_target(out, resolve(name_or_path), overwrite=overwrite)
        model, tokenizer = load(name_or_path)
        source = str(name_or_path)
    hf = copy.deepcopy(hf_model(model)).to(dtype).eval()
    hf.config.use_cache = True  # the zoo trains without a KV cache; generation wants one
    gc = hf.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
    except OSError as e:
        raise ZooError(f"out={out}: cannot write there ({e.strerror or e}); choose another out=") from None
    try:
        _write(hf, tokenizer, staged, source, out.name)
        _verify(hf, staged)
        _put_in_place(staged, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staged)  # ours; gone already when it was renamed into place
    return out
