"""Per-row cross-entropy (and entropy) of ``[N, V]`` logits, chunk by chunk, with its own backward.

``F.log_softmax(logits.float())`` followed by a gather makes autograd keep the full float32
``[N, V]`` log-probabilities for the backward, and the backward writes two more ``[N, V]``
float32 tensors (the gather's scattered gradient and the log-softmax's). For a small
language model that is the largest activation of the step. :class:`ChunkedNLL` keeps only
what the gradient needs: the logits themselves (saved, not copied), the labels and the
``[N]`` float32 log-sum-exp. Its backward rebuilds the softmax of one chunk of rows at a time
from those and writes it straight into the one gradient tensor, so besides that gradient only
chunk-sized temporaries exist.

The same pass can also give the predictive entropy (no gradient), so evaluation and training
that wants the entropy read the logits once.

Evaluation goes one step further (:func:`chunked_head_nll`): it is given the hidden states
and the output head instead of the logits, computes the logits of one chunk of rows at a
time into a reused buffer and scores them there, so the ``[N, V]`` logits never exist.

Math is in float32 per chunk whatever the logits' dtype (float64 stays float64, which is what
``torch.autograd.gradcheck`` needs).
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from zoo.metrics.fused import CHUNK_ELEMENTS as FUSED_CHUNK_ELEMENTS
from zoo.metrics.fused import fused_base2_scores
from zoo.metrics.fused import usable as fused_usable

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)

#: elements of ``[N, V]`` per chunk, by device type: on CPU a chunk's float32 temporaries
#: (4 MB) stay in cache; on accelerators bigger chunks mean fewer kernel launches
CHUNK_ELEMENTS = {"cpu": 2**20, "cuda": 2**24}


def default_chunk_size(logits: Tensor) -> int:
    """Rows per chunk: about :data:`CHUNK_ELEMENTS` elements on the logits' device."""
    return rows_per_chunk(logits.shape[-1], logits.device)


def rows_per_chunk(vocab: int, device: torch.device) -> int:
    """Rows of ``vocab`` logits that make about :data:`CHUNK_ELEMENTS` elements on ``device``."""
    per_chunk = CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cpu"])
    return max(1, per_chunk // max(vocab, 1))


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32 and narrower floats, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _in_math_dtype(x: Tensor, buf: Tensor) -> Tensor:
    """``x`` itself when it already has ``buf``'s dtype, else ``x`` converted into ``buf``.

    Converting first and then working in float32 is about 2x faster on CPU than letting each
    mixed bf16/float32 operation convert on the fly.
    """
    return x if x.dtype == buf.dtype else buf.copy_(x)


_scratch = threading.local()


def _chunk_buffers(rows: int, vocab: int, dtype: torch.dtype, device: torch.device,
                   count: int) -> list[Tensor]:
    """``count`` scratch buffers ``[rows, vocab]``. On CPU they are kept per thread and
    reused from call to call: fresh megabytes-large tensors cost the CPU page faults on first
    touch every time (about 8 ms per 2048 x 4096 evaluation batch on a 2-core machine, a tenth
    of a small model's forward). Other devices' caching allocators reuse memory already."""
    if device.type != "cpu":
        return [torch.empty(rows, vocab, dtype=dtype, device=device) for _ in range(count)]
    cache = _scratch.__dict__.setdefault("buffers", {})
    key = (dtype, vocab, torch.is_inference_mode_enabled())  # inference tensors are unusable outside it
    kept = cache.get(key)
    if kept is None or len(kept) < count or kept[0].shape[0] < rows:
        kept = cache[key] = [torch.empty(rows, vocab, dtype=dtype) for _ in range(count)]
    return [buf[:rows] for buf in kept[:count]]


def _score_chunk(x: Tensor, labels: Tensor, shifted_buf: Tensor, probs_buf: Tensor | None,
                 lse: Tensor, nll: Tensor, entropy: Tensor | None) -> None:
    """Write the log-sum-exp, the NLL and (into ``entropy``, unless ``None``) the entropy of
    each row of the chunk ``x`` ``[R, V]``, in the buffers' dtype; ``shifted_buf`` (and
    ``probs_buf`` for the entropy) are scratch of at least ``R`` rows, reused chunk to chunk.

    The exponentials are taken in base 2, ``2^((x - max) log2 e)``: on CPU ``exp2`` is about
    twice as fast as ``exp``, and the exponentials are most of this function's time. The
    scaling and the shift are one fused ``add``; the values agree with base ``e`` to float32
    rounding."""
    rows = x.shape[0]
    picked = x.gather(1, labels[:, None]).squeeze(1)
    x = _in_math_dtype(x, shifted_buf[:rows])
    top = x.amax(-1, keepdim=True)
    # (x - max) * log2(e) <= 0, in one pass
    shifted = torch.add(top * -LOG2E, x, alpha=LOG2E, out=shifted_buf[:rows])
    if probs_buf is None:
        exp = shifted.exp2_()
    else:
        exp = torch.exp2(shifted, out=probs_buf[:rows])
    total = exp.sum(-1)
    log_total = total.log()
    torch.add(top.squeeze(1), log_total, out=lse)
    torch.sub(lse, picked, out=nll)
    if entropy is not None:
        # H = ln Z - sum_v p_v (x_v - max) = ln Z - ln 2 * E_p[shifted]: both terms >= 0, no cancellation
        # in place (no third buffer); nansum: a -inf logit gives 0 * -inf = NaN, and 0 log 0 is 0
        expected = exp.mul_(shifted).nansum(-1).div_(total).mul_(LN2)
        torch.sub(log_total, expected, out=entropy)


class ChunkedNLL(torch.autograd.Function):
    """``nll_i = logsumexp(x_i) - x_i[label_i]`` per row of ``[N, V]`` logits, chunk by chunk.

    ``apply(logits, labels, chunk_size, with_entropy)`` returns ``(nll, entropy)``: ``[N]``
    NLL in nats (differentiable with respect to ``logits``, for any upstream gradient per row)
    and, with ``with_entropy``, the ``[N]`` entropy ``H_i = lse_i - sum_v p_iv x_iv`` of each
    row's softmax (not differentiable), else ``None``. ``labels`` must be in range for every
    row: the caller substitutes a valid index for unscored rows and zeroes their NLL.
    ``-inf`` logits (masked vocabulary entries) are fine: they get probability and gradient 0.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: Tensor, labels: Tensor, chunk_size: int, with_entropy: bool
    ) -> tuple[Tensor, Tensor | None]:
        n, vocab = logits.shape
        dtype = _math_dtype(logits.dtype)
        lse = torch.empty(n, dtype=dtype, device=logits.device)
        nll = torch.empty_like(lse)
        entropy = torch.empty_like(lse) if with_entropy else None
        # reused per chunk (and call), so the loop does not allocate 4 MB blocks over and over
        buffers = _chunk_buffers(min(chunk_size, n), vocab, dtype, logits.device, 2 if with_entropy else 1)
        shifted_buf, probs_buf = buffers[0], (buffers[1] if with_entropy else None)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            _score_chunk(logits[start:stop], labels[start:stop], shifted_buf, probs_buf,
                         lse[start:stop], nll[start:stop], None if entropy is None else entropy[start:stop])
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk_size = chunk_size
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return nll, entropy

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_nll: Tensor, grad_entropy: Tensor | None
    ) -> tuple[Tensor, None, None, None]:
        """``d nll_i / d x_iv = softmax(x_i)_v - [v == label_i]``, times the row's upstream gradient."""
        logits, labels, lse = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        grad = torch.empty_like(logits)
        # float32 logits: the softmax is built in the gradient's own memory, no temporary
        work = None
        if logits.dtype != lse.dtype:
            work = torch.empty(min(chunk_size, len(lse)), logits.shape[1], dtype=lse.dtype, device=logits.device)
        minus_one = torch.full((1, 1), -1.0, dtype=lse.dtype, device=logits.device)
        for start in range(0, logits.shape[0], chunk_size):
            stop = min(start + chunk_size, logits.shape[0])
            out = grad[start:stop] if work is None else work[: stop - start]
            x = _in_math_dtype(logits[start:stop], out)
            probs = torch.add(lse[start:stop, None] * -LOG2E, x, alpha=LOG2E, out=out).exp2_()  # exp(x - lse)
            probs.scatter_add_(1, labels[start:stop, None], minus_one.expand(stop - start, 1))
            probs.mul_(grad_nll[start:stop, None])
            if work is not None:
                grad[start:stop].copy_(probs)
        return grad, None, None, None


def chunked_nll(
    logits: Tensor, labels: Tensor, chunk_size: int | None = None, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Per-row NLL (differentiable) and optionally entropy of ``[N, V]`` logits; see :class:`ChunkedNLL`.

    Args:
        logits: ``[N, V]`` logits, any float dtype.
        labels: ``[N]`` int64 target ids, each in ``[0, V)``.
        chunk_size: rows per chunk (default :func:`default_chunk_size`); the values do not
            depend on it beyond float rounding (each row is reduced on its own).
        with_entropy: also return the per-row entropy in nats (detached).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [N, V] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    chunk_size = default_chunk_size(logits) if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    return ChunkedNLL.apply(logits, labels, chunk_size, with_entropy)


@torch.no_grad()
def chunked_head_nll(
    hidden: Tensor, head: nn.Module, labels: Tensor, chunk_size: int | None = None, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Per-row NLL and optionally entropy of ``head(hidden)``, without its ``[N, V]`` logits.

    The head (a row-wise module, ``[R, d] -> [R, V]``: a model's
    :class:`~zoo.models.base.OutputHead`) runs on ``chunk_size`` rows at a time, and each
    chunk of logits is scored while it is still in cache, the same math as
    :class:`ChunkedNLL`'s forward. Evaluation only: nothing is differentiable.

    Args:
        hidden: ``[N, d]`` hidden states, the head's input.
        head: the module that turns them into logits.
        labels: ``[N]`` int64 target ids, each in ``[0, V)``.
        chunk_size: rows per chunk (default: :data:`zoo.metrics.fused.CHUNK_ELEMENTS` elements
            where the compiled kernel scores them, else :func:`rows_per_chunk` of the head's width).
        with_entropy: also return the per-row entropy in nats.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"need hidden [N, d] and labels [N], got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    vocab = getattr(head, "out_features", None) or head(hidden[:1]).shape[-1]
    fused = fused_usable(hidden.device, _math_dtype(hidden.dtype))
    if chunk_size is None:  # the compiled kernel takes bigger chunks than the eager passes
        chunk_size = max(1, FUSED_CHUNK_ELEMENTS // vocab) if fused else rows_per_chunk(vocab, hidden.device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    n = hidden.shape[0]
    dtype = _math_dtype(hidden.dtype)
    lse = hidden.new_empty(n, dtype=dtype)
    nll, entropy = torch.empty_like(lse), (torch.empty_like(lse) if with_entropy else None)
    if n == 0:
        return nll, entropy
    # a head that writes into a buffer (zoo.models.OutputHead.logits_into) writes each chunk's
    # logits, already times log2(e), into the first one: no [rows, V] tensor is new, and on
    # CPU the chunk is scored in base 2 without a max-shift pass (_score_chunk_base2); the
    # compiled pass needs no second buffer for the exponentials
    logits_into = getattr(head, "logits_into", None)
    base2 = hidden.device.type == "cpu"
    buffers = _chunk_buffers(min(chunk_size, n), vocab, dtype, hidden.device,
                             1 if fused and base2 and logits_into is not None else 2)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        outputs = (lse[start:stop], nll[start:stop], None if entropy is None else entropy[start:stop])
        x = None if logits_into is None else logits_into(hidden[start:stop], buffers[0], LOG2E if base2 else 1.0)
        if x is None:  # another head, or autocast: the head's own forward, natural logits
            logits_into = None
            x = head(hidden[start:stop])
        if logits_into is not None and base2:
            _score_chunk_base2(x, labels[start:stop], buffers[1] if len(buffers) > 1 else None, *outputs)
        else:
            if len(buffers) < 2:  # the head's own forward after all: the eager passes' buffers
                buffers = _chunk_buffers(min(chunk_size, n), vocab, dtype, hidden.device, 2)
            _score_chunk(x, labels[start:stop], buffers[0], buffers[1] if with_entropy else None, *outputs)
    return nll, entropy


def _score_chunk_base2(x2: Tensor, labels: Tensor, probs_buf: Tensor | None,
                       lse: Tensor, nll: Tensor, entropy: Tensor | None) -> None:
    """:func:`_score_chunk` for logits already in base 2 (``x2 = x log2 e``; ``probs_buf``
    scratch for the eager passes, ``None``: a fresh one if they run),
    without the max shift: ``S = sum 2^x2``, ``lse = ln 2 log2 S``, ``nll = lse - x[label]``
    and ``H = ln 2 (log2 S - sum 2^x2 x2 / S)``. It saves two of the chunk's passes (the max
    and the shift); a row whose ``S`` overflows or underflows (a logit above 88, or all below
    -103) is scored again by the shifted :func:`_score_chunk`. Reading whether there is such
    a row is a host sync on an accelerator, so only the CPU takes this path."""
    rows = x2.shape[0]
    fused = fused_base2_scores(x2, labels)
    if fused is not None:  # one compiled pass (zoo.metrics.fused)
        lse.copy_(fused[0])
        nll.copy_(fused[1])
        if entropy is not None:
            entropy.copy_(fused[2])
        total = fused[3]
    else:  # the same math in eager passes, the exponentials in the reused buffer
        picked = x2.gather(1, labels[:, None]).squeeze(1)
        exp = torch.exp2(x2) if probs_buf is None else torch.exp2(x2, out=probs_buf[:rows])
        total = exp.sum(-1)
        log2_total = total.log2()
        torch.mul(log2_total, LN2, out=lse)
        torch.sub(log2_total, picked, out=nll).mul_(LN2)
        if entropy is not None:
            # nansum: a -inf logit gives 0 * -inf = NaN, and 0 log 0 is 0
            torch.sub(log2_total, exp.mul_(x2).nansum(-1).div_(total), out=entropy).mul_(LN2)
    bad = ~(torch.isfinite(total) & (total > 0))
    if bad.any():
        idx = bad.nonzero().squeeze(1)
        x = x2.index_select(0, idx).div_(LOG2E)  # back to natural logits (exp is used up)
        vocab = x.shape[1]
        scratch = [torch.empty(len(idx), vocab, dtype=x.dtype, device=x.device) for _ in range(2)]
        fixed = [torch.empty(len(idx), dtype=x.dtype, device=x.device) for _ in range(3)]
        _score_chunk(x, labels.index_select(0, idx), scratch[0], scratch[1] if entropy is not None else None,
                     fixed[0], fixed[1], fixed[2] if entropy is not None else None)
        lse[idx], nll[idx] = fixed[0], fixed[1]
        if entropy is not None:
            entropy[idx] = fixed[2]
