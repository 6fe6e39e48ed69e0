"""Diverse subset selection: greedily grow the subset whose Vendi score is largest.

Start from the document least similar to all the others (the smallest sum of squared cosine
similarities), then at each step add the candidate that maximises the Vendi score of the
subset with it. Scoring every candidate exactly costs one eigendecomposition each, so each step
first ranks the candidates by the order-2 criterion (the sum of squared cosines to the chosen
set: adding ``x`` to ``S`` makes ``sum K^2`` grow by ``2 sum_{s in S} cos(x, s)^2 + 1``, and
the order-2 Vendi score is ``n^2 / sum K^2``) and scores the best ``shortlist`` of them exactly
(order 1, :func:`~zoo.diversity.semantic.vendi_score`). ``shortlist >= len(x)`` is the exact
greedy. A duplicate of a chosen document has the largest squared cosine there is (1), so it
comes last.
"""

from __future__ import annotations

import numpy as np

from zoo.diversity.semantic import entropy_of_spectrum, normalise


def _vendi_with(chosen: np.ndarray, cov: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Vendi score of the ``chosen`` rows (``cov = chosen^T chosen``) plus each of ``rows``: from the
    Gram matrix while the set is smaller than the dimension, else from the covariance."""
    n = len(chosen)
    out = np.empty(len(rows))
    for i, r in enumerate(rows):
        if n + 1 <= chosen.shape[1]:
            m = np.vstack([chosen, r])
            lam = np.linalg.eigvalsh(m @ m.T / (n + 1))
        else:
            lam = np.linalg.eigvalsh((cov + np.outer(r, r)) / (n + 1))
        lam = np.clip(lam, 0.0, None)
        out[i] = np.exp(entropy_of_spectrum(lam / lam.sum()))
    return out


def greedy_vendi(x: np.ndarray, size: int, shortlist: int = 16) -> list[int]:
    """Indices (in the order chosen) of ``size`` rows of ``x`` picked greedily for the Vendi score."""
    x = normalise(x)
    n = len(x)
    size = min(size, n)
    if size <= 0:
        return []
    sq = np.square(x @ x.T).sum(axis=1) if n <= 4096 else None
    first = int(np.argmin(sq)) if sq is not None else 0
    chosen = [first]
    taken = np.zeros(n, dtype=bool)
    taken[first] = True
    to_set = np.square(x @ x[first])  # sum over the chosen set of cos(x, s)^2, per candidate
    cov = np.outer(x[first], x[first])
    while len(chosen) < size:
        cand = np.flatnonzero(~taken)
        ranked = cand[np.argsort(to_set[cand], kind="stable")[:shortlist]]
        best = int(ranked[int(np.argmax(_vendi_with(x[chosen], cov, x[ranked])))])
        chosen.append(best)
        taken[best] = True
        to_set += np.square(x @ x[best])
        cov += np.outer(x[best], x[best])
    return chosen
