"""Plain ``nn.Module`` language models (no Lightning). Every model maps
``(input_ids [B, T], attention_mask [B, T]) -> logits [B, T, V]``.

The contract a family meets, and the registry that maps ``model.family`` to it, are in
:mod:`zoo.models.base` (:class:`LanguageModel`, :func:`register_model`). Built-in families:
``llama`` (baseline causal transformer), ``mixer`` (masked-mixer causal LM), ``eacd``
(encoder-augmented causal decoder). Shared blocks live in :mod:`zoo.models.blocks`.

Two options apply to the families: ``moe:`` (``llama``, ``mixer``; a routed mixture of
experts in place of every feed-forward layer, :mod:`zoo.models.moe`) and ``adapter:`` (any
family; LoRA branches on the frozen model, :mod:`zoo.models.adapters`).

Families from outside the package register themselves when their module is imported; name
such modules in ``$ZOO_PLUGINS`` (comma-separated) so that every command, and every process
of a distributed run, imports them (:func:`zoo.plugins.load_plugins`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

# the built-in families register themselves on import
import zoo.models.eacd
import zoo.models.llama
import zoo.models.mixer  # noqa: F401
from zoo.errors import ZooError, did_you_mean
from zoo.models.base import (
    LanguageModel,
    OutputHead,
    count_parameters,
    describe_family,
    family_class,
    family_of,
    family_options,
    list_families,
    parameter_counts,
    register_model,
)
from zoo.plugins import load_plugins
from zoo.schema import _check_model_sizes, check_value

#: the smallest vocabulary a family is built with: the zoo's end-of-text and pad ids (0, 1)
#: must be embeddable. A zoo tokenizer has at least ``zoo.schema.MIN_VOCAB_SIZE`` (258)
#: tokens, which :func:`zoo.create_model` asks for; tests build on smaller toy vocabularies.
MIN_MODEL_VOCAB = 2

__all__ = [
    "MIN_MODEL_VOCAB", "LanguageModel", "OutputHead", "build_model", "count_parameters", "describe_family", "family_class", "family_of",
    "family_options", "list_families", "parameter_counts", "register_model",
]


def build_model(cfg: Mapping[str, Any], vocab_size: int, n_ctx: int) -> nn.Module:
    """Build the model a ``model:`` config section describes (``family`` plus its options;
    ``adapter:`` wraps it in LoRA branches).

    Every size is checked here first, with the messages a recipe's ``model:`` section gets
    (:mod:`zoo.schema`): positive integers for ``d_model``, ``n_layers``, ``n_heads``, ...,
    ``vocab_size >= 2`` (:data:`MIN_MODEL_VOCAB`) and ``n_ctx >= 1``; anything else a family refuses is a one-line
    :class:`ZooError` too, never an assertion or arithmetic error from inside the module.
    """
    load_plugins()
    if not isinstance(cfg, Mapping):
        raise ZooError(f"the model config must be a mapping with a family and its options; got {cfg!r}")
    check_value("vocab_size", vocab_size, int, {"ge": MIN_MODEL_VOCAB})
    check_value("n_ctx", n_ctx, int, {"gt": 0})
    _check_model_sizes(cfg, "model")
    cfg = dict(cfg)
    family = cfg.pop("family", None)
    adapter = cfg.pop("adapter", None)
    cls = family_class(str(family))
    params = family_options(str(family))
    bad = next((k for k in cfg if k not in params), None)
    if bad is not None:
        raise ZooError(
            f"model.{bad} is not an option of family '{family}'{did_you_mean(bad, params + ['adapter'])}; "
            f"options: {', '.join(params + ['adapter'])}"
        )
    try:
        model = cls(vocab_size=vocab_size, n_ctx=n_ctx, **cfg)
        if adapter is not None:
            from zoo.models.adapters import add_lora

            model = add_lora(model, adapter)
        return model
    except (ValueError, TypeError, AssertionError, ArithmeticError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise ZooError(f"bad model config for family '{family}': {detail}") from e
