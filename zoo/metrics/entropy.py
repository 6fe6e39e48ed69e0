"""Entropy-aware training: the per-token loss and the :class:`EntropyGap` metric.

"Approach but do not exceed the entropy" (Badger & Neligeorge, arXiv 2511.10618): given a
per-token entropy estimate ``H_i`` (nats; :mod:`zoo.entropy.estimate`), a causal model is
trained on

* ``entropy_l1``: ``alpha * |CE_i - H_i|`` (two-sided: a token whose loss fell below its
  estimated entropy, i.e. one being memorised, is pushed back up; the paper's form, alpha 2.5);
* ``entropy_clip``: ``alpha * max(CE_i - H_i, 0)`` (one-sided: no gradient once a token is at
  or below its estimate);
* ``ce``: plain cross-entropy (the default; what evaluation always uses).

Tokens without an estimate (NaN, e.g. past the estimator's context) fall back to plain CE.
:class:`EntropyGap` accumulates the mean ``CE_i - H_i`` in nats over tokens with an estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from zoo.errors import ZooError

LOSS_KINDS = ("ce", "entropy_l1", "entropy_clip")


def loss_options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated ``loss:`` section: ``{kind: ce | entropy_l1 | entropy_clip, alpha: 2.5}``."""
    out = {"kind": "ce", "alpha": 2.5, **dict(cfg or {})}
    bad = set(out) - {"kind", "alpha"}
    if bad:
        raise ZooError(f"unknown loss option(s) {sorted(bad)}; allowed: kind, alpha")
    if out["kind"] not in LOSS_KINDS:
        from zoo.errors import unknown

        raise unknown("loss.kind", str(out["kind"]), LOSS_KINDS)
    alpha = out["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ZooError(f"loss.alpha must be a positive number, got {alpha!r}")
    out["alpha"] = float(alpha)
    return out


def entropy_aware_loss(nll: Tensor, valid: Tensor, entropy: Tensor, kind: str = "entropy_l1",
                       alpha: float = 2.5) -> Tensor:
    """Mean per-token loss over the scored tokens (differentiable through ``nll``).

    Args:
        nll: ``[N]`` per-token cross-entropy in nats (:attr:`zoo.metrics.TokenStats.nll`).
        valid: ``[N]`` bool, scored tokens.
        entropy: per-token estimates in nats, any shape with ``N`` elements (the batch's
            ``entropy`` ``[B, T]``, aligned with its labels); NaN = no estimate.
        kind, alpha: see the module docstring.
    """
    h = entropy.reshape(-1).to(nll.dtype)
    if h.shape != nll.shape:
        raise ValueError(f"entropy has {h.numel()} values for {nll.numel()} tokens")
    known = valid & torch.isfinite(h)
    h = torch.where(known, h, torch.zeros_like(h))
    diff = nll - h
    if kind == "entropy_l1":
        per = alpha * diff.abs()
    elif kind == "entropy_clip":
        per = alpha * diff.clamp(min=0)
    elif kind == "ce":
        per = nll
    else:
        raise ValueError(f"unknown loss kind {kind!r}; allowed: {', '.join(LOSS_KINDS)}")
    per = torch.where(known, per, nll)
    per = torch.where(valid, per, torch.zeros_like(per))
    return per.sum() / valid.sum().clamp(min=1)


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
        self.add_state("gap_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

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
