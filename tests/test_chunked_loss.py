"""zoo.metrics.chunked (the chunked NLL/entropy Function) against the unfused float32 log-softmax,
and what it keeps and allocates (zoo.allocations)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.allocations import TensorAllocations
from zoo.metrics import token_stats
from zoo.metrics.chunked import chunked_nll
from zoo.objectives import entropy_aware_loss

N, V = 45, 50
CHUNKS = (1, 7, N, None)  # 7 does not divide 45; None: the default (all rows in one chunk here)


def _case(dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Logits with masked (-inf) vocabulary entries, labels, and per-row upstream gradients,
    some of them zero."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, V, generator=gen) * 4
    logits[2, :10] = -float("inf")
    logits[5, 3] = -float("inf")
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[2] = 10
    upstream = torch.randn(N, generator=gen)
    upstream[::4] = 0.0
    return logits.to(dtype), labels, upstream


def _reference(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """NLL and entropy from one full float32 log-softmax (the path token_stats used to take)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    return -logp.gather(1, labels[:, None]).squeeze(1), entropy.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_values_and_gradients_match_the_log_softmax(dtype: torch.dtype, chunk: int | None) -> None:
    logits, labels, upstream = _case(dtype)
    ours = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)

    nll, entropy = chunked_nll(ours, labels, chunk, with_entropy=True)
    ref_nll, ref_entropy = _reference(theirs, labels)
    assert nll.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(nll, ref_nll, rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(entropy, ref_entropy, rtol=1e-6, atol=2e-6)
    assert not entropy.requires_grad

    (nll * upstream).sum().backward()
    (ref_nll * upstream).sum().backward()
    assert ours.grad.dtype == dtype and torch.isfinite(ours.grad).all()
    tol = {} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}  # bf16: one rounding step
    torch.testing.assert_close(ours.grad, theirs.grad, **tol)
    assert (ours.grad[::4] == 0).all()  # rows with a zero upstream gradient
    assert (ours.grad[2, :10] == 0).all()  # masked entries


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.randint(0, 6, (9,), generator=gen)
    assert torch.autograd.gradcheck(lambda x: chunked_nll(x, labels, chunk_size=4)[0], (logits,))


def test_token_stats_per_token_gradients_unscored_rows_and_empty_batch() -> None:
    logits, labels, _ = _case(torch.float32, seed=2)
    logits, labels = logits.reshape(5, 9, V), labels.reshape(5, 9)
    labels[:, ::3] = -100
    nbytes = torch.ones_like(labels)
    estimate = torch.rand(5, 9) * 3  # per-token entropy estimates, as entropy_l1 trains on
    valid = labels.flatten() != -100

    for compact in (False, True):
        ours = logits.clone().requires_grad_(True)
        theirs = logits.clone().requires_grad_(True)
        stats = token_stats(ours, labels, nbytes, compact=compact, chunk_size=4)
        loss = entropy_aware_loss(stats.nll, stats.valid, estimate.flatten()[valid] if compact else estimate)
        loss.backward()
        per_token = F.cross_entropy(theirs.flatten(0, 1), labels.flatten(), reduction="none")
        entropy_aware_loss(per_token, valid, estimate).backward()
        torch.testing.assert_close(ours.grad, theirs.grad)
        assert (ours.grad.flatten(0, 1)[~valid] == 0).all()
        expected_nll = per_token.detach()[valid] if compact else per_token.detach()
        torch.testing.assert_close(stats.nll, expected_nll)
        assert compact or (stats.entropy[~valid] == 0).all()

    nothing = torch.full_like(labels, -100)
    empty_logits = logits.clone().requires_grad_(True)
    stats = token_stats(empty_logits, nothing, nbytes)
    assert stats.loss.item() == 0.0
    stats.loss.backward()
    assert (empty_logits.grad == 0).all()


def test_saves_only_logits_labels_and_lse() -> None:
    logits, labels, _ = _case(torch.bfloat16)
    logits.requires_grad_(True)
    saved: list[Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        nll, _ = chunked_nll(logits, labels, chunk_size=8)
    assert len(saved) == 3
    kept, kept_labels, lse = saved
    assert kept.data_ptr() == logits.data_ptr() and kept.dtype == torch.bfloat16  # not a copy
    assert kept_labels is labels
    assert lse.shape == (N,) and lse.dtype == torch.float32

    # and through token_stats: the only saved [N, V] tensor is the logits themselves
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        token_stats(logits.reshape(5, 9, V), labels.reshape(5, 9), torch.ones(5, 9, dtype=torch.long))
    big = [t for t in saved if t.numel() >= N * V]
    assert big and all(t.data_ptr() == logits.data_ptr() for t in big)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_allocates_the_gradient_and_chunks_only(dtype: torch.dtype) -> None:
    rows, vocab, chunk = 256, 1024, 32
    full_f32 = rows * vocab * 4
    grad_bytes = rows * vocab * torch.empty((), dtype=dtype).element_size()
    chunk_f32 = chunk * vocab * 4
    logits = torch.randn(rows, vocab).to(dtype)
    labels = torch.randint(0, vocab, (rows,))

    def peaks(nll_fn) -> tuple[int, int]:
        leaf = logits.clone().requires_grad_(True)
        with TensorAllocations() as forward:
            loss = nll_fn(leaf).mean()
        with TensorAllocations() as backward:
            loss.backward()
        return forward.peak, backward.peak

    forward, backward = peaks(lambda x: chunked_nll(x, labels, chunk)[0])
    assert forward <= 2 * chunk_f32  # chunk buffers, no [N, V] tensor
    assert grad_bytes <= backward <= grad_bytes + 2 * chunk_f32
    # the unfused path, measured the same way, holds and writes full float32 [N, V] tensors
    old_forward, old_backward = peaks(lambda x: -F.log_softmax(x.float(), -1).gather(1, labels[:, None]))
    assert old_forward >= full_f32 and old_backward >= grad_bytes + full_f32


def test_argument_checks() -> None:
    logits, labels, _ = _case(torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_nll(logits, labels, chunk_size=0)
    with pytest.raises(ValueError, match="labels"):
        chunked_nll(logits, labels[:-1])
