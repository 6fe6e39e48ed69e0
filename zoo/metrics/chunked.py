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

Math is in float32 per chunk whatever the logits' dtype (float64 stays float64, which is what
``torch.autograd.gradcheck`` needs).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

#: elements of ``[N, V]`` per chunk, by device type: on CPU a chunk's float32 temporaries
#: (4 MB) stay in cache; on accelerators bigger chunks mean fewer kernel launches
CHUNK_ELEMENTS = {"cpu": 2**20, "cuda": 2**24}


def default_chunk_size(logits: Tensor) -> int:
    """Rows per chunk: about :data:`CHUNK_ELEMENTS` elements on the logits' device."""
    per_chunk = CHUNK_ELEMENTS.get(logits.device.type, CHUNK_ELEMENTS["cpu"])
    return max(1, per_chunk // max(logits.shape[-1], 1))


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32 and narrower floats, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _in_math_dtype(x: Tensor, buf: Tensor) -> Tensor:
    """``x`` itself when it already has ``buf``'s dtype, else ``x`` converted into ``buf``.

    Converting first and then working in float32 is about 2x faster on CPU than letting each
    mixed bf16/float32 operation convert on the fly.
    """
    return x if x.dtype == buf.dtype else buf.copy_(x)


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
        # reused per chunk, so the loop does not allocate 4 MB blocks over and over
        rows = min(chunk_size, n)
        shifted_buf = torch.empty(rows, vocab, dtype=dtype, device=logits.device)
        probs_buf = torch.empty_like(shifted_buf) if with_entropy else None
        floor = torch.finfo(dtype).min
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            x = logits[start:stop]
            picked = x.gather(1, labels[start:stop, None]).squeeze(1)
            x = _in_math_dtype(x, shifted_buf[: stop - start])
            top = x.amax(-1, keepdim=True)
            shifted = torch.sub(x, top, out=shifted_buf[: stop - start])  # <= 0
            if probs_buf is None:
                exp = shifted.exp_()
            else:
                shifted.clamp_min_(floor)  # -inf -> finite, so that 0 * log 0 below is 0, not NaN
                exp = torch.exp(shifted, out=probs_buf[: stop - start])
            total = exp.sum(-1)
            log_total = total.log()
            torch.add(top.squeeze(1), log_total, out=lse[start:stop])
            torch.sub(lse[start:stop], picked, out=nll[start:stop])
            if entropy is not None:
                # H = log Z - sum_v p_v (x_v - max): both terms >= 0, no cancellation
                expected = exp.mul_(shifted).sum(-1).div_(total)  # in place: no third chunk
                torch.sub(log_total, expected, out=entropy[start:stop])
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
            probs = torch.sub(x, lse[start:stop, None], out=out).exp_()
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
