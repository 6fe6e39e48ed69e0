"""Weight names of the zoo's Llama, and their mapping to ``transformers`` and to older zoo files.

The zoo's Llama (:mod:`zoo.models.llama_stack`) fuses two groups of projections that
``transformers``' ``LlamaForCausalLM`` keeps apart:

====================================  =============================================
zoo                                   transformers
====================================  =============================================
``embed_tokens``                      ``model.embed_tokens``
``stack.layers.N.self_attn.qkv_proj`` ``model.layers.N.self_attn.{q,k,v}_proj`` (rows stacked)
``stack.layers.N.mlp.gate_up_proj``   ``model.layers.N.mlp.{gate,up}_proj`` (rows stacked)
``stack.layers.N.*`` (the rest)       ``model.layers.N.*`` (same names)
``stack.norm``                        ``model.norm``
``lm_head``                           ``lm_head``
====================================  =============================================

Models saved before the zoo owned its Llama (the published checkpoints, older ``.ckpt`` s)
hold ``transformers``' layout inside an ``hf`` attribute (``hf.model.layers...``,
``hf.lm_head``; an EACD's Llama stacks ``encoder.hf.layers...``). :func:`upgrade_state_dict`
renames and fuses those on load, so every old file still loads, bit for bit the same
weights; the files themselves are never rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

#: (zoo fused name, transformers names whose rows it stacks, in order)
FUSED = (("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
         ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")))
#: a fused name's parts, found anywhere in a key (an MoE expert's ``mlp.experts.E.gate_proj`` too)
_PARTS = tuple((fused.split(".")[-1], tuple(p.split(".")[-1] for p in parts)) for fused, parts in FUSED)


def fuse(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every ``X.q_proj/k_proj/v_proj.weight`` stacked into ``X.qkv_proj.weight``
    and every ``X.gate_proj/up_proj.weight`` into ``X.gate_up_proj.weight``."""
    out = dict(state)
    for fused, parts in _PARTS:
        first = parts[0]
        for key in [k for k in out if k.endswith(f".{first}.weight") or k == f"{first}.weight"]:
            stem = key[: -len(f"{first}.weight")]
            names = [f"{stem}{p}.weight" for p in parts]
            if all(n in out for n in names):
                out[f"{stem}{fused}.weight"] = torch.cat([out.pop(n) for n in names], dim=0)
    return out


def split(state: Mapping[str, Tensor], kv_rows: int) -> dict[str, Tensor]:
    """The inverse of :func:`fuse`: ``qkv_proj`` into q, k, v (k and v have ``kv_rows`` rows
    each) and ``gate_up_proj`` into two halves."""
    out = {}
    for key, value in state.items():
        if key.endswith("qkv_proj.weight"):
            stem = key[: -len("qkv_proj.weight")]
            q_rows = value.shape[0] - 2 * kv_rows
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.split([q_rows, kv_rows, kv_rows]),
                                  strict=True):
                out[f"{stem}{name}.weight"] = part
        elif key.endswith("gate_up_proj.weight"):
            stem = key[: -len("gate_up_proj.weight")]
            gate, up = value.chunk(2, dim=0)
            out[f"{stem}gate_proj.weight"], out[f"{stem}up_proj.weight"] = gate, up
        else:
            out[key] = value
    return out


#: old zoo prefixes (the ``hf`` attribute) -> today's, tried in order
_OLD_PREFIXES = ((re.compile(r"^hf\.model\.embed_tokens\."), "embed_tokens."),
                 (re.compile(r"^hf\.model\."), "stack."),
                 (re.compile(r"^hf\.lm_head\."), "lm_head."),
                 (re.compile(r"^hf\."), ""))  # a stack (LlamaModel inside): hf.layers, hf.norm


def upgrade_state_dict(state: dict[str, Tensor], prefix: str = "") -> None:
    """Rename and fuse, in place, the keys under ``prefix`` that an older zoo Llama (with an
    ``hf`` attribute) wrote; keys already in today's layout are left alone."""
    old = [k for k in state if k.startswith(f"{prefix}hf.")]
    if not old:
        return
    renamed = {}
    for key in old:
        rest = key[len(prefix):]
        for pattern, new in _OLD_PREFIXES:
            if pattern.match(rest):
                renamed[prefix + pattern.sub(new, rest, count=1)] = state.pop(key)
                break
    state.update(fuse(renamed))


def to_transformers(state: Mapping[str, Tensor], kv_rows: int) -> dict[str, Tensor]:
    """A :class:`zoo.models.llama.CausalTransformer` state dict in ``LlamaForCausalLM``'s names."""
    out = {}
    for key, value in split(state, kv_rows).items():
        if key.startswith("stack."):
            key = "model." + key[len("stack."):]
        elif key.startswith("embed_tokens."):
            key = "model." + key
        out[key] = value
    return out


def upgrade_on_load(module: torch.nn.Module, state: dict[str, Tensor], prefix: str, *args: object) -> None:
    """``load_state_dict`` pre-hook (``module.register_load_state_dict_pre_hook``): an older
    zoo file's ``hf.*`` keys in today's layout, before the module reads them."""
    upgrade_state_dict(state, prefix)
