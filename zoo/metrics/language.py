"""Per-token statistics of a language model and the torchmetrics that aggregate them.

Everything here starts from ONE chunked float32 pass over the model's logits
(:func:`token_stats`, built on :func:`zoo.metrics.chunked.chunked_nll`): the training loss,
the per-token negative log-likelihood (NLL) the metrics accumulate, and the predictive entropy
of each next-token distribution. Reading the logits once, in cache-sized chunks of rows and
without materialising ``[N, V]`` float32 log-probabilities, matters because
``[batch, time, vocab]`` is the largest activation of a small language model; a metric that
recomputes its own softmax (as ``torchmetrics.text.Perplexity`` does) doubles that memory and
time.

Shapes and the padding convention
---------------------------------
Labels are ``-100`` where a position is not scored (pads, the injected side-information
token of an EACD). :func:`token_stats` keeps the flattened ``B*T`` positions by default and
marks the scored ones in ``TokenStats.valid``; unscored positions carry zeros in ``nll``,
``entropy`` and ``target_bytes``. That keeps shapes static, so the hot path never waits for
the accelerator (selecting the valid rows by a boolean mask needs the host to learn how many
there are). ``compact=True`` selects the valid rows first instead, which saves the
pass over pads at the price of that one host sync.

Units
-----
NLL and entropy are accumulated in nats. Bits per byte (BPB) is
``sum(NLL) / (ln 2 * sum(bytes))`` where ``bytes`` is the number of UTF-8 bytes each target
token decodes to, which makes models with different tokenizers comparable.

Distributed training
--------------------
Every metric keeps sums (nats in float64, counts in int64) reduced with ``"sum"`` across
ranks, so ``compute()`` on any rank gives the value over the union of all ranks' data. Log
the Metric object itself (``self.log(name, metric)``); never read the raw states in a hook,
since they are per rank until ``compute()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from zoo.data.layouts import IGNORE_INDEX
from zoo.metrics.chunked import chunked_head_nll, chunked_nll

"""Label value of positions that are not scored (the ``F.cross_entropy`` default)."""

LN2 = math.log(2.0)

ENTROPY_UNITS = ("token", "byte")


@dataclass
class TokenStats:
    """Per-token statistics of one batch, all derived from a single pass over the logits.

    Attributes:
        loss: scalar mean NLL in nats over the scored tokens; differentiable (the training
            loss). ``0`` (not NaN) for a batch without scored tokens, so such a batch cannot
            poison the weights.
        nll: ``[N]`` float32 NLL in nats per position; differentiable, so per-token losses
            (e.g. the entropy-aware ``|CE_i - H_i|``) can be built from it. Metrics detach it.
            Zero at unscored positions.
        entropy: ``[N]`` float32 entropy in nats of each position's predicted next-token
            distribution (detached), zero at unscored positions; ``None`` when not requested.
        target_bytes: ``[N]`` int64 UTF-8 bytes each target token decodes to; zero at
            unscored positions.
        valid: ``[N]`` bool, True at scored positions. All True when ``compact=True``.
        n_tokens: int64 scalar tensor, the number of scored tokens (a tensor, not an int,
            so that reading it does not force a host sync).
    """

    loss: Tensor
    nll: Tensor
    entropy: Tensor | None
    target_bytes: Tensor
    valid: Tensor
    n_tokens: Tensor
    _totals: BatchTotals | None = field(default=None, init=False, repr=False, compare=False)

    def totals(self) -> BatchTotals:
        """The batch's sums, computed once however many metrics read them: every metric of
        :func:`language_metrics` adds a few of the same four numbers, and summing ``[N]``
        once instead of once per metric saves most of a metric update's small operations."""
        if self._totals is None:
            self._totals = BatchTotals(
                nll=self.nll.detach().sum(dtype=torch.float64),  # unscored entries are zero
                target_bytes=self.target_bytes.sum(dtype=torch.int64),
                tokens=self.n_tokens.to(torch.int64),
                entropy=None if self.entropy is None else self.entropy.sum(dtype=torch.float64),
            )
        return self._totals


@dataclass(frozen=True)
class BatchTotals:
    """Sums over the scored tokens of one batch (:meth:`TokenStats.totals`): NLL and entropy
    in nats (float64), target bytes and tokens (int64); 0-dim tensors on the batch's device."""

    nll: Tensor
    target_bytes: Tensor
    tokens: Tensor
    entropy: Tensor | None


def token_stats(
    logits: Tensor,
    labels: Tensor,
    target_bytes: Tensor,
    with_entropy: bool = True,
    chunk_size: int | None = None,
    compact: bool = False,
) -> TokenStats:
    """Compute loss, per-token NLL, predictive entropy and byte counts in one chunked pass.

    Args:
        logits: ``[B, T, V]`` next-token logits, any float dtype; bf16/fp16 are upcast to
            float32 chunk by chunk so the loss and metrics do not lose precision. The
            backward keeps only the logits themselves and an ``[N]`` log-sum-exp, not
            ``[N, V]`` float32 log-probabilities (:class:`zoo.metrics.chunked.ChunkedNLL`).
        labels: ``[B, T]`` target token ids aligned with ``logits`` (already shifted), with
            ``-100`` at positions that are not scored.
        target_bytes: ``[B, T]`` integer count of UTF-8 bytes each target token decodes to;
            ignored where ``labels == -100``.
        with_entropy: also compute the predictive entropy of every scored position (no
            gradient), in the same pass over each chunk as the NLL.
        chunk_size: rows of ``[N, V]`` processed at once, forward and backward, bounding the
            temporary memory to a few ``chunk_size * V`` floats. Default: about
            :data:`zoo.metrics.chunked.CHUNK_ELEMENTS` elements per chunk on the logits'
            device (2^20 on CPU: 4 MB chunks stay in cache); each row is reduced on its own,
            so the values do not depend on the chunking beyond float rounding.
        compact: drop unscored positions first (saves work when many
            positions are pads) at the cost of one device-to-host sync. Default False keeps
            this function free of host syncs.

    Returns:
        A :class:`TokenStats`. ``loss`` matches ``F.cross_entropy(logits.flatten(0, 1),
        labels.flatten(), ignore_index=-100)`` (float32), gradients included.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, time, vocab], got shape {tuple(logits.shape)}")
    return _token_stats(logits, labels, target_bytes, compact,
                        lambda rows, targets: chunked_nll(rows, targets, chunk_size, with_entropy))


def token_stats_from_hidden(
    hidden: Tensor,
    head: nn.Module,
    labels: Tensor,
    target_bytes: Tensor,
    with_entropy: bool = True,
    chunk_size: int | None = None,
    compact: bool = False,
) -> TokenStats:
    """:func:`token_stats` of the logits ``head(hidden)``, without materialising them.

    The head runs on a chunk of rows at a time and each chunk is scored while in cache
    (:func:`zoo.metrics.chunked.chunked_head_nll`); the values equal :func:`token_stats` of
    the full logits to float32 rounding. For evaluation: nothing is differentiable, so
    ``loss`` and ``nll`` carry no gradient. ``hidden`` is ``[B, T, d]``, what a model's
    forward returns under :meth:`zoo.models.LanguageModel.deferred_head`; ``head`` is the
    head that yields; the other arguments are :func:`token_stats`'s.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden states must be [batch, time, width], got shape {tuple(hidden.shape)}")
    return _token_stats(hidden, labels, target_bytes, compact,
                        lambda rows, targets: chunked_head_nll(rows, head, targets, chunk_size, with_entropy))


def _token_stats(
    rows: Tensor,
    labels: Tensor,
    target_bytes: Tensor,
    compact: bool,
    score: Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]],
) -> TokenStats:
    """The shared part of :func:`token_stats` and :func:`token_stats_from_hidden`: check the
    shapes, flatten ``rows`` ``[B, T, width]`` to ``[B*T, width]``, drop unscored rows if
    ``compact``, and ``score(rows, in-range labels) -> (nll, entropy)``."""
    if labels.shape != rows.shape[:2]:
        raise ValueError(
            f"labels must be [batch, time] = {tuple(rows.shape[:2])}, got {tuple(labels.shape)}"
        )
    if target_bytes.shape != labels.shape:
        raise ValueError(
            f"target_bytes must have the shape of labels {tuple(labels.shape)}, "
            f"got {tuple(target_bytes.shape)}"
        )
    flat_rows = rows.reshape(-1, rows.shape[-1])
    flat_labels = labels.reshape(-1)
    flat_bytes = target_bytes.reshape(-1).to(torch.int64)
    valid = flat_labels != IGNORE_INDEX

    if compact:
        # Boolean indexing: the host must learn how many rows survive (one sync).
        keep = valid.nonzero().squeeze(-1)
        flat_rows = flat_rows.index_select(0, keep)
        flat_labels = flat_labels.index_select(0, keep)
        flat_bytes = flat_bytes.index_select(0, keep)
        valid = torch.ones_like(flat_labels, dtype=torch.bool)

    # Unscored labels (-100) are replaced by a harmless in-range index and their NLL zeroed
    # afterwards; torch.where gives those rows a zero gradient.
    safe_labels = torch.where(valid, flat_labels, torch.zeros_like(flat_labels))
    # one chunked pass: NLL (differentiable, from logits) and the entropy
    nll, entropy = score(flat_rows, safe_labels)
    nll = torch.where(valid, nll, torch.zeros_like(nll))

    n_tokens = valid.sum()
    loss = nll.sum() / n_tokens.clamp_min(1)

    if entropy is not None:
        entropy = torch.where(valid, entropy, torch.zeros_like(entropy))

    return TokenStats(
        loss=loss,
        nll=nll,
        entropy=entropy,
        target_bytes=torch.where(valid, flat_bytes, torch.zeros_like(flat_bytes)),
        valid=valid,
        n_tokens=n_tokens,
    )


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _masked(values: Tensor, mask: Tensor | None) -> Tensor:
    """Detached values with unscored entries zeroed (the metrics never need gradients)."""
    values = values.detach()
    if mask is None:
        return values
    return torch.where(mask, values, torch.zeros_like(values))


def _count(values: Tensor, mask: Tensor | None, n_tokens: int | Tensor | None = None) -> Tensor:
    """Number of scored entries: ``n_tokens`` when given (then ``mask`` must not be),
    else ``mask.sum()``, or all of ``values`` when there is no mask."""
    if n_tokens is not None:
        if mask is not None:
            raise ValueError("give mask or n_tokens, not both: n_tokens counts values already zero outside the scored tokens")
        return torch.as_tensor(n_tokens, dtype=torch.int64, device=values.device)
    if mask is None:
        return torch.tensor(values.numel(), dtype=torch.int64, device=values.device)
    return mask.sum().to(torch.int64)


def add_sums(metric: Metric, **dtypes: torch.dtype) -> None:
    """Register scalar running sums on ``metric`` (float64 for losses, int64 for counts),
    reduced by summing across processes, so ``compute()`` is the value over all ranks."""
    for name, dtype in dtypes.items():
        metric.add_state(name, torch.zeros((), dtype=dtype), dist_reduce_fx="sum")


class TokenMetric(Metric):
    """Base of the zoo's language-model metrics: sum states, DDP-reduced by ``"sum"``.

    Subclasses implement :meth:`update_from_stats` so :func:`update_all` can feed a whole
    collection from one :class:`TokenStats` without knowing which metric wants what.
    """

    full_state_update = False
    is_differentiable = False

    def update_from_stats(self, stats: TokenStats, n_sequences: int | Tensor | None = None) -> None:
        """Update this metric from the statistics of one batch."""
        raise NotImplementedError


class BitsPerByte(TokenMetric):
    """Bits per UTF-8 byte: ``sum(NLL) / (ln 2 * sum(bytes))``, tokenizer-independent.

    A model that receives side information for free (the EACD's compressed vector of
    ``n_p`` numbers of ``b_p`` bits each) must pay for it to give an honest compression
    rate: with ``extra_bits_per_sequence = n_p * b_p`` and ``n_sequences`` passed to
    :meth:`update`, ``compute = (sum(NLL) / ln 2 + extra_bits_per_sequence * n_sequences) /
    sum(bytes)``. With the default ``0.0`` it is plain BPB.

    Args:
        extra_bits_per_sequence: bits charged per sequence for side information (>= 0).
    """

    higher_is_better = False

    nll_sum: Tensor
    bytes_sum: Tensor
    sequences: Tensor

    def __init__(self, extra_bits_per_sequence: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        extra = float(extra_bits_per_sequence)
        if not math.isfinite(extra) or extra < 0:
            raise ValueError(
                "extra_bits_per_sequence must be a finite number of bits >= 0 "
                f"(e.g. n_p * b_p = 64 * 4 = 256), got {extra_bits_per_sequence!r}"
            )
        self.extra_bits_per_sequence = extra
        add_sums(self, nll_sum=torch.float64, bytes_sum=torch.int64, sequences=torch.int64)

    def update(
        self,
        nll: Tensor,
        target_bytes: Tensor,
        mask: Tensor | None = None,
        n_sequences: int | Tensor | None = None,
    ) -> None:
        """Accumulate NLL (nats) and byte counts of the scored tokens.

        Args:
            nll: ``[N]`` per-token NLL in nats.
            target_bytes: ``[N]`` UTF-8 bytes per target token.
            mask: optional ``[N]`` bool of scored tokens (entries outside it are ignored).
            n_sequences: sequences in this batch; required when ``extra_bits_per_sequence``
                is non-zero, so the side-information cost cannot be forgotten silently.
        """
        if nll.shape != target_bytes.shape:
            raise ValueError(
                f"nll {tuple(nll.shape)} and target_bytes {tuple(target_bytes.shape)} differ"
            )
        if n_sequences is None and self.extra_bits_per_sequence != 0.0:
            raise ValueError(
                "BitsPerByte(extra_bits_per_sequence="
                f"{self.extra_bits_per_sequence}) needs n_sequences in update() to charge "
                "the side information"
            )
        self.nll_sum += _masked(nll, mask).sum(dtype=torch.float64)
        self.bytes_sum += _masked(target_bytes, mask).sum(dtype=torch.int64)
        if n_sequences is not None:
            self.sequences += torch.as_tensor(n_sequences, dtype=torch.int64, device=self.device)

    def update_from_stats(self, stats: TokenStats, n_sequences: int | Tensor | None = None) -> None:
        """Update from :func:`token_stats` output, its :meth:`~TokenStats.totals`
        (``n_sequences`` as in :meth:`update`)."""
        totals = stats.totals()
        self.update(totals.nll, totals.target_bytes, n_sequences=n_sequences)

    def compute(self) -> Tensor:
        """Bits per byte (float64), side-information cost included when configured."""
        side = self.extra_bits_per_sequence * self.sequences.to(torch.float64)
        bits = self.nll_sum / LN2 + side
        return bits / self.bytes_sum


class CrossEntropy(TokenMetric):
    """Mean NLL in nats per scored token (the usual LM "loss"), accumulated exactly."""

    higher_is_better = False

    nll_sum: Tensor
    tokens: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        add_sums(self, nll_sum=torch.float64, tokens=torch.int64)

    def update(self, nll: Tensor, mask: Tensor | None = None, n_tokens: int | Tensor | None = None) -> None:
        """Accumulate ``[N]`` per-token NLL in nats (entries outside ``mask`` ignored).

        ``n_tokens``: the number of scored tokens, for ``nll`` that is already zero outside
        them (or already summed); it replaces ``mask``, and the count of ``nll``'s entries."""
        self.nll_sum += _masked(nll, mask).sum(dtype=torch.float64)
        self.tokens += _count(nll, mask, n_tokens)

    def update_from_stats(self, stats: TokenStats, n_sequences: int | Tensor | None = None) -> None:
        """Update from :func:`token_stats` output (its :meth:`~TokenStats.totals`)."""
        totals = stats.totals()
        self.update(totals.nll, n_tokens=totals.tokens)

    def compute(self) -> Tensor:
        """Mean NLL, nats per token (float64)."""
        return self.nll_sum / self.tokens


class Perplexity(CrossEntropy):
    """Perplexity ``exp(mean NLL per token)``, from the NLL the loss already computed.

    Why not ``torchmetrics.text.Perplexity``: it takes ``[B, T, V]`` logits and runs its own
    softmax over them, a second ``[B, T, V]`` tensor on the largest activation of the model.
    This one reuses the per-token NLL of :func:`token_stats` and agrees with it.
    """

    def compute(self) -> Tensor:
        """``exp`` of the mean NLL per token (float64)."""
        return torch.exp(super().compute())


class PredictiveEntropy(TokenMetric):
    """Mean entropy of the model's next-token distribution, in bits per token or per byte.

    Compared with :class:`CrossEntropy` it shows calibration: a model whose predictive
    entropy sits far below its cross-entropy is over-confident. ``unit="byte"`` divides by
    UTF-8 bytes so it can be set beside BPB.

    Args:
        unit: ``"token"`` (bits per scored token) or ``"byte"`` (bits per target byte).
    """

    higher_is_better = None  # neither: it describes the model, it is not a score

    entropy_sum: Tensor
    tokens: Tensor
    bytes_sum: Tensor

    def __init__(self, unit: str = "token", **kwargs) -> None:
        super().__init__(**kwargs)
        if unit not in ENTROPY_UNITS:
            raise ValueError(
                f"unknown entropy unit {unit!r}; allowed: {', '.join(map(repr, ENTROPY_UNITS))}"
            )
        self.unit = unit
        add_sums(self, entropy_sum=torch.float64, tokens=torch.int64, bytes_sum=torch.int64)

    def update(
        self, entropy: Tensor, target_bytes: Tensor | None = None, mask: Tensor | None = None,
        n_tokens: int | Tensor | None = None,
    ) -> None:
        """Accumulate ``[N]`` entropies in nats; ``target_bytes`` is required for ``unit="byte"``.
        ``n_tokens`` as in :meth:`CrossEntropy.update`."""
        if target_bytes is None:
            if self.unit == "byte":
                raise ValueError('PredictiveEntropy(unit="byte") needs target_bytes in update()')
        else:
            if target_bytes.shape != entropy.shape:
                raise ValueError(
                    f"entropy {tuple(entropy.shape)} and target_bytes "
                    f"{tuple(target_bytes.shape)} differ"
                )
            self.bytes_sum += _masked(target_bytes, mask).sum(dtype=torch.int64)
        self.entropy_sum += _masked(entropy, mask).sum(dtype=torch.float64)
        self.tokens += _count(entropy, mask, n_tokens)

    def update_from_stats(self, stats: TokenStats, n_sequences: int | Tensor | None = None) -> None:
        """Update from :func:`token_stats` output (which must have been run with entropy)."""
        if stats.entropy is None:
            raise ValueError(
                "PredictiveEntropy needs TokenStats.entropy: call token_stats(..., with_entropy=True)"
            )
        totals = stats.totals()
        self.update(totals.entropy, totals.target_bytes, n_tokens=totals.tokens)

    def compute(self) -> Tensor:
        """Mean predictive entropy in bits per token or per byte (float64)."""
        denominator = self.tokens if self.unit == "token" else self.bytes_sum
        return self.entropy_sum / LN2 / denominator


# --------------------------------------------------------------------------------------------
# Collections
# --------------------------------------------------------------------------------------------


#: the name of the rate with the side information for free, beside the honest ``bpb``: for
#: the encoder-augmented decoder, BPB as if its stored vector cost nothing
SIDE_INFO_FREE_BPB = "bpb_free_vector"


#: what each metric of :func:`language_metrics` is, for tables and logs (in display order)
METRIC_LABELS: dict[str, str] = {
    "bpb": "bits per byte",
    SIDE_INFO_FREE_BPB: "bits per byte, side information free",
    "ce": "cross-entropy (nats/token)",
    "ppl": "perplexity",
    "entropy": "predictive entropy (bits/token)",
    "entropy_bpb": "predictive entropy (bits/byte)",
}


def language_metrics(
    prefix: str = "",
    side_bits_per_sequence: float = 0.0,
    with_entropy: bool = True,
) -> MetricCollection:
    """The standard metric set of a language model, keyed ``prefix + name``.

    Names: ``bpb``, ``ce`` (nats/token), ``ppl``, and with ``with_entropy`` also
    ``entropy`` (bits/token) and ``entropy_bpb`` (bits/byte). ``bpb`` is always the honest
    rate: for a model given ``side_bits_per_sequence > 0`` bits of side information per
    sequence it charges them, and :data:`SIDE_INFO_FREE_BPB` (``bpb_free_vector``) is the same
    rate with the side information for free.

    Compute groups are off: every metric keeps its own state, so each can be logged on its
    own with ``self.log(name, metric)``. Feed the collection with :func:`update_all`.
    """
    metrics: dict[str, Metric] = {"bpb": BitsPerByte(side_bits_per_sequence)}
    if side_bits_per_sequence:
        metrics[SIDE_INFO_FREE_BPB] = BitsPerByte()
    metrics.update(ce=CrossEntropy(), ppl=Perplexity())
    if with_entropy:
        metrics["entropy"] = PredictiveEntropy("token")
        metrics["entropy_bpb"] = PredictiveEntropy("byte")
    return MetricCollection(metrics, prefix=prefix or None, compute_groups=False)


def update_all(
    metrics: Mapping[str, Metric] | MetricCollection,
    stats: TokenStats,
    n_sequences: int | Tensor | None = None,
) -> None:
    """Update every zoo metric in ``metrics`` from one :class:`TokenStats`.

    ``n_sequences`` (sequences in the batch) is used by :class:`BitsPerByte` metrics that
    charge side information. Raises TypeError for a metric that is not a :class:`TokenMetric`.
    """
    for name, metric in metrics.items():
        if not isinstance(metric, TokenMetric):
            raise TypeError(
                f"metric {name!r} ({type(metric).__name__}) cannot be fed from TokenStats; "
                "update it yourself"
            )
        metric.update_from_stats(stats, n_sequences=n_sequences)
