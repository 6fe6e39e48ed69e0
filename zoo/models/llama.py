"""Baseline causal LM: a Llama-style decoder (the zoo's own, :mod:`zoo.models.llama_stack`).

:class:`CausalTransformer` is a token embedding, a :class:`~zoo.models.llama_stack.LlamaStack`
and an output head, with the one call every family of the zoo shares, ``model(input_ids,
attention_mask) -> logits``. It is the same model as ``transformers``' ``LlamaForCausalLM``
(fused projections aside; :mod:`zoo.models.llama_weights` maps the weights), and
:meth:`CausalTransformer.transformers_model` returns that model, for ``save_pretrained``
export and KV-cached generation. :func:`llama_config` is the ``LlamaConfig`` it corresponds to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from zoo.models.base import LanguageModel, OutputHead, register_model
from zoo.models.llama_stack import (
    CachedDecoder,
    LlamaBlock,
    LlamaStack,
    default_d_ff,
    init_llama_weights,
)
from zoo.models.llama_weights import to_transformers, upgrade_on_load
from zoo.models.moe import MoEFeedForward

#: the zoo's special token ids (the tokenizer's): end-of-text 0, pad 1
EOT_ID, PAD_ID = 0, 1


def llama_config(vocab_size: int, n_ctx: int, d_model: int, n_layers: int, n_heads: int,
                 n_kv_heads: int | None = None, d_ff: int | None = None, rope_theta: float = 10000.0,
                 dropout: float = 0.0, tie_embeddings: bool = False, init_std: float = 0.02) -> LlamaConfig:
    """The ``LlamaConfig`` of a zoo Llama of these sizes (no hub), for export and generation.

    The zoo's conventions: pad id 1, end-of-text id 0, no BOS, no KV cache in training.
    ``d_ff`` defaults to Llama's 8/3 × ``d_model`` rounded to a multiple of 64.

    Raises:
        ValueError: when ``d_model`` is not divisible by ``n_heads``.
    """
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_ff or default_d_ff(d_model),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or n_heads,
        max_position_embeddings=n_ctx,
        rope_theta=rope_theta,
        attention_dropout=dropout,
        tie_word_embeddings=tie_embeddings,
        initializer_range=init_std,
        rms_norm_eps=1e-6,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=EOT_ID,
        pad_token_id=PAD_ID,
    )


@register_model("llama")
class CausalTransformer(LanguageModel):
    """A Llama-style decoder-only transformer (RMSNorm, RoPE, SwiGLU, grouped-query
    attention): ``embed_tokens`` → ``stack`` (:class:`~zoo.models.llama_stack.LlamaStack`) →
    ``lm_head``.

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
            (:func:`zoo.models.llama_stack.use_moe_mlps`); ``None``: dense.
    """

    #: the repeated block: the unit FSDP shards (``trainer.strategy=fsdp`` / ``fsdp2``)
    block_classes = (LlamaBlock,)

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
        self.n_ctx = n_ctx
        self.embed_tokens = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        self.stack = LlamaStack(n_ctx, d_model, n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff,
                                rope_theta=rope_theta, dropout=dropout, init_std=init_std, moe=moe)
        self.lm_head = OutputHead(d_model, vocab_size, bias=False)
        init_llama_weights(self.embed_tokens, init_std)
        init_llama_weights(self.lm_head, init_std)
        if tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_load_state_dict_pre_hook(upgrade_on_load)

    @classmethod
    def summarize(cls, options: Mapping[str, Any]) -> str:
        return f"causal transformer (Llama) d={options.get('d_model', 256)} x {options.get('n_layers', 4)}"

    def transformers_model(self) -> LlamaForCausalLM:
        """A ``LlamaForCausalLM`` with this model's weights (a copy; the projections split).

        A mixture-of-experts model keeps its MoE layers (the same modules, shared): it
        generates with a KV cache, but a stock ``transformers`` model cannot hold it, which
        ``zoo.export`` detects and refuses."""
        weight = self.lm_head.weight
        hf = LlamaForCausalLM(self.config).to(device=weight.device, dtype=weight.dtype)
        kv_rows = self.config.num_key_value_heads * (self.config.hidden_size // self.config.num_attention_heads)
        state = to_transformers(self.state_dict(), kv_rows)
        for i, layer in enumerate(self.stack.layers):
            if isinstance(layer.mlp, MoEFeedForward):
                hf.model.layers[i].mlp = layer.mlp  # shared: its weights are already there
                state = {k: v for k, v in state.items() if not k.startswith(f"model.layers.{i}.mlp.")}
        missing, unexpected = hf.load_state_dict(state, strict=False)
        if unexpected or any(".mlp." not in k for k in missing):
            raise RuntimeError(f"weight mapping to transformers is incomplete: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}")
        return hf.eval()

    def incremental_decoder(self, side: torch.Tensor | None, batch_size: int) -> CachedDecoder:
        """Token-at-a-time decoding with the stack's key/value cache."""
        return CachedDecoder(self.stack, lambda ids: self.embed_tokens(ids), self.lm_head)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` for ``input_ids`` ``[B, T]``.

        With an ``attention_mask`` (1 = token, 0 = pad), pads are never attended to and
        positions count from each row's first real token, so left-padded rows see the same
        positions as unpadded ones.
        """
        return self.lm_head(self.stack(self.embed_tokens(input_ids), attention_mask))
