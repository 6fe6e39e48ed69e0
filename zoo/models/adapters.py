"""LoRA adapters (``peft``) on a frozen zoo model: build, load the base, save, reload, merge.

A ``model.adapter`` config section (:data:`ADAPTER_OPTIONS`) makes
:func:`zoo.models.build_model` wrap the family's module in a ``peft.PeftModel``: every
targeted ``nn.Linear`` gets a low-rank branch ``W x + (alpha / r) · B A x`` (``B`` starts at
zero, so the adapted model starts as the base), and every base weight is frozen. Because the
wrapping happens inside ``build_model``, everything that rebuilds a model from its config
(Lightning checkpoints, resuming, evaluation of a ``.ckpt``) sees the same structure.

* Targets (``target_modules``): default every ``nn.Linear`` of the blocks, i.e. all but the
  output head and MoE routers: for Llama ``q/k/v/o_proj`` and ``gate/up/down_proj``; for the
  masked mixer the feed-forward layers (``fc_in``, ``fc_out``) and, with several heads, the
  mixer's projections. The mixer's masked token-mixing matrix is not an ``nn.Linear`` or
  ``nn.Conv1d`` (it is a masked weight passed to ``F.conv1d``), so LoRA does not adapt it.
  A list of names (``[q_proj, v_proj]``) matches module names by suffix, as in peft.
* :func:`load_base_state` loads a base model's weights (a plain state dict) into the
  adapted model (``init_from=`` does this).
* :func:`zoo.hub.folder.save_adapter` writes the adapter alone (peft's ``adapter_model.safetensors`` +
  ``adapter_config.json``, plus ``zoo_adapter.yaml`` naming the base and its SHA-256, and
  ``sha256.json``); :func:`zoo.hub.folder.load_adapter` puts it back onto the base (checking that it is the
  same base) and optionally merges it; :func:`merge_adapter` folds the branches into the
  base weights and returns the plain family module (saved as an ordinary model folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: the keys of a ``model.adapter`` config section, with their defaults
ADAPTER_OPTIONS: dict[str, Any] = {
    "method": "lora",
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": None,
}
#: module names never adapted by default (output heads, MoE routers)
EXCLUDED = ("lm_head", "head", "router")
ADAPTER_META = "zoo_adapter.yaml"


def adapter_options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a ``model.adapter`` section and fill in the defaults.

    Raises:
        ValueError: for an unknown key or a bad value.
    """
    from zoo.errors import did_you_mean

    cfg = dict(cfg or {})
    for key in cfg:
        if key not in ADAPTER_OPTIONS:
            raise ValueError(
                f"adapter.{key} is not an adapter option{did_you_mean(key, ADAPTER_OPTIONS)}; "
                f"options: {', '.join(ADAPTER_OPTIONS)}"
            )
    opts = {**ADAPTER_OPTIONS, **cfg}
    if opts["method"] != "lora":
        raise ValueError(f"adapter.method must be 'lora' (the only method), got {opts['method']!r}")
    if not isinstance(opts["r"], int) or opts["r"] < 1:
        raise ValueError(f"adapter.r (the LoRA rank) must be a positive integer, got {opts['r']!r}")
    if not isinstance(opts["alpha"], (int, float)) or opts["alpha"] <= 0:
        raise ValueError(f"adapter.alpha must be a positive number, got {opts['alpha']!r}")
    if not isinstance(opts["dropout"], (int, float)) or not 0 <= opts["dropout"] < 1:
        raise ValueError(f"adapter.dropout must be in [0, 1), got {opts['dropout']!r}")
    targets = opts["target_modules"]
    if targets is not None and (isinstance(targets, str) or not all(isinstance(t, str) for t in targets)):
        raise ValueError(f"adapter.target_modules must be a list of module names or null, got {targets!r}")
    return opts


def default_targets(model: nn.Module) -> list[str]:
    """Full names of every ``nn.Linear`` except output heads and MoE routers."""
    return [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in EXCLUDED
    ]


def add_lora(model: nn.Module, adapter: Mapping[str, Any] | None = None) -> nn.Module:
    """Wrap ``model`` in a ``peft.PeftModel`` with LoRA on its targets; base weights frozen.

    Raises:
        ValueError: for bad options, or targets that match no module.
    """
    from peft import LoraConfig, get_peft_model

    opts = adapter_options(adapter)
    targets = list(opts["target_modules"]) if opts["target_modules"] is not None else default_targets(model)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to put a LoRA adapter on")
    config = LoraConfig(r=opts["r"], lora_alpha=opts["alpha"], lora_dropout=float(opts["dropout"]),
                        target_modules=targets, bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"adapter.target_modules: {str(e).splitlines()[0]}") from e


def is_adapted(model: nn.Module) -> bool:
    """True for a model wrapped by :func:`add_lora`."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def load_base_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state)``, where ``state`` is a plain (unadapted) model's and
    ``model`` may be adapted: its base weights are loaded, its LoRA weights kept.

    Raises:
        RuntimeError: as ``load_state_dict`` does, for missing, unexpected or misshaped weights.
    """
    if not is_adapted(model):
        model.load_state_dict(state)
        return
    base = model.get_base_model()
    mapped = {}
    missing = []
    for key in base.state_dict():
        if ".lora_" in key:
            continue
        source = key.replace(".base_layer.", ".")
        if source in state:
            mapped[key] = state[source]
        else:
            missing.append(source)
    unexpected = sorted(set(state) - {k.replace(".base_layer.", ".") for k in mapped})
    if missing or unexpected:
        raise RuntimeError(
            f"Error(s) in loading state_dict for {type(base).__name__}: missing keys {missing[:3]}, "
            f"unexpected keys {unexpected[:3]}"
        )
    result = base.load_state_dict(mapped, strict=False)  # shape mismatches raise here
    assert not result.unexpected_keys and all(".lora_" in k for k in result.missing_keys)


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold the LoRA branches into the base weights; returns the plain family module."""
    return model.merge_and_unload() if is_adapted(model) else model


def base_model_config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model:`` section without its ``adapter``: what builds the (merged) base."""
    return {k: v for k, v in dict(model_cfg).items() if k != "adapter"}
