"""Curvature of a model's training loss: top Hessian eigenvalues, trace, effective dimension.

The loss is the model's mean next-token cross-entropy (nats per scored token) over a fixed
list of batches of a zoo DataModule, ``L(θ)``; its Hessian ``H = ∇²L(θ)`` at the trained
weights is never formed. Every measure is built from Hessian-vector products (two backward
passes, exact to rounding) by `hessian-eigenthings <https://pypi.org/project/hessian-eigenthings/>`_:

* **top-k eigenvalues** — Lanczos (``hessian_eigenthings.lanczos``, full reorthogonalisation)
  on ``H``: the sharpest directions; ``λ_max`` is the classical sharpness.
* **trace** ``tr H = Σ λ_i`` — Hutchinson (``E[vᵀHv]`` over Rademacher ``v``) or Hutch++ (a
  low-rank sketch of the top of the spectrum plus Hutchinson on the rest): the total curvature.
* **spectral density** — stochastic Lanczos quadrature (``hessian_eigenthings.spectral_density``):
  nodes ``θ`` and weights ``τ²`` per run, whose weighted sum estimates ``tr f(H) / n`` for any ``f``.
* **effective dimension** ``d_eff(z) = Σ_i λ_i / (λ_i + z)`` (MacKay 1992; Maddox et al. 2020):
  the number of directions whose curvature exceeds the scale ``z`` (a prior precision);
  negative eigenvalues count as 0. From the density (all ``n`` directions) and, as a lower
  bound, from the top-k alone.
* on a tiny model, the **exact spectrum** of the dense Hessian (``n`` products), the
  reference the estimators are tested against, and the share of near-zero eigenvalues.

Attention on CPU uses a fused kernel without a double backward; the products run under
PyTorch's math attention (:func:`double_backward_attention`), same values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from hessian_eigenthings import (
    HessianOperator,
    LambdaOperator,
    hutch_plus_plus,
    hutchinson,
    lanczos,
    spectral_density,
)
from hessian_eigenthings.operators.base import CurvatureOperator
from torch import nn

from zoo.data.layouts import IGNORE_INDEX

Batch = dict[str, torch.Tensor]


@contextlib.contextmanager
def double_backward_attention() -> Iterator[None]:
    """Inside: scaled-dot-product attention runs PyTorch's math kernel, which has a double
    backward (the fused CPU flash kernel has none); numerically the same attention."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of a zoo model on a DataModule batch — the value
    :func:`zoo.metrics.token_stats` reports as ``loss``, written with plain autograd ops so
    that it has a second derivative (the chunked loss's backward is once-differentiable)."""
    logits = model.forward_batch(batch)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up to float32; float64 stays
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)


def fixed_batches(loader: Any, n: int) -> list[Batch]:
    """The first ``n`` batches of ``loader``, kept, so every product sees the same loss."""
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) >= n:
            break
    return out


def hessian_operator(model: nn.Module, batches: Sequence[Batch],
                     loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = lm_loss,
                     progress: Any = None) -> CurvatureOperator:
    """The Hessian of the mean of ``loss_fn`` over ``batches`` w.r.t. the trainable parameters,
    as a matrix-free operator (hessian-eigenthings' ``HessianOperator``) that counts its
    products (``.products``) and runs each under :func:`double_backward_attention`.
    ``progress``: a tqdm bar advanced once per product."""
    op = HessianOperator(model, list(batches), loss_fn, full_dataset=True,
                         param_filter=lambda _name, p: p.requires_grad)
    def matvec(v: torch.Tensor) -> torch.Tensor:
        with double_backward_attention():
            return _count(counted, op.matvec(v), progress)

    counted = LambdaOperator(matvec, op.size, op.device, op.dtype)
    counted.products = 0  # type: ignore[attr-defined]
    return counted


def _count(op: Any, out: torch.Tensor, progress: Any) -> torch.Tensor:
    op.products += 1
    if progress is not None:
        progress.update(1)
    return out


def dense_hessian(model: nn.Module, batches: Sequence[Batch],
                  loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = lm_loss) -> torch.Tensor:
    """The full ``n x n`` Hessian of the trainable parameters (tiny models only), row by row by
    differentiating the gradient once more with plain autograd — independent of
    hessian-eigenthings, the reference its estimators are tested against."""
    params = [p for p in model.parameters() if p.requires_grad]
    with double_backward_attention():
        loss = torch.stack([loss_fn(model, b) for b in batches]).mean()
        grad = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, create_graph=True)])
        rows = []
        for i in range(grad.numel()):
            parts = torch.autograd.grad(grad[i], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                                   for g, p in zip(parts, params, strict=True)]))
    h = torch.stack(rows).detach()
    return 0.5 * (h + h.T)


def effective_dimension(eigenvalues: torch.Tensor | Sequence[float], z: float,
                        weights: torch.Tensor | None = None) -> float:
    """``Σ w_i λ_i / (λ_i + z)`` over the positive ``λ_i`` (``w``: quadrature weights, default 1)."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten()
    w = torch.ones_like(lam) if weights is None else torch.as_tensor(weights, dtype=torch.float64).flatten()
    keep = torch.isfinite(lam) & (lam > 0)
    return float((w[keep] * lam[keep] / (lam[keep] + z)).sum())


def near_zero_share(eigenvalues: torch.Tensor, rel_tol: float = 1e-3) -> float:
    """Share of eigenvalues with ``|λ| <= rel_tol · max |λ|`` (flat directions of an exact spectrum)."""
    lam = eigenvalues.abs()
    return float((lam <= rel_tol * lam.max()).double().mean())


@dataclass
class Curvature:
    """What :func:`measure` returns (JSON-ready via :meth:`as_dict`)."""

    parameters: int
    batches: int
    loss: float
    top_eigenvalues: list[float]
    top_residuals: list[float]
    trace: float
    trace_stderr: float
    trace_method: str
    z: float
    effective_dimension_top_k: float
    effective_dimension_density: float | None = None
    density_grid: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)
    hvps: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def _mean_loss(model: nn.Module, batches: Sequence[Batch]) -> float:
    return sum(float(lm_loss(model, b)) for b in batches) / len(batches)


def slq_effective_dimension(density: Any, n: int, z: float) -> float:
    """``tr f(H)`` with ``f(λ) = λ/(λ+z)`` by stochastic Lanczos quadrature: ``n`` times the mean
    over runs of ``Σ_k τ_k² f(θ_k)``."""
    nodes, weights = density.raw_eigenvalues.double(), density.raw_weights.double()
    runs = [effective_dimension(nodes[r], z, weights[r]) for r in range(nodes.shape[0])]
    return n * sum(runs) / len(runs)


def measure(model: nn.Module, batches: Sequence[Batch], *, top_k: int = 5, lanczos_steps: int | None = None,
            trace_samples: int = 30, trace_method: str = "hutch++", density_runs: int = 0,
            density_steps: int = 30, z: float | None = None, seed: int = 0, progress: Any = None) -> Curvature:
    """Every curvature measure of the module docstring for ``model`` on ``batches``.

    ``z`` (the effective dimension's scale): default ``λ_max / 100``. ``density_runs=0``
    skips the spectral density (each run costs ``density_steps`` products).
    """
    model.eval()
    with double_backward_attention():
        op = hessian_operator(model, batches, progress=progress)
        n = op.size
        steps = min(lanczos_steps or max(2 * top_k, top_k + 10), n)
        eig = lanczos(op, k=min(top_k, n), max_iter=steps, which="LA", seed=seed, reorthogonalize=True)
        if trace_method == "hutch++":
            tr = hutch_plus_plus(op, num_matvecs=max(3, trace_samples), seed=seed)
        else:
            tr = hutchinson(op, num_samples=trace_samples, seed=seed)
        top = [float(x) for x in eig.eigenvalues]
        zz = float(z) if z is not None else max(max(top), 1e-12) / 100
        out = Curvature(
            parameters=n, batches=len(batches), loss=_mean_loss(model, batches),
            top_eigenvalues=top, top_residuals=[float(r) for r in eig.residuals], trace=float(tr.estimate),
            trace_stderr=float(tr.stderr), trace_method=trace_method, z=zz,
            effective_dimension_top_k=effective_dimension(eig.eigenvalues, zz),
        )
        if density_runs > 0:
            dens = spectral_density(op, num_runs=density_runs, lanczos_steps=min(density_steps, n),
                                    num_grid_points=400, seed=seed)
            out.effective_dimension_density = slq_effective_dimension(dens, n, zz)
            out.density_grid, out.density = [float(x) for x in dens.grid], [float(x) for x in dens.density]
    out.hvps = int(op.products)  # type: ignore[attr-defined]
    return out
