"""Training objectives: what the training step minimises, given the batch's per-token statistics.

Evaluation always scores plain cross-entropy; an objective changes only the training loss.
An objective maps ``(stats, batch)`` (:class:`zoo.metrics.TokenStats` of the step, and the
batch) to the loss and a dict of extra scalars to log as ``train/<name>``. They are picked by
the ``loss:`` config section, ``{kind: ..., alpha: ...}``, and registered by name with
:func:`register_objective`.

Built-in kinds:

* ``ce``: plain cross-entropy (the default).
* ``entropy_l1`` / ``entropy_clip``: "approach but do not exceed the entropy" (Badger &
  Neligeorge, arXiv 2511.10618). Given a per-token entropy estimate ``H_i`` in nats (the
  batch's ``entropy``, from :mod:`zoo.entropy.estimate`), train on ``alpha * |CE_i - H_i|``
  (two-sided: a token whose loss fell below its estimate, one being memorised, is pushed
  back up; the paper's form, alpha 2.5) or ``alpha * max(CE_i - H_i, 0)`` (one-sided: no
  gradient once a token is at or below its estimate). Tokens without an estimate (NaN, e.g.
  past the estimator's context) fall back to plain CE.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from zoo.errors import ZooError, unknown


class Objective(Protocol):
    """``objective(stats, batch) -> (loss, extra scalars to log)``."""

    def __call__(self, stats: Any, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]: ...


#: kind -> factory taking the ``loss:`` section's other options
_OBJECTIVES: dict[str, Callable[..., Objective]] = {}


def register_objective(kind: str) -> Callable[[Callable[..., Objective]], Callable[..., Objective]]:
    """Decorator: make ``loss.kind=kind`` build this objective (a factory of its options)."""

    def add(factory: Callable[..., Objective]) -> Callable[..., Objective]:
        if kind in _OBJECTIVES and _OBJECTIVES[kind] is not factory:
            raise ValueError(f"objective {kind!r} is already registered")
        _OBJECTIVES[kind] = factory
        return factory

    return add


def list_objectives() -> list[str]:
    """Names accepted as ``loss.kind``."""
    return sorted(_OBJECTIVES)


def build_objective(cfg: Mapping[str, Any] | None) -> Objective:
    """The objective a ``loss:`` section describes (``None``: plain cross-entropy)."""
    opts = loss_options(cfg)
    kind = opts.pop("kind")
    return _OBJECTIVES[kind](**opts)


def loss_options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated ``loss:`` section: ``{kind: ce | entropy_l1 | entropy_clip, alpha: 2.5}``."""
    out = {"kind": "ce", "alpha": 2.5, **dict(cfg or {})}
    bad = set(out) - {"kind", "alpha"}
    if bad:
        raise ZooError(f"unknown loss option(s) {sorted(bad)}; allowed: kind, alpha")
    if out["kind"] not in _OBJECTIVES:
        raise unknown("loss.kind", str(out["kind"]), _OBJECTIVES)
    alpha = out["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ZooError(f"loss.alpha must be a positive number, got {alpha!r}")
    out["alpha"] = float(alpha)
    return out


@register_objective("ce")
def cross_entropy(alpha: float = 2.5) -> Objective:
    """Plain cross-entropy (``alpha`` is ignored)."""

    def objective(stats: Any, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return stats.loss, {}

    return objective


def _entropy_aware(kind: str) -> Callable[..., Objective]:
    def factory(alpha: float = 2.5) -> Objective:
        def objective(stats: Any, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
            if "entropy" not in batch:
                raise RuntimeError(f"loss.kind={kind} needs per-token estimates in the batch ('entropy'): "
                                   "train with entropy.estimates=DIR (python -m zoo.entropy estimate)")
            loss = entropy_aware_loss(stats.nll, stats.valid, batch["entropy"], kind, alpha)
            return loss, {"objective": loss.detach()}

        return objective

    factory.__doc__ = f"``{kind}`` (module docstring), weighted by ``alpha``."
    return factory


for _kind in ("entropy_l1", "entropy_clip"):
    register_objective(_kind)(_entropy_aware(_kind))


def entropy_aware_loss(nll: Tensor, valid: Tensor, entropy: Tensor, kind: str = "entropy_l1",
                       alpha: float = 2.5) -> Tensor:
    """Mean per-token loss over the scored tokens (differentiable through ``nll``).

    Args:
        nll: ``[N]`` per-token cross-entropy in nats (:attr:`zoo.metrics.TokenStats.nll`).
        valid: ``[N]`` bool, scored tokens.
        entropy: per-token estimates in nats, any shape with ``N`` elements (the batch's
            ``entropy`` ``[B, T]``, aligned with its labels); NaN = no estimate.
        kind: ``entropy_l1``, ``entropy_clip`` or ``ce``; ``alpha``: the weight.
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
        raise ValueError(f"unknown loss kind {kind!r}; allowed: ce, entropy_l1, entropy_clip")
    per = torch.where(known, per, nll)
    per = torch.where(valid, per, torch.zeros_like(per))
    return per.sum() / valid.sum().clamp(min=1)
