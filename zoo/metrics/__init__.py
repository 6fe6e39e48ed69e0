"""torchmetrics for language models: bits per byte, cross-entropy, perplexity, entropy.

All of them are fed from :func:`token_stats`, which derives the loss and every per-token
statistic from one chunked float32 pass over the logits (:mod:`zoo.metrics.chunked`).
"""

from zoo.metrics.language import (
    ENTROPY_UNITS,
    IGNORE_INDEX,
    METRIC_LABELS,
    SIDE_INFO_FREE_BPB,
    BitsPerByte,
    CrossEntropy,
    Perplexity,
    PredictiveEntropy,
    TokenMetric,
    TokenStats,
    language_metrics,
    token_stats,
    token_stats_from_hidden,
    update_all,
)

__all__ = [
    "ENTROPY_UNITS",
    "IGNORE_INDEX",
    "BitsPerByte",
    "CrossEntropy",
    "Perplexity",
    "PredictiveEntropy",
    "METRIC_LABELS",
    "SIDE_INFO_FREE_BPB",
    "TokenMetric",
    "TokenStats",
    "language_metrics",
    "token_stats",
    "token_stats_from_hidden",
    "update_all",
]
