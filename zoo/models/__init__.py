"""Plain ``nn.Module`` language models (no Lightning). Every model maps
``(input_ids [B, T], attention_mask [B, T]) -> logits [B, T, V]``.

Families: ``llama`` (baseline causal transformer), ``mixer`` (masked-mixer causal LM),
``eacd`` (encoder-augmented causal decoder; it also takes ``targets=`` and declares
``needs_targets`` and ``side_bits_per_sequence``). Shared blocks live in
:mod:`zoo.models.blocks`.

Two options apply to the families: ``moe:`` (``llama``, ``mixer``; a routed mixture of
experts in place of every feed-forward layer, :mod:`zoo.models.moe`) and ``adapter:`` (any
family; LoRA branches on the frozen model, :mod:`zoo.models.adapters`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from zoo.errors import ZooError, did_you_mean, unknown
from zoo.models.eacd import EncoderAugmentedDecoder
from zoo.models.llama import CausalTransformer
from zoo.models.mixer import MaskedMixerLM

#: family name -> constructor taking (vocab_size, n_ctx, **sizes)
FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "llama": CausalTransformer,
    "mixer": MaskedMixerLM,
    "eacd": EncoderAugmentedDecoder,
}


def list_families() -> list[str]:
    """Names accepted as ``model.family``."""
    return sorted(FAMILIES)


def build_model(cfg: Mapping[str, Any], vocab_size: int, n_ctx: int) -> nn.Module:
    """Build the model a ``model:`` config section describes."""
    cfg = dict(cfg)
    family = cfg.pop("family", None)
    adapter = cfg.pop("adapter", None)
    if family not in FAMILIES:
        raise unknown("model family", str(family), FAMILIES)
    try:
        model = FAMILIES[family](vocab_size=vocab_size, n_ctx=n_ctx, **cfg)
        if adapter is not None:
            from zoo.models.adapters import add_lora

            model = add_lora(model, adapter)
        return model
    except TypeError as e:  # unknown keyword: name it and list what the family takes
        import inspect

        params = [p for p in inspect.signature(FAMILIES[family]).parameters if p not in ("vocab_size", "n_ctx")]
        params.append("adapter")
        bad = next((k for k in cfg if k not in params), None)
        if bad is None:
            raise
        raise ZooError(
            f"model.{bad} is not an option of family '{family}'{did_you_mean(bad, params)}; "
            f"options: {', '.join(params)}"
        ) from e
    except ValueError as e:
        raise ZooError(f"bad model config for family '{family}': {e}") from e
