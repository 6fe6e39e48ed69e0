"""Topic structure of a corpus: k-means topics over sentence embeddings, and their entropy.

Documents are clustered with scikit-learn's k-means on their L2-normalised embeddings (so
Euclidean distance is a monotone function of cosine distance). The number of topics ``k`` is
chosen by a stated rule: the ``k`` in ``2..max_topics`` (and below the number of distinct
documents) with the largest mean silhouette (cosine); when no ``k >= 2`` has a positive
silhouette (one blob, or fewer than 3 distinct documents) the corpus has one topic. The
**topic entropy** is the Shannon entropy in bits of the topic sizes: ``log2 k`` for k equal
topics, 0 for one; ``2^H`` is the effective number of topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zoo.diversity.lexical import shannon_bits
from zoo.diversity.semantic import normalise, require_extra


@dataclass
class Topics:
    """The chosen clustering: ``k``, the entropy of its sizes, its silhouette, and the silhouette of
    every ``k`` tried (the rule's evidence)."""

    k: int
    entropy_bits: float
    silhouette: float
    sizes: list[int]
    labels: np.ndarray
    tried: dict[int, float] = field(default_factory=dict)


def topics(x: np.ndarray, max_topics: int = 20, seed: int = 0) -> Topics:
    """k-means topics of the rows of ``x`` with ``k`` chosen by the silhouette maximum (module docstring)."""
    require_extra("topic entropy")
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = normalise(x)
    n = len(x)
    distinct = len(np.unique(np.round(x, 6), axis=0)) if n else 0
    best = Topics(1, 0.0, 0.0, [n], np.zeros(n, dtype=int))
    for k in range(2, min(max_topics, distinct - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
        if len(set(labels.tolist())) < 2:
            continue
        s = float(silhouette_score(x, labels, metric="cosine"))
        best.tried[k] = s
        if s > best.silhouette:
            sizes = np.bincount(labels, minlength=k).tolist()
            best = Topics(k, shannon_bits(sizes), s, sizes, labels, best.tried)
    return best
