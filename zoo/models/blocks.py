"""Building blocks shared by the zoo's model families (plain ``nn.Module``s, no Lightning).

Every family that uses one of these blocks uses THIS implementation, so a fix or a change
(say, a mixture-of-experts layer in place of :class:`FeedForward`) reaches all of them:

* :class:`FeedForward` — the position-wise MLP of a block: Linear(d, 4d) → GELU → Linear(4d, d).
* :class:`MaskedTokenMixer` — the masked mixer's replacement for attention: a learned,
  causally masked mixing of token positions (a ``Conv1d`` whose channels are positions).
* :class:`MixerBlock` / :class:`MixerStack` — pre-norm residual mixer blocks and a stack of them.
* :class:`zoo.models.llama_stack.LlamaStack` — a stack of Llama blocks (no token embedding,
  no head), so a model can feed it embeddings it made itself.

A *stack* maps embeddings ``[B, T, D]`` (plus an optional mask ``[B, T]``, 1 = token,
0 = pad) to normalised hidden states ``[B, T, D]``; :func:`build_stack` builds either kind
from a small dict, which is how the encoder-augmented decoder describes its two halves.

Padding convention: positions are RIGHT-aligned in the mixer (a sequence of ``T < n_ctx``
tokens uses the last ``T`` positions of the mixing matrix) and counted from each row's first
real token in the Llama stack, so a left-padded row and its unpadded copy compute the same
hidden states at their real tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.llama_stack import LlamaStack
from zoo.models.moe import MoEFeedForward, moe_options

#: builds the feed-forward layer of a block from its width (swap in an MoE layer here)
FFNFactory = Callable[[int], nn.Module]


class FeedForward(nn.Module):
    """Position-wise MLP: ``Linear(d, mult·d) → GELU → Linear(mult·d, d)``.

    Blocks take their feed-forward layer as a module (see :class:`MixerBlock`), so anything
    with the same ``[..., d] -> [..., d]`` call (e.g. a routed mixture of experts) can
    replace it without touching the block. ``d_ff`` sets the hidden width directly
    (default ``mult · d``).
    """

    def __init__(self, d: int, mult: int = 4, d_ff: int | None = None) -> None:
        super().__init__()
        hidden = d_ff or mult * d
        self.fc_in = nn.Linear(d, hidden)
        self.fc_out = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., d]``."""
        return self.fc_out(F.gelu(self.fc_in(x)))


class MaskedTokenMixer(nn.Module):
    """Causal token mixing: a ``Conv1d`` over positions, masked lower-triangular.

    The convolution's CHANNELS are the ``n_ctx`` token positions and its LENGTH is the hidden
    dimension: output position ``i`` is a learned combination of input positions ``j <= i``,
    with a kernel of ``kernel`` taps sliding along the hidden dimension (``kernel=1`` makes it
    a plain learned ``n_ctx × n_ctx`` causal mixing matrix applied to every hidden channel).
    No positional encoding is needed: the mixing weights are position-specific.

    Causality is structural. The weight is multiplied by a registered lower-triangular mask
    in every forward pass (weights are never overwritten in place), so weights above the
    diagonal get exactly zero gradient; they are initialised to zero, and as AdamW's update
    and decoupled weight decay of a zero weight with zero gradient are both zero, they stay
    exactly zero for ever.

    With ``heads > 1`` (the multi-head form): each head projects ``d -> d/heads`` (one
    ``Linear(d, d)`` whose output is split in ``heads`` slices, the same as ``heads``
    separate ``Linear(d, d/heads)``), mixes positions with its own masked convolution, and
    the concatenated heads go through ``Linear(d, d)``. The heads run as ONE grouped
    convolution. (Multi-head mixers are reported to diverge in fp16: use fp32 or bf16.)

    Sequences shorter than ``n_ctx`` use the bottom-right ``T × T`` block of the weight, i.e.
    positions are right-aligned: a left-padded row and its unpadded copy see the same
    weights at their real tokens. ``mask`` zeroes pad rows of the mixer's input, so pads
    contribute nothing to real positions.

    Args:
        n_ctx: the longest sequence (number of positions = channels).
        d: hidden width (the convolution's length).
        kernel: odd kernel size along the hidden dimension (``padding = kernel // 2`` keeps
            the width).
        heads: number of mixing heads; ``d`` must be divisible by it.
    """

    causal_mask: Tensor

    def __init__(self, n_ctx: int, d: int, kernel: int = 1, heads: int = 1) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"mixer kernel must be a positive odd number (keeps the width), got {kernel}")
        if heads < 1 or d % heads:
            raise ValueError(f"mixer width d={d} is not divisible by heads={heads}")
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        self.n_ctx, self.d, self.kernel, self.heads = n_ctx, d, kernel, heads
        # Conv1d's default initialisation (fan-in = n_ctx · kernel), then zero above the diagonal.
        bound = 1.0 / math.sqrt(n_ctx * kernel)
        tril = torch.tril(torch.ones(n_ctx, n_ctx))
        self.register_buffer("causal_mask", tril[None, :, :, None], persistent=False)
        weight = torch.empty(heads, n_ctx, n_ctx, kernel).uniform_(-bound, bound) * self.causal_mask
        self.weight = nn.Parameter(weight)  # [heads, out position, in position, kernel]
        self.bias = nn.Parameter(torch.empty(heads, n_ctx).uniform_(-bound, bound))
        if heads > 1:
            self.proj_in = nn.Linear(d, d)  # = `heads` stacked Linear(d, d / heads)
            self.proj_out = nn.Linear(d, d)

    def extra_repr(self) -> str:
        return f"n_ctx={self.n_ctx}, d={self.d}, kernel={self.kernel}, heads={self.heads}"

    def masked_weight(self, T: int | None = None) -> Tensor:
        """The causal weight ``[heads, T, T, kernel]``: the bottom-right ``T × T`` block."""
        T = self.n_ctx if T is None else T
        return (self.weight * self.causal_mask)[:, -T:, -T:]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mix ``x`` ``[B, T, d]`` across positions causally; ``mask`` ``[B, T]``: 1 = token.

        Raises:
            ValueError: when ``T > n_ctx``.
        """
        B, T, d = x.shape
        if T > self.n_ctx:
            raise ValueError(f"sequence of {T} tokens is longer than the mixer's n_ctx={self.n_ctx}")
        h = self.heads
        weight = self.masked_weight(T).reshape(h * T, T, self.kernel)  # grouped: one group per head
        bias = self.bias[:, -T:].reshape(h * T)
        if h > 1:
            x = self.proj_in(x)
        if mask is not None:  # zero pad rows right at the convolution's input (after proj_in's bias)
            x = x * mask[:, :, None].to(x.dtype)
        if h > 1:
            # [B, T, d] -> [B, h, T, d/h] -> channels (head, position) for a grouped conv
            x = x.view(B, T, h, d // h).transpose(1, 2).reshape(B, h * T, d // h)
        # (with one head, x [B, T, d] already reads as [batch, channels = positions, length = d])
        y = F.conv1d(x, weight, bias, padding=self.kernel // 2, groups=h)
        if h > 1:
            y = self.proj_out(y.view(B, h, T, d // h).transpose(1, 2).reshape(B, T, d))
        return y


class MixerBlock(nn.Module):
    """Pre-norm residual mixer block: ``x += mix(LN(x), mask)``; ``x += ffn(LN(x))``.

    Args:
        n_ctx, d, kernel, heads: the :class:`MaskedTokenMixer`'s sizes.
        ffn: the feed-forward layer (``[..., d] -> [..., d]``); ``None`` builds a
            :class:`FeedForward` ``(d, 4)``. Passing the module lets a mixture of experts
            replace it without another block class.
    """

    def __init__(self, n_ctx: int, d: int, kernel: int = 1, heads: int = 1, ffn: nn.Module | None = None) -> None:
        super().__init__()
        self.norm_mix = nn.LayerNorm(d)
        self.mix = MaskedTokenMixer(n_ctx, d, kernel=kernel, heads=heads)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = FeedForward(d) if ffn is None else ffn

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``[B, T, d] -> [B, T, d]``."""
        x = x + self.mix(self.norm_mix(x), mask)
        return x + self.ffn(self.norm_ffn(x))


class MixerStack(nn.Module):
    """``n_layers`` :class:`MixerBlock` s and a final LayerNorm: embeddings → hidden states.

    No positional encoding (the mixing weights are position-specific).
    ``block_classes`` names the repeated block (the unit FSDP shards).

    Args:
        n_ctx: longest sequence; d: width; kernel, heads: the mixers' (see
            :class:`MaskedTokenMixer`).
        ffn_factory: builds each block's feed-forward layer from ``d`` (default
            :class:`FeedForward`).
        moe: a ``model.moe`` section (:data:`zoo.models.moe.MOE_OPTIONS`): each block's
            feed-forward layer becomes a :class:`zoo.models.moe.MoEFeedForward` whose
            experts are :class:`FeedForward` s of width ``moe.d_ff`` (default ``4·d``).
    """

    block_classes: tuple[type[nn.Module], ...] = (MixerBlock,)

    def __init__(
        self,
        n_ctx: int,
        d: int,
        n_layers: int,
        kernel: int = 1,
        heads: int = 1,
        ffn_factory: FFNFactory | None = None,
        moe: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if moe is not None and ffn_factory is not None:
            raise ValueError("give a mixer stack either ffn_factory or moe, not both")
        self.n_ctx, self.d = n_ctx, d
        #: scale of the embeddings this stack expects: N(0, 1), PyTorch's (and the paper's)
        #: default. Its blocks keep PyTorch's default initialisation, whose outputs are O(1);
        #: embeddings of std 0.02 would be drowned by them in the residual stream and the model
        #: sat on the unigram plateau (loss 6.83 vs 6.18 nats after 100 steps, d=128, 4k BPE).
        self.embedding_std = 1.0
        make_ffn = ffn_factory or (moe_ffn_factory(moe) if moe is not None else FeedForward)
        self.blocks = nn.ModuleList(
            MixerBlock(n_ctx, d, kernel=kernel, heads=heads, ffn=make_ffn(d)) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Embeddings ``[B, T, d]`` (pads marked 0 in ``mask`` ``[B, T]``) → hidden ``[B, T, d]``."""
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def moe_ffn_factory(moe: Mapping[str, Any]) -> FFNFactory:
    """Builds a :class:`zoo.models.moe.MoEFeedForward` of :class:`FeedForward` experts per block."""
    opts = moe_options(moe)
    d_ff = opts.pop("d_ff")
    return lambda d: MoEFeedForward(d, lambda: FeedForward(d, d_ff=d_ff), **opts)


#: stack kinds :func:`build_stack` accepts, with the options each takes besides its width
STACK_KINDS: dict[str, type[nn.Module]] = {"mixer": MixerStack, "llama": LlamaStack}


def build_stack(spec: Mapping[str, Any], n_ctx: int, width: int | None = None) -> nn.Module:
    """Build a stack from ``{kind: mixer|llama, d_model, n_layers, ...}``.

    Mixer options: ``kernel``, ``heads``; Llama options: ``n_heads``, ``n_kv_heads``,
    ``d_ff``, ``rope_theta``, ``dropout``, ``init_std``; both: ``moe`` (a mixture of experts
    in place of every feed-forward layer). ``width`` overrides ``d_model``
    (a decoder that concatenates a vector to its embeddings is wider than them).

    Raises:
        ValueError: for an unknown kind or option, naming what exists.
    """
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in STACK_KINDS:
        raise ValueError(f"stack kind must be one of {', '.join(STACK_KINDS)}; got {kind!r}")
    for key in ("d_model", "n_layers"):
        if key not in spec:
            raise ValueError(f"the {kind} stack needs {key}")
    d = int(width if width is not None else spec.pop("d_model"))
    spec.pop("d_model", None)
    cls = STACK_KINDS[kind]
    import inspect

    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "n_ctx", "d")]
    bad = [k for k in spec if k not in allowed]
    if bad:
        raise ValueError(f"{bad[0]!r} is not an option of a {kind} stack; options: d_model, {', '.join(allowed)}")
    return cls(n_ctx, d, **spec)
