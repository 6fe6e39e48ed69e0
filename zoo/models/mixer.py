"""Masked-mixer causal LM: a transformer whose attention is replaced by masked token mixing.

From "Know Your Limits" (Badger & Neligeorge, arXiv 2511.10618) and the masked-mixer work it
builds on: each block mixes token positions with a learned, causally masked ``n_ctx × n_ctx``
convolution (:class:`zoo.models.blocks.MaskedTokenMixer`) instead of attention; there is no
positional encoding. The blocks are the zoo's shared :class:`zoo.models.blocks.MixerStack`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from zoo.models.base import LanguageModel, OutputHead, register_model
from zoo.models.blocks import MixerBlock, MixerStack


@register_model("mixer")
class MaskedMixerLM(LanguageModel):
    """A masked mixer: a transformer whose attention is a learned, causally masked token
    mixing (no positional encoding); token embedding → :class:`MixerStack` → linear head.

    Args:
        vocab_size: tokens in the vocabulary.
        n_ctx: longest context (the mixers' number of positions).
        d_model: hidden width; ``n_layers`` mixer blocks.
        kernel: odd kernel size of the mixing convolution along the hidden dimension.
        heads: mixing heads (multi-head form when > 1).
        tie_embeddings: share the embedding matrix with the output head.
        init_std: standard deviation of the embedding (and tied head) initialisation;
            default: what the mixer stack expects, N(0, 1) (see
            :attr:`MixerStack.embedding_std`).
        moe: a ``model.moe`` section (:data:`zoo.models.moe.MOE_OPTIONS`): every block's
            feed-forward layer becomes a routed mixture of :class:`FeedForward` experts;
            ``None``: dense.
    """

    block_classes = (MixerBlock,)  # what FSDP shards, one unit per block

    def __init__(self, vocab_size: int, n_ctx: int, d_model: int = 256, n_layers: int = 4, kernel: int = 1,
                 heads: int = 1, tie_embeddings: bool = False, init_std: float | None = None,
                 moe: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.n_ctx = n_ctx
        self.embed = nn.Embedding(vocab_size, d_model)
        self.stack = MixerStack(n_ctx, d_model, n_layers, kernel=kernel, heads=heads, moe=moe)
        nn.init.normal_(self.embed.weight, std=self.stack.embedding_std if init_std is None else init_std)
        self.head = OutputHead(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    @classmethod
    def summarize(cls, options: Mapping[str, Any]) -> str:
        return f"masked-mixer causal LM d={options.get('d_model', 256)} x {options.get('n_layers', 4)}"

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` for ``input_ids`` ``[B, T]`` (``T <= n_ctx``).

        ``attention_mask`` (1 = token, 0 = pad) keeps pads from contributing to real tokens;
        positions are right-aligned, so a left-padded row scores like its unpadded copy.
        """
        return self.head(self.stack(self.embed(input_ids), attention_mask))
