"""The compiled one-pass scoring kernel (zoo.metrics.fused): it really compiles on this
machine, gives the eager values to float32 rounding, and steps aside where it must."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.allocations import TensorAllocations
from zoo.metrics import fused
from zoo.metrics.chunked import LOG2E, chunked_head_nll
from zoo.models import OutputHead


def _logits(rows: int = 300, vocab: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=gen) * 4, torch.randint(0, vocab, (rows,), generator=gen)


def _reference(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """float64 log-sum-exp, NLL and entropy (nats) of natural logits."""
    x = x.double()
    logp = x.log_softmax(-1)
    lse = x.logsumexp(-1)
    return lse, -logp.gather(1, labels[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


def test_the_kernel_compiles_here_and_matches_float64() -> None:
    x, labels = _logits()
    with torch.inference_mode():
        out = fused.fused_base2_scores(x * LOG2E, labels)
        assert out is not None, "the compiled kernel did not run on this machine"
        for rows in (300, 17, 1):  # other sizes reuse one dynamic graph
            got = fused.fused_base2_scores(x[:rows] * LOG2E, labels[:rows])
            eager = fused.base2_scores(x[:rows] * LOG2E, labels[:rows])
            for value, plain, want in zip(got[:3], eager[:3], _reference(x[:rows], labels[:rows]), strict=True):
                # float32 rounding of values near 20 nats: a few ulp of 16 (1.9e-6 each), as eager
                torch.testing.assert_close(value.double(), want, rtol=0, atol=1.5e-5)
                torch.testing.assert_close(value, plain, rtol=0, atol=1.5e-5)
    assert not fused._failed


def test_chunked_head_nll_gives_the_same_with_and_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(1)
    head = OutputHead(24, 700)
    hidden, labels = torch.randn(1000, 24, generator=gen), torch.randint(0, 700, (1000,), generator=gen)
    calls = []
    with torch.inference_mode():
        fused.fused_base2_scores(*_logits(rows=4))  # compiles it, if not yet
        compiled = fused._compiled
        monkeypatch.setattr(fused, "_compiled", lambda *a: calls.append(1) or compiled(*a))
        fast = chunked_head_nll(hidden, head, labels, chunk_size=128, with_entropy=True)
        assert len(calls) == 8  # every chunk went through the kernel
        monkeypatch.setenv(fused.ENV_SWITCH, "0")
        assert fused.fused_base2_scores(*_logits(rows=4)) is None
        slow = chunked_head_nll(hidden, head, labels, chunk_size=128, with_entropy=True)
        assert len(calls) == 8
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=4e-6)


def test_it_steps_aside_for_float64_and_dispatch_modes() -> None:
    x, labels = _logits(rows=8)
    assert fused.fused_base2_scores(x.double(), labels) is None
    with TensorAllocations():
        assert fused.fused_base2_scores(x, labels) is None


def test_out_of_range_labels_raise_the_eager_error_and_keep_the_kernel() -> None:
    x, labels = _logits(rows=8, vocab=64)
    labels[3] = 64
    head = OutputHead(64, 64)
    with pytest.raises((IndexError, RuntimeError), match="out of bounds|index"):
        chunked_head_nll(x, head, labels)
    assert not fused._failed
    assert fused.fused_base2_scores(x, labels.clamp(max=63)) is not None


def test_overflowing_rows_are_rescored_through_the_kernel_path() -> None:
    x, labels = _logits(rows=6, vocab=128)
    x[2] += 200.0  # 2^(288 log2 e) overflows float32
    x[4] -= 200.0  # every 2^x underflows
    head = torch.nn.Identity()  # not an OutputHead: natural logits, the shifted eager pass
    want = chunked_head_nll(x, head, labels, with_entropy=True)
    out_head = OutputHead(128, 128, bias=False)
    with torch.no_grad():
        out_head.weight.copy_(torch.eye(128))
    got = chunked_head_nll(x, out_head, labels, with_entropy=True)
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=2e-6, atol=4e-6)
    assert math.isclose(float(got[0][2]), float(_reference(x, labels)[1][2]), rel_tol=1e-5)
