"""torchmetrics for the routers of mixture-of-experts layers (:mod:`zoo.models.moe`).

Per MoE layer:

* :class:`ExpertLoad` — the fraction of routed assignments (token × chosen expert) each
  expert received: a vector of ``n_experts`` numbers summing to 1; ``1 / n_experts`` each
  when the load is balanced.
* :class:`RouterEntropy` — in bits. ``of="load"``: the entropy of that load distribution, how
  evenly the experts are used (``log2 n_experts`` = perfectly even, 0 = one expert takes
  everything). ``of="tokens"``: the mean entropy of each token's router distribution, how
  undecided the router is per token (high early in training, falling as experts specialise).

Both keep sums (counts in int64, entropies in float64) reduced with ``"sum"`` across
processes, so ``compute()`` is the value over all ranks' tokens. They are fed from
:class:`zoo.models.moe.Routing`, which every MoE layer keeps after its forward pass;
:func:`router_metrics` builds one set per layer and :func:`update_router_metrics` feeds it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

LN2 = math.log(2.0)


class ExpertLoad(Metric):
    """Fraction of routed assignments per expert, ``[n_experts]``; update with ``[N, k]`` expert ids."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    counts: Tensor

    def __init__(self, n_experts: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_experts = n_experts
        self.add_state("counts", default=torch.zeros(n_experts, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, expert_index: Tensor) -> None:
        self.counts += torch.bincount(expert_index.reshape(-1).long(), minlength=self.n_experts)

    def compute(self) -> Tensor:
        return self.counts.double() / self.counts.sum().clamp(min=1)


class RouterEntropy(Metric):
    """Router entropy in bits: of the expert-load distribution (``of="load"``, how evenly the
    experts are used; max ``log2 n_experts``) or the mean per-token routing entropy
    (``of="tokens"``). Update with the routing's ``expert_index`` ``[N, k]`` and ``probs``
    ``[N, n_experts]``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, n_experts: int, of: str = "load", **kwargs) -> None:
        super().__init__(**kwargs)
        if of not in ("load", "tokens"):
            raise ValueError(f"RouterEntropy(of=...) must be 'load' or 'tokens', got {of!r}")
        self.n_experts, self.of = n_experts, of
        if of == "load":
            self.add_state("counts", default=torch.zeros(n_experts, dtype=torch.int64), dist_reduce_fx="sum")
        else:
            self.add_state("nats", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("tokens", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, expert_index: Tensor, probs: Tensor) -> None:
        if self.of == "load":
            self.counts += torch.bincount(expert_index.reshape(-1).long(), minlength=self.n_experts)
        else:
            p = probs.reshape(-1, probs.shape[-1]).double()
            self.nats += -(p * p.clamp(min=1e-30).log()).sum()
            self.tokens += p.shape[0]

    def compute(self) -> Tensor:
        if self.of == "load":
            return entropy_bits(self.counts.double() / self.counts.sum().clamp(min=1))
        return self.nats / LN2 / self.tokens.clamp(min=1)


def entropy_bits(p: Tensor) -> Tensor:
    """Shannon entropy in bits of a distribution ``p`` (zeros contribute nothing)."""
    p = p.double()
    return -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum()


def router_metrics(n_experts: Sequence[int]) -> nn.ModuleList:
    """One :class:`MetricCollection` per MoE layer: ``load`` (vector), ``entropy`` (load, bits)
    and ``token_entropy`` (bits)."""
    return nn.ModuleList(
        MetricCollection({
            "load": ExpertLoad(n),
            "entropy": RouterEntropy(n, of="load"),
            "token_entropy": RouterEntropy(n, of="tokens"),
        }, compute_groups=False)
        for n in n_experts
    )


def update_router_metrics(metrics: nn.ModuleList, layers: Sequence[nn.Module]) -> None:
    """Feed each layer's last :class:`zoo.models.moe.Routing` to its metrics."""
    for collection, layer in zip(metrics, layers, strict=True):
        r = layer.routing
        if r is None:
            continue
        collection["load"].update(r.expert_index)
        collection["entropy"].update(r.expert_index, r.probs)
        collection["token_entropy"].update(r.expert_index, r.probs)


def router_values(metrics: nn.ModuleList, prefix: str) -> dict[str, Tensor]:
    """``compute()`` every layer's metrics as flat scalars ready to log:
    ``{prefix}/router_l{i}_load{e}``, ``{prefix}/router_l{i}_entropy``,
    ``{prefix}/router_l{i}_token_entropy`` (bits), and over all layers
    ``{prefix}/router_balance`` (mean load entropy / log2 n_experts: 1 = perfectly even)
    and ``{prefix}/router_max_load`` (the largest expert's load × n_experts: 1 = even).
    """
    out: dict[str, Tensor] = {}
    balance, max_load = [], []
    for i, collection in enumerate(metrics):
        load = collection["load"].compute()
        n = load.numel()
        for e in range(n):
            out[f"{prefix}/router_l{i}_load{e}"] = load[e].float()
        h = collection["entropy"].compute()
        out[f"{prefix}/router_l{i}_entropy"] = h.float()
        out[f"{prefix}/router_l{i}_token_entropy"] = collection["token_entropy"].compute().float()
        balance.append(h / math.log2(n) if n > 1 else torch.ones((), dtype=h.dtype))
        max_load.append(load.max() * n)
    if balance:
        out[f"{prefix}/router_balance"] = torch.stack(balance).mean().float()
        out[f"{prefix}/router_max_load"] = torch.stack(max_load).mean().float()
    return out
