"""A top-k routed mixture-of-experts feed-forward layer, shared by every block that has an FFN.

:class:`MoEFeedForward` replaces a block's feed-forward layer (``[..., d] -> [..., d]``):
a linear router scores ``n_experts`` experts per token, the ``k`` best are run and their
outputs mixed with the router's probabilities renormalised over the chosen ``k``
(Mixtral / GShard top-k). It is ONE implementation for both families:

* masked mixer: :class:`zoo.models.blocks.MixerStack` builds it as each block's ``ffn``,
  its experts :class:`zoo.models.blocks.FeedForward` (Linear → GELU → Linear);
* Llama: :func:`zoo.models.llama_stack.use_moe_mlps` swaps the ``mlp`` of every Llama
  block for it, its experts the block's own :class:`zoo.models.llama_stack.SwiGLU`; the
  block calls ``mlp(x)``, which is this layer's call too.

Options (the ``model.moe`` config section, see :data:`MOE_OPTIONS`):

* ``n_experts``, ``k``: experts per layer and experts run per token.
* ``d_ff``: the hidden width of each expert (default: the dense FFN's). Equal *active*
  parameters with a dense model: ``k × d_ff`` = the dense width.
* ``capacity_factor``: each expert takes at most ``ceil(capacity_factor · k · N / n_experts)``
  of a batch's ``N`` tokens; assignments beyond it are dropped (the token keeps its
  residual; first choices are served before second choices, GShard-style). ``null``: no
  limit, nothing is dropped.
* ``jitter``: in training, the router's input is multiplied by noise ``U(1-jitter,
  1+jitter)`` (Switch Transformer's router jitter); off in evaluation.
* ``aux_loss_coef``: weight of the load-balancing loss (Switch / GShard):
  ``n_experts · Σ_e f_e · P_e``, with ``f_e`` the fraction of the ``N·k`` assignments that
  go to expert ``e`` and ``P_e`` the mean router probability of ``e``. It is 1 when the
  router is uniform (its minimum; see the tests) and up to ``n_experts`` when one expert
  takes everything. Gradients reach the router through ``P``.

After each forward the layer keeps :attr:`MoEFeedForward.aux_loss` (already multiplied by
its coefficient) and :attr:`MoEFeedForward.routing` (detached routing decisions for the
router metrics, :mod:`zoo.metrics.router`, logged by :class:`zoo.monitors.RouterMonitor`).
The layer is an :class:`zoo.models.base.AuxiliaryLossLayer`: :func:`zoo.models.base.auxiliary_loss`
sums such losses over any model, which is how the training task adds it to the loss; and a
:class:`zoo.models.base.SparseLayer`, so :func:`zoo.models.parameter_counts` counts the
parameters a token does not use.

Compute is vectorised: the assignments are sorted by expert and each expert runs once on
all its tokens (a loop over experts, none over tokens). Learning how many tokens each expert
got is one host sync per layer; on an accelerator, a layer with a capacity runs each expert
on its ``capacity`` slots instead (static shapes, no sync; :attr:`MoEFeedForward.static_dispatch`). Every expert runs every step, on
zero tokens if none were routed to it, so all parameters are in the graph (DDP needs that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.base import count_parameters

#: the keys of a ``model.moe`` config section, with their defaults
MOE_OPTIONS: dict[str, Any] = {
    "n_experts": 4,
    "k": 2,
    "d_ff": None,
    "capacity_factor": None,
    "jitter": 0.0,
    "aux_loss_coef": 0.01,
}


@dataclass
class Routing:
    """What the router decided in the last forward pass (all detached).

    Attributes:
        expert_index: ``[N, k]`` int64, the chosen experts of each token, best first.
        probs: ``[N, n_experts]`` float32 router probabilities.
        kept: ``[N, k]`` bool, False where an assignment was dropped for capacity.
    """

    expert_index: Tensor
    probs: Tensor
    kept: Tensor

    @property
    def n_experts(self) -> int:
        return self.probs.shape[-1]


def moe_options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a ``model.moe`` section and fill in the defaults.

    Raises:
        ValueError: for an unknown key (naming the known ones) or an out-of-range value.
    """
    from zoo.errors import did_you_mean

    cfg = dict(cfg or {})
    for key in cfg:
        if key not in MOE_OPTIONS:
            raise ValueError(
                f"moe.{key} is not an MoE option{did_you_mean(key, MOE_OPTIONS)}; options: {', '.join(MOE_OPTIONS)}"
            )
    opts = {**MOE_OPTIONS, **cfg}
    n, k = opts["n_experts"], opts["k"]
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"moe.n_experts must be a positive integer, got {n!r}")
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"moe.k must be an integer from 1 to n_experts={n}, got {k!r}")
    if opts["d_ff"] is not None and (not isinstance(opts["d_ff"], int) or opts["d_ff"] < 1):
        raise ValueError(f"moe.d_ff must be a positive integer or null, got {opts['d_ff']!r}")
    cf = opts["capacity_factor"]
    if cf is not None and not (isinstance(cf, (int, float)) and cf > 0):
        raise ValueError(f"moe.capacity_factor must be a positive number or null (no limit), got {cf!r}")
    if not (isinstance(opts["jitter"], (int, float)) and 0 <= opts["jitter"] < 1):
        raise ValueError(f"moe.jitter must be in [0, 1), got {opts['jitter']!r}")
    if not (isinstance(opts["aux_loss_coef"], (int, float)) and opts["aux_loss_coef"] >= 0):
        raise ValueError(f"moe.aux_loss_coef must be >= 0, got {opts['aux_loss_coef']!r}")
    return opts


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of experts: ``[..., d] -> [..., d]``, a drop-in feed-forward layer.

    Args:
        d: model width.
        make_expert: builds one expert (a module ``[n, d] -> [n, d]``); called ``n_experts``
            times.
        n_experts, k, capacity_factor, jitter, aux_loss_coef: see the module docstring.
    """

    def __init__(
        self,
        d: int,
        make_expert: Callable[[], nn.Module],
        n_experts: int = 4,
        k: int = 2,
        capacity_factor: float | None = None,
        jitter: float = 0.0,
        aux_loss_coef: float = 0.01,
    ) -> None:
        super().__init__()
        moe_options({"n_experts": n_experts, "k": k, "capacity_factor": capacity_factor, "jitter": jitter,
                     "aux_loss_coef": aux_loss_coef})
        self.d, self.n_experts, self.k = d, n_experts, k
        self.capacity_factor, self.jitter, self.aux_loss_coef = capacity_factor, float(jitter), float(aux_loss_coef)
        self.router = nn.Linear(d, n_experts, bias=False)
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))
        #: the load-balancing loss of the last forward, times ``aux_loss_coef`` (differentiable)
        self.aux_loss: Tensor | None = None
        #: the last forward's routing decisions (detached), for the router metrics
        self.routing: Routing | None = None
        #: with a capacity, run every expert on ``capacity`` slots (static shapes, no host
        #: sync; empty slots cost compute) rather than on exactly its tokens (one host sync
        #: per layer to learn the sizes). ``None``: slots on accelerators, exact sizes on CPU
        self.static_dispatch: bool | None = None
        #: run every expert on every token (zero gates where unrouted): shapes independent of
        #: the routing, at ``n_experts / k`` times the compute (:meth:`decouple_rows`)
        self.dense_dispatch = False

    def extra_repr(self) -> str:
        return (f"d={self.d}, n_experts={self.n_experts}, k={self.k}, capacity_factor={self.capacity_factor}, "
                f"jitter={self.jitter}, aux_loss_coef={self.aux_loss_coef}")

    def expert_parameters(self) -> int:
        """Parameters of one expert."""
        return count_parameters(self.experts[0])

    def inactive_parameters(self) -> int:
        """Parameters a token does not use: the ``n_experts - k`` experts it is not routed to."""
        return (self.n_experts - self.k) * self.expert_parameters()

    def decouple_rows(self) -> None:
        """From now on a token's output depends on it alone, to the last bit: no capacity
        limit (no token is dropped because of others), and every expert runs on every token
        with a zero gate where it is not routed (:attr:`dense_dispatch`), so no matmul's size
        depends on the batch's routing. A compressor's decoder needs that."""
        self.capacity_factor = None
        self.dense_dispatch = True

    def capacity(self, n_tokens: int) -> int | None:
        """Most assignments one expert takes from a batch of ``n_tokens`` (None: no limit)."""
        if self.capacity_factor is None:
            return None
        return max(1, math.ceil(self.capacity_factor * n_tokens * self.k / self.n_experts))

    def route(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Router probabilities ``[N, E]`` (float32), chosen experts ``[N, k]`` and their gates ``[N, k]``."""
        if self.training and self.jitter > 0:
            h = h * torch.empty_like(h).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        probs = self.router(h).float().softmax(dim=-1)
        top_p, top_i = probs.topk(self.k, dim=-1)
        gates = top_p / top_p.sum(dim=-1, keepdim=True)  # renormalised over the chosen k
        return probs, top_i, gates

    def balance_loss(self, probs: Tensor, top_i: Tensor) -> Tensor:
        """``n_experts · Σ_e f_e · P_e`` (Switch / GShard), unweighted; 1 for uniform routing."""
        E = self.n_experts
        f = torch.bincount(top_i.reshape(-1), minlength=E).to(probs.dtype) / top_i.numel()
        return E * (f * probs.mean(dim=0)).sum()

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., d]``; sets :attr:`aux_loss` and :attr:`routing`."""
        shape = x.shape
        h = x.reshape(-1, self.d)
        N, E, k = h.shape[0], self.n_experts, self.k
        probs, top_i, gates = self.route(h)
        self.aux_loss = self.aux_loss_coef * self.balance_loss(probs, top_i)

        # assignments ordered by choice rank, then token: first choices claim capacity first
        expert = top_i.t().reshape(-1)  # [k*N]
        token = torch.arange(N, device=h.device).repeat(k)
        gate = gates.t().reshape(-1)
        kept = torch.ones_like(expert, dtype=torch.bool)
        position = None
        cap = self.capacity(N)
        if cap is not None:
            onehot = F.one_hot(expert, E)
            position = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1  # place in its expert's queue
            kept = position < cap
            expert = torch.where(kept, expert, E)  # dropped: sent to a sentinel "expert" E
        self.routing = Routing(top_i.detach(), probs.detach(), kept.view(k, N).t())

        if self.dense_dispatch:
            dense_gates = torch.zeros(N, E, dtype=gates.dtype, device=h.device).scatter_(1, top_i, gates)
            out = torch.zeros_like(h)
            for e in range(E):
                out = out + self.experts[e](h) * dense_gates[:, e, None].to(h.dtype)
            return out.view(shape)
        if cap is not None and (self.static_dispatch or (self.static_dispatch is None and h.device.type != "cpu")):
            return self._dispatch_to_slots(h, expert, token, gate, position, kept, cap).view(shape)
        order = torch.argsort(expert, stable=True)
        sizes = torch.bincount(expert, minlength=E + 1).tolist()  # one host sync per layer
        out = torch.zeros_like(h)
        for e, idx in enumerate(order.split(sizes)[:E]):  # every expert runs, on 0 tokens if need be
            tok = token[idx]
            y = self.experts[e](h[tok]) * gate[idx, None].to(h.dtype)
            out.index_add_(0, tok, y.to(out.dtype))
        return out.view(shape)

    def _dispatch_to_slots(self, h: Tensor, expert: Tensor, token: Tensor, gate: Tensor, position: Tensor,
                           kept: Tensor, cap: int) -> Tensor:
        """Every expert runs on exactly ``cap`` slots: its kept assignments in queue order, then
        empty slots (a zero row with gate 0). Shapes are static, so nothing is read back to
        the host; an empty slot costs compute instead (at most ``capacity_factor`` - 1 extra)."""
        N, E = h.shape[0], self.n_experts
        slot = torch.where(kept, expert * cap + position, E * cap)  # dropped: one spare slot
        slot_token = torch.full((E * cap + 1,), N, dtype=token.dtype, device=h.device).scatter_(0, slot, token)
        slot_gate = torch.zeros(E * cap + 1, dtype=gate.dtype, device=h.device).scatter_(0, slot, gate)
        slot_token, slot_gate = slot_token[:-1].view(E, cap), slot_gate[:-1].view(E, cap)
        padded = torch.cat([h, h.new_zeros(1, h.shape[1])])  # row N: what empty slots read
        out = torch.zeros_like(padded)
        for e in range(E):
            y = self.experts[e](padded[slot_token[e]]) * slot_gate[e, :, None].to(h.dtype)
            out.index_add_(0, slot_token[e], y.to(out.dtype))
        return out[:N]


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """The MoE layers of a model, in module order (one per block)."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]
