"""The model a compressed file is written with: a published name, an exported folder or a
Lightning ``.ckpt``, with its weights in a storage mode and the EACD's vector in a format."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.codec.container import CodecError
from zoo.errors import ZooError


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's weights as loaded (names, dtypes, shapes and values, in name order):
    the identity a compressed file records of the model that wrote it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_for_coding(name_or_path: str | Path, weights: str = "fp32",
                    vector_format: str | None = None) -> tuple[nn.Module, Any, int, str, str]:
    """``(model, tokenizer, n_ctx, sha256 of the weights as loaded, training layout)``.

    ``weights`` (:mod:`zoo.quantize`: ``fp32``, ``bf16``, ``fp16``, ``int8``, ``nf4``,
    ``fp4``) is applied after the identity is taken, so one model has one identity whatever
    mode a file records beside it. ``vector_format`` sets an EACD's vector format."""
    from zoo.evaluate import load_named_task
    from zoo.hub.registry import resolve
    from zoo.quantize import WEIGHT_FORMATS, quantize_weights

    ref = str(name_or_path)
    folder = None if ref.endswith(".ckpt") else resolve(ref)
    if folder is None and not Path(ref).expanduser().is_file():
        raise CodecError(f"model {ref!r} is not a published model, a model folder or a .ckpt file "
                         "(python -m zoo.models lists the published ones)")
    if weights not in WEIGHT_FORMATS:
        raise CodecError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}; got {weights!r}")
    task, tokenizer, run = load_named_task(folder or ref)
    layout = str((run.get("data") or {}).get("layout") or "packed")
    model = task.model.float().eval()
    sha = weights_sha256(model)
    if vector_format is not None:
        if model.side_format() is None:
            raise CodecError(f"vector_format={vector_format}: this model stores no vector")
        try:
            model.set_vector_format(vector_format)
        except ZooError as e:
            raise CodecError(f"vector_format={vector_format}: {e}") from None
    if weights != "fp32":
        model, _share = quantize_weights(model, weights)
    return model, tokenizer, int(task.hparams.n_ctx), sha, layout
