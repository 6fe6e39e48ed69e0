"""The matrix (Rényi-α) entropy of a set of embeddings: how many directions they spread over.

For ``N`` embeddings ``x_1 .. x_N`` (rows of ``X`` ``[N, d]``), each row is scaled to unit
L2 norm (``z_i = x_i / |x_i|``), and the Gram matrix ``K = Z Zᵀ / N`` (``[N, N]``, trace 1,
positive semi-definite: a density matrix) has eigenvalues ``λ_i >= 0`` summing to 1. Its
Rényi entropy of order α is

    S_α = log2(Σ λ_i^α) / (1 - α)        (α = 1: the von Neumann limit  -Σ λ_i log2 λ_i)

in bits. ``S_α`` is 0 when every embedding points the same way and ``log2 r`` when they
spread evenly over ``r`` orthogonal directions (``r <= min(N, d)``), so ``2^S_α`` is an
effective rank. ``K``'s non-zero eigenvalues are those of ``Zᵀ Z / N`` (``[d, d]``), which
is what is decomposed (cheap for N >> d). ``kind="covariance"`` centres the unit rows first
and rescales to trace 1 (the spread around the mean direction instead of around 0).

α = 0 counts the non-zero eigenvalues (``log2`` of the rank), α → ∞ is ``-log2 λ_max``; the
α → 1 limit is continuous (:func:`renyi_entropy` switches to the von Neumann form near 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KINDS = ("gram", "covariance")
#: eigenvalues below this fraction of the largest are rounding noise (count as 0)
RELATIVE_EPS = 1e-12


def density_spectrum(x: Tensor, kind: str = "gram") -> Tensor:
    """Eigenvalues (float64, descending, >= 0, sum 1) of the trace-1 matrix of the rows of
    ``x`` ``[N, d]`` (any leading dims are flattened into N): the Gram matrix of the
    L2-normalised rows, or (``kind="covariance"``) their covariance.

    Raises:
        ValueError: for an unknown ``kind``, fewer than 1 row, or rows that are all zero.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    z = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
    if z.shape[0] < 1:
        raise ValueError("no embeddings to measure")
    norms = z.norm(dim=1, keepdim=True)
    z = z[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
    if z.shape[0] == 0:
        raise ValueError("every embedding is zero")
    if kind == "covariance":
        z = z - z.mean(dim=0, keepdim=True)
    gram = z.T @ z  # [d, d]: the same non-zero spectrum as Z Zᵀ
    trace = torch.diagonal(gram).sum()
    if trace <= 0:  # every unit row identical: the covariance is 0, a single direction
        return torch.ones(1, dtype=torch.float64)
    eig = torch.linalg.eigvalsh(gram / trace).flip(0).clamp(min=0)
    eig = eig[eig > RELATIVE_EPS * eig[0]]
    return eig / eig.sum()


def renyi_entropy(spectrum: Tensor, alpha: float = 1.0) -> float:
    """``S_α`` in bits of a probability vector (eigenvalues summing to 1).

    ``alpha`` >= 0; within 1e-6 of 1 the von Neumann form ``-Σ λ log2 λ`` (its limit),
    ``math.inf`` gives ``-log2 max λ``."""
    if alpha < 0 or math.isnan(alpha):
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    p = spectrum.to(torch.float64)
    p = p[p > 0]
    if math.isinf(alpha):
        return float(-torch.log2(p.max()))
    if abs(alpha - 1.0) < 1e-6:
        return float(-(p * torch.log2(p)).sum())
    if alpha == 0:
        return math.log2(p.numel())
    # log Σ p^α = logsumexp(α log p), stable for large α
    return float(torch.logsumexp(alpha * torch.log(p), 0) / math.log(2) / (1.0 - alpha))


def matrix_entropy(x: Tensor, alpha: float = 1.0, kind: str = "gram") -> float:
    """``S_α`` in bits of the embeddings ``x`` ``[N, d]`` (module docstring)."""
    return renyi_entropy(density_spectrum(x, kind), alpha)


def effective_rank(x: Tensor, alpha: float = 1.0, kind: str = "gram") -> float:
    """``2^S_α``: the number of equally-filled orthogonal directions with the same entropy."""
    return 2.0 ** matrix_entropy(x, alpha, kind)
