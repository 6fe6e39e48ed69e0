"""The entropy toolkit: how much information each token carries, training
that approaches but does not undercut it, and the entropy of weights and data.

* :mod:`zoo.entropy.estimate` — per-token chain-rule estimates with a trained (EACD) model,
  batched; ``python -m zoo.entropy estimate`` writes them aligned with the token cache.
* :mod:`zoo.entropy.regressor` — the second-order estimator (a small causal regressor).
* :mod:`zoo.entropy.data` — batches that carry the estimates (``entropy``), document budgets.
* :mod:`zoo.objectives` — the entropy-aware training losses; :mod:`zoo.metrics.entropy_gap` — the
  ``EntropyGap`` metric (logged by :class:`zoo.monitors.EntropyGapMonitor`).
* :mod:`zoo.entropy.weights` — weight entropy per layer over training (callback + plot).
* :mod:`zoo.data.sources.markov` — a synthetic source with an exactly known entropy rate.
* :mod:`zoo.diversity` — data diversity of corpora (``python -m zoo.diversity``).
"""

from zoo.entropy.estimate import chain_rule_estimates, estimate_split, naive_estimates, summarize
from zoo.entropy.weights import WeightEntropy, gaussian_entropy, histogram_entropy, weight_entropy

__all__ = [
    "WeightEntropy",
    "chain_rule_estimates",
    "estimate_split",
    "gaussian_entropy",
    "histogram_entropy",
    "naive_estimates",
    "summarize",
    "weight_entropy",
]
