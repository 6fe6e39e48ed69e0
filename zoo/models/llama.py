"""Baseline causal LM: a Llama-style decoder built locally from a ``transformers`` config.

No hub access: :class:`CausalTransformer` builds ``LlamaForCausalLM`` from a ``LlamaConfig``
made from a handful of sizes, and exposes one plain call, ``model(input_ids,
attention_mask) -> logits``, shared by every family of the zoo. The wrapped Hugging Face
model stays reachable as ``.hf`` (for ``save_pretrained`` export and generation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from zoo.models.base import LanguageModel, register_model


def llama_config(vocab_size: int, n_ctx: int, d_model: int, n_layers: int, n_heads: int,
                 n_kv_heads: int | None = None, d_ff: int | None = None, rope_theta: float = 10000.0,
                 dropout: float = 0.0, tie_embeddings: bool = False, init_std: float = 0.02) -> LlamaConfig:
    """The ``LlamaConfig`` every Llama-based model of the zoo is built from (no hub).

    One place for the zoo's conventions (pad id 1, end-of-text id 0, no BOS, no KV cache),
    shared by :class:`CausalTransformer` and :class:`zoo.models.blocks.LlamaStack`.
    ``d_ff`` defaults to Llama's 8/3 × ``d_model`` rounded to a multiple of 64.

    Raises:
        ValueError: when ``d_model`` is not divisible by ``n_heads``.
    """
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    if d_ff is None:
        d_ff = 64 * round(4 * d_model * 2 / 3 / 64)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_ff,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or n_heads,
        max_position_embeddings=n_ctx,
        rope_theta=rope_theta,
        attention_dropout=dropout,
        tie_word_embeddings=tie_embeddings,
        initializer_range=init_std,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=1,
    )


@register_model("llama")
class CausalTransformer(LanguageModel):
    """A Llama-style decoder-only transformer (RMSNorm, RoPE, SwiGLU, grouped-query
    attention), built locally with ``transformers``' ``LlamaForCausalLM``.

    Args:
        vocab_size: tokens in the vocabulary.
        n_ctx: longest context the model is used at (RoPE needs no table, but the config
            records it).
        d_model: hidden width; ``n_layers`` blocks of ``n_heads`` attention heads
            (``n_kv_heads`` key/value heads, default ``n_heads``).
        d_ff: width of the SwiGLU feed-forward layer (default: Llama's 8/3 × d_model,
            rounded to a multiple of 64).
        tie_embeddings: share input embedding and output head weights.
        init_std: standard deviation of the normal weight initialisation.
        moe: a ``model.moe`` section (:data:`zoo.models.moe.MOE_OPTIONS`): every decoder
            layer's SwiGLU ``mlp`` becomes a routed mixture of SwiGLU experts
            (:func:`zoo.models.moe.use_moe_mlps`); ``None``: dense.
    """

    #: the repeated block: the unit FSDP shards (``trainer.strategy=fsdp`` / ``fsdp2``)
    block_classes = (LlamaDecoderLayer,)

    def __init__(
        self,
        vocab_size: int,
        n_ctx: int,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        d_ff: int | None = None,
        rope_theta: float = 10000.0,
        dropout: float = 0.0,
        tie_embeddings: bool = False,
        init_std: float = 0.02,
        moe: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = llama_config(
            vocab_size=vocab_size, n_ctx=n_ctx, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=n_kv_heads, d_ff=d_ff, rope_theta=rope_theta, dropout=dropout,
            tie_embeddings=tie_embeddings, init_std=init_std,
        )
        self.hf = LlamaForCausalLM(self.config)
        self.n_ctx = n_ctx
        if moe is not None:
            from zoo.models.moe import use_moe_mlps

            use_moe_mlps(self.hf.model.layers, self.config, moe)

    @classmethod
    def summarize(cls, options: Mapping[str, Any]) -> str:
        return f"causal transformer (Llama) d={options.get('d_model', 256)} x {options.get('n_layers', 4)}"

    def transformers_model(self) -> LlamaForCausalLM:
        return self.hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` for ``input_ids`` ``[B, T]``.

        With an ``attention_mask`` (1 = token, 0 = pad), pads are never attended to and
        positions count from each row's first real token, so left-padded rows see the same
        positions as unpadded ones.
        """
        position_ids = None
        if attention_mask is not None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
        return self.hf(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits
