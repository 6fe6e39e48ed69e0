"""The zoo's own Llama decoder: RMSNorm, rotary positions, grouped-query attention, SwiGLU.

A small, readable implementation (plain ``nn.Module`` s) written for speed on the hardware
our users train on, and numerically the same model as ``transformers``' ``LlamaModel``
(:mod:`zoo.models.llama_weights` maps the weights both ways, and the tests check that the
logits agree):

* q, k and v come from ONE fused projection (``qkv_proj``), the SwiGLU's gate and up
  projections from another (``gate_up_proj``): a step runs fewer, larger matmuls;
* :func:`torch.nn.functional.rms_norm` (``nn.RMSNorm``) instead of a chain of elementwise ops;
* :func:`torch.nn.functional.scaled_dot_product_attention` with ``is_causal=True`` and no
  mask tensor when the batch has no padding (the common, packed case); a boolean mask only
  when a batch has pads;
* the rotary tables (cos, sin) are computed once for ``n_ctx`` positions and rotate q and k
  together; nothing in the forward pass makes a host sync, so ``torch.compile`` sees one graph;
* :meth:`LlamaStack.step` runs one position at a time with a key/value cache
  (:class:`KVCache`), for decoding a token at a time (``zoo.codec``).

Parameter names follow ``transformers`` (``self_attn``, ``o_proj``, ``mlp``, ``down_proj``,
``input_layernorm``, ``post_attention_layernorm``) so the mapping stays a table.

Padding convention (as everywhere in the zoo): ``mask`` ``[B, T]`` is 1 at tokens and 0 at
pads; position ids count from each row's first real token, so a left-padded row computes
the same hidden states at its real tokens as its unpadded copy; pads are never attended to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import pads_before_tokens
from zoo.models.llama_weights import upgrade_on_load
from zoo.models.moe import MoEFeedForward, moe_options


def default_d_ff(d_model: int) -> int:
    """Llama's feed-forward width: 8/3 × ``d_model`` rounded to a multiple of 64."""
    return 64 * round(4 * d_model * 2 / 3 / 64)


class RotaryEmbedding(nn.Module):
    """Rotary position tables: ``cos``, ``sin`` ``[n_positions, head_dim]`` (float32).

    The frequencies are Llama's, ``theta^(-2i/head_dim)``, applied to the two halves of each
    head (the "rotate half" layout ``transformers`` uses). The tables are buffers that are
    not saved: they follow the model's device and are rebuilt from the sizes on load.
    """

    cos: Tensor
    sin: Tensor

    def __init__(self, head_dim: int, n_positions: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.n_positions, self.theta = head_dim, n_positions, float(theta)
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.arange(n_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, n_positions={self.n_positions}, theta={self.theta:g}"

    def tables(self, T: int, position_ids: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``cos``, ``sin`` for positions ``0..T-1`` (``[1, 1, T, hd]``) or for the given
        ``position_ids`` ``[B, T]`` (``[B, 1, T, hd]``), in ``dtype``."""
        if position_ids is None:
            cos, sin = self.cos[None, None, :T], self.sin[None, None, :T]
        else:
            cos, sin = self.cos[position_ids][:, None], self.sin[position_ids][:, None]
        return cos.to(dtype), sin.to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of ``x`` ``[..., T, hd]``: ``x·cos + rotate_half(x)·sin``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class LayerCache:
    """The keys and values one attention layer has seen so far, in buffers of ``capacity``
    positions allocated at the first call (``[B, kv_heads, capacity, hd]``)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.length = capacity, 0
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new positions' ``k``, ``v`` after the cached ones; all positions' so far."""
        n = k.shape[2]
        if self.keys is None or self.values is None:
            B, heads, _, hd = k.shape
            self.keys = k.new_empty(B, heads, self.capacity, hd)
            self.values = v.new_empty(B, heads, self.capacity, hd)
        if self.length + n > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions; {self.length + n} asked")
        self.keys[:, :, self.length : self.length + n] = k
        self.values[:, :, self.length : self.length + n] = v
        self.length += n
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]


class KVCache:
    """A :class:`LlamaStack`'s cache for :meth:`LlamaStack.step`: one :class:`LayerCache` per
    block and the number of positions seen."""

    def __init__(self, n_layers: int, capacity: int) -> None:
        self.layers = [LayerCache(capacity) for _ in range(n_layers)]
        self.length = 0


class CachedDecoder:
    """An :class:`~zoo.models.base.IncrementalDecoder` over a :class:`LlamaStack`:
    ``embed(token_ids [B, 1]) -> [B, 1, d]``, the stack's cached :meth:`LlamaStack.step`, then
    ``head`` (hidden → logits).

    ``prefix``: embeddings ``[B, 1, d]`` fed first (the EACD's vector token), output unused."""

    def __init__(self, stack: LlamaStack, embed: Callable[[Tensor], Tensor], head: Callable[[Tensor], Tensor],
                 prefix: Tensor | None = None) -> None:
        self.stack, self.embed, self.head = stack, embed, head
        self.cache = stack.new_cache()
        if prefix is not None:
            stack.step(prefix, self.cache)

    def step(self, token_ids: Tensor) -> Tensor:
        return self.head(self.stack.step(self.embed(token_ids[:, None]), self.cache))[:, 0]


class Attention(nn.Module):
    """Causal grouped-query self-attention with one fused q/k/v projection (no biases).

    Args:
        d: model width; ``n_heads`` query heads of ``d / n_heads`` dims, ``n_kv_heads`` key
            and value heads (``n_heads`` must be a multiple of it).
        dropout: attention-probability dropout in training (Llama's ``attention_dropout``).
    """

    def __init__(self, d: int, n_heads: int, n_kv_heads: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if d % n_heads:
            raise ValueError(f"d_model={d} is not divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d // n_heads
        self.dropout = float(dropout)
        self.qkv_proj = nn.Linear(d, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None = None,
                cache: LayerCache | None = None) -> Tensor:
        """``x`` ``[B, T, d]`` → ``[B, T, d]``; ``attn_mask`` ``[B, 1, T, T]`` (True: may
        attend) or ``None`` for plain causal attention.

        With a ``cache`` holding earlier positions, ``x`` is ONE new position (``T == 1``): it
        attends to every cached position and itself, and its key and value join the cache."""
        B, T, _ = x.shape
        h, kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv_proj(x).view(B, T, h + 2 * kv, hd).transpose(1, 2)  # [B, heads, T, hd]
        qk = rotate(qkv[:, : h + kv], cos, sin)  # q and k rotated in one go
        q, k, v = qk[:, :h], qk[:, h:], qkv[:, h + kv :]
        causal = attn_mask is None
        if cache is not None:
            if cache.length and T != 1:
                raise ValueError(f"a cached attention step takes one position, got {T}")
            causal = causal and not cache.length
            k, v = cache.extend(k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=kv != h,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, h * hd))

    def attention_probs(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """The attention weights ``[B, n_heads, T, T]`` (rows sum to 1) :meth:`forward` applies
        to ``x`` with the same arguments: which positions each one reads (``zoo.geometry``
        compares them with a Lasso's choice of tokens). Written out, since SDPA returns none."""
        B, T, _ = x.shape
        h, kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv_proj(x).view(B, T, h + 2 * kv, hd).transpose(1, 2)
        qk = rotate(qkv[:, : h + kv], cos, sin)
        q, k = qk[:, :h], qk[:, h:].repeat_interleave(h // kv, dim=1)
        scores = q @ k.transpose(-1, -2) / hd**0.5
        allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() if attn_mask is None else attn_mask
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


class SwiGLU(nn.Module):
    """Llama's feed-forward layer, ``down(silu(gate(x)) · up(x))``, with gate and up fused."""

    def __init__(self, d: int, d_ff: int) -> None:
        super().__init__()
        self.d_ff = d_ff
        self.gate_up_proj = nn.Linear(d, 2 * d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., d]``."""
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    """Pre-norm residual block: ``x += attn(norm(x))``; ``x += mlp(norm(x))``.

    ``mlp`` is any ``[..., d] -> [..., d]`` module (a :class:`SwiGLU`, or a mixture of
    experts: :func:`use_moe_mlps` swaps it).
    """

    def __init__(self, d: int, n_heads: int, n_kv_heads: int | None, d_ff: int, dropout: float = 0.0,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(d, eps=eps)
        self.self_attn = Attention(d, n_heads, n_kv_heads, dropout)
        self.post_attention_layernorm = nn.RMSNorm(d, eps=eps)
        self.mlp: nn.Module = SwiGLU(d, d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None = None,
                cache: LayerCache | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def use_moe_mlps(layers: nn.ModuleList, moe: Mapping[str, Any], init_std: float = 0.02) -> None:
    """Swap the ``mlp`` of each :class:`LlamaBlock` in ``layers`` for an MoE of SwiGLU experts.

    The experts are :class:`SwiGLU` s of width ``moe.d_ff`` (default:
    the dense layer's); every new Linear is initialised as Llama initialises its own
    (normal, std ``init_std``).
    """
    opts = moe_options(moe)
    d_ff = opts.pop("d_ff")
    for layer in layers:
        d, width = layer.mlp.down_proj.out_features, d_ff or layer.mlp.d_ff
        layer.mlp = MoEFeedForward(d, lambda d=d, width=width: SwiGLU(d, width), **opts)
        for module in layer.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def init_llama_weights(module: nn.Module, std: float) -> None:
    """Llama's initialisation, in module order: every ``nn.Linear`` and ``nn.Embedding``
    weight ~ N(0, std) (an embedding's padding row zero), norms at one (their default)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


def padded_attention(mask: Tensor) -> Tensor:
    """Boolean ``[B, 1, T, T]`` attention mask for a padded batch (``mask`` ``[B, T]``, 1 =
    token): causal, never attending to a pad; every position also sees itself, so a pad
    row (whose outputs nobody reads) has no empty softmax."""
    T = mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril_()
    allowed = causal[None] & mask.bool()[:, None, :]
    return (allowed | torch.eye(T, dtype=torch.bool, device=mask.device))[:, None]


class LlamaStack(nn.Module):
    """``n_layers`` :class:`LlamaBlock` s and a final RMSNorm: embeddings → hidden states.

    The caller embeds the tokens (:class:`zoo.models.llama.CausalTransformer` with its token
    embedding; the EACD with its own embeddings and the vector token).

    Args:
        n_ctx: longest sequence (the rotary tables' length); d: width.
        n_layers, n_heads, n_kv_heads: blocks and heads (``n_kv_heads``: grouped-query
            attention, default ``n_heads``).
        d_ff: SwiGLU width (default :func:`default_d_ff`).
        rope_theta: rotary base; dropout: attention dropout; init_std: the normal
            initialisation of every projection (Llama's ``initializer_range``).
        moe: a ``model.moe`` section (:data:`zoo.models.moe.MOE_OPTIONS`): every block's
            SwiGLU becomes a routed mixture of SwiGLU experts.
    """

    #: the repeated block (the unit FSDP shards)
    block_classes: tuple[type[nn.Module], ...] = (LlamaBlock,)

    def __init__(
        self,
        n_ctx: int,
        d: int,
        n_layers: int,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        d_ff: int | None = None,
        rope_theta: float = 10000.0,
        dropout: float = 0.0,
        init_std: float = 0.02,
        moe: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d_model={d} is not divisible by n_heads={n_heads}")
        self.n_ctx, self.d = n_ctx, d
        self.d_ff = d_ff or default_d_ff(d)
        #: scale of the embeddings this stack expects (Llama's initializer_range)
        self.embedding_std = init_std
        self.layers = nn.ModuleList(
            LlamaBlock(d, n_heads, n_kv_heads, self.d_ff, dropout) for _ in range(n_layers)
        )
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.rotary = RotaryEmbedding(d // n_heads, n_ctx, rope_theta)
        self.register_load_state_dict_pre_hook(upgrade_on_load)  # older files: hf.layers...
        init_llama_weights(self, init_std)
        if moe is not None:
            use_moe_mlps(self.layers, moe, init_std)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Embeddings ``[B, T, d]`` (pads marked 0 in ``mask`` ``[B, T]``) → hidden ``[B, T, d]``.

        With a mask, attention runs with a boolean mask tensor, unless the mask has no pad
        before a token (then it changes nothing in a causal stack): that is checked here for a
        mask on the CPU, where reading it costs no device sync; on an accelerator, callers that
        know pass ``mask=None`` (:meth:`zoo.models.LanguageModel.forward_batch` does)."""
        T = x.shape[1]
        if T > self.n_ctx:
            raise ValueError(f"sequence of {T} tokens is longer than the stack's n_ctx={self.n_ctx}")
        position_ids = attn_mask = None
        if mask is not None and mask.device.type == "cpu" and not torch.compiler.is_compiling():
            mask = mask if pads_before_tokens(mask) else None
        if mask is not None:
            mask = mask.long()
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            attn_mask = padded_attention(mask)
        cos, sin = self.rotary.tables(T, position_ids, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, attn_mask)
        return self.norm(x)

    def new_cache(self) -> KVCache:
        """An empty cache for :meth:`step`."""
        return KVCache(len(self.layers), self.n_ctx)

    def step(self, x: Tensor, cache: KVCache) -> Tensor:
        """The next position: embeddings ``[B, 1, d]`` → hidden ``[B, 1, d]``, attending to
        the positions in ``cache`` (which the call extends). Every row is at the same position
        (no padding); the result equals :meth:`forward` over the whole prefix up to float
        rounding."""
        t = cache.length
        if x.shape[1] != 1:
            raise ValueError(f"LlamaStack.step takes one position, got {x.shape[1]}")
        if t >= self.n_ctx:
            raise ValueError(f"position {t} is past the stack's n_ctx={self.n_ctx}")
        cos = self.rotary.cos[None, None, t : t + 1].to(x.dtype)
        sin = self.rotary.sin[None, None, t : t + 1].to(x.dtype)
        for layer, layer_cache in zip(self.layers, cache.layers, strict=True):
            x = layer(x, cos, sin, None, layer_cache)
        cache.length = t + 1
        return self.norm(x)
