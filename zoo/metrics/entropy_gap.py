"""The :class:`EntropyGap` metric: how far a model's loss is above per-token entropy estimates."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from zoo.metrics.language import add_sums


class EntropyGap(Metric):
    """Mean ``CE_i - H_i`` in nats over the scored tokens that have an estimate.

    Positive: the model's loss is above the estimated entropy (room to learn); negative: below
    it (the model is more confident on these tokens than their entropy allows: memorisation,
    or an estimator that overestimates). Sums in float64, DDP-reduced by ``"sum"``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    gap_sum: Tensor
    tokens: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        add_sums(self, gap_sum=torch.float64, tokens=torch.int64)

    def update(self, nll: Tensor, entropy: Tensor, mask: Tensor | None = None) -> None:
        """``nll`` ``[N]`` nats, ``entropy`` with ``N`` values (NaN = none), ``mask`` scored."""
        nll = nll.detach().reshape(-1).double()
        h = entropy.detach().reshape(-1).to(nll)
        keep = torch.isfinite(h) if mask is None else (mask.reshape(-1) & torch.isfinite(h))
        self.gap_sum += torch.where(keep, nll - h, torch.zeros_like(nll)).sum()
        self.tokens += keep.sum()

    def compute(self) -> Tensor:
        """Mean gap, nats per token (NaN before any token with an estimate)."""
        return self.gap_sum / self.tokens
