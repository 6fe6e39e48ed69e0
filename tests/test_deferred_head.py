"""Evaluation that runs the output head itself, chunk by chunk with the metrics
(zoo.models.OutputHead, LanguageModel.deferred_head, zoo.metrics.token_stats_from_hidden):
the same numbers as scoring the model's logits, for every family, without the [B, T, V] logits."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from zoo.allocations import TensorAllocations
from zoo.lit.language_model import LanguageModelTask
from zoo.metrics import language_metrics, token_stats, token_stats_from_hidden, update_all
from zoo.metrics.chunked import chunked_head_nll, chunked_nll
from zoo.models import OutputHead, build_model

VOCAB, N_CTX = 300, 16
LLAMA = {"family": "llama", "d_model": 32, "n_layers": 2, "n_heads": 2}
STACK = {"kind": "llama", "d_model": 32, "n_layers": 1, "n_heads": 2}
FAMILIES = {
    "llama": LLAMA,
    "mixer": {"family": "mixer", "d_model": 32, "n_layers": 2},
    "eacd-token": {"family": "eacd", "compression": 4, "injection": "token", "encoder": STACK, "decoder": dict(STACK)},
    "eacd-embedding": {"family": "eacd", "compression": 4, "injection": "embedding",
                       "encoder": {"kind": "mixer", "d_model": 32, "n_layers": 1},
                       "decoder": {"kind": "mixer", "d_model": 32, "n_layers": 1}},
    "moe": {**LLAMA, "moe": {"n_experts": 4, "k": 2, "d_ff": 32, "capacity_factor": None}},
    "lora": {**LLAMA, "adapter": {"r": 4}},
}


def _batch(seed: int = 0, left_pad: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (3, N_CTX), generator=gen)
    labels = torch.randint(2, VOCAB, (3, N_CTX), generator=gen)
    mask = torch.ones_like(ids)
    if left_pad:
        mask[1, :5] = 0
        ids[1, :5] = 1
    labels[mask == 0] = -100
    labels[0, 3] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "target_bytes": torch.randint(1, 5, (3, N_CTX), generator=gen)}


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_head_equals_scoring_the_full_logits(with_bias: bool, chunk: int | None, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    head = OutputHead(24, 50, bias=with_bias).to(dtype)
    hidden = torch.randn(45, 24, dtype=dtype) * 3
    labels = torch.randint(0, 50, (45,))
    with torch.no_grad():
        want_nll, want_entropy = chunked_nll(head(hidden), labels, chunk, with_entropy=True)
        nll, entropy = chunked_head_nll(hidden, head, labels, chunk, with_entropy=True)
        only_nll, none = chunked_head_nll(hidden, head, labels, chunk)
    assert nll.dtype == dtype and none is None
    torch.testing.assert_close(nll, want_nll)
    torch.testing.assert_close(entropy, want_entropy)
    torch.testing.assert_close(only_nll, want_nll)


def test_rows_beyond_float32_exponent_range_are_scored_exactly() -> None:
    """The CPU scores chunks in base 2 without a max shift; a row whose sum of 2^x overflows
    (a logit above 88) or underflows (every logit below -103) is scored again with the shift."""
    torch.manual_seed(2)
    head = OutputHead(8, 30)
    hidden = torch.randn(12, 8)
    with torch.no_grad():
        head.weight.mul_(4)
        head.bias.zero_()
        hidden[3] *= 40  # logits of several hundred
        head_logits = head(hidden)
        hidden[7] = 0.0
        head.bias.fill_(-120.0)  # row 7: every logit -120
        head.bias[5] = -110.0
        labels = torch.randint(0, 30, (12,))
        want_nll, want_entropy = chunked_nll(head(hidden), labels, 5, with_entropy=True)
        nll, entropy = chunked_head_nll(hidden, head, labels, 5, with_entropy=True)
    assert head_logits[3].abs().max() > 100 and torch.isfinite(nll).all() and torch.isfinite(entropy).all()
    torch.testing.assert_close(nll, want_nll)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-5, atol=1e-5)


def test_any_row_wise_head_works_and_autocast_is_respected() -> None:
    """A plain nn.Linear (no buffer to write into) gives the same numbers; under bf16
    autocast the head computes what the model's own forward would (bf16 logits)."""
    torch.manual_seed(1)
    linear = nn.Linear(16, 40)
    head = OutputHead(16, 40)
    head.load_state_dict(linear.state_dict())
    hidden, labels = torch.randn(20, 16), torch.randint(0, 40, (20,))
    with torch.no_grad():
        a = chunked_head_nll(hidden, linear, labels, 6, with_entropy=True)
        b = chunked_head_nll(hidden, head, labels, 6, with_entropy=True)
        torch.testing.assert_close(a, b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = chunked_nll(head(hidden), labels, 6, with_entropy=True)
            got = chunked_head_nll(hidden, head, labels, 6, with_entropy=True)
    assert head(hidden).dtype == torch.float32  # autocast ended
    torch.testing.assert_close(got, want)
    assert chunked_head_nll(hidden[:0], head, labels[:0])[0].shape == (0,)


def test_no_logits_sized_tensor_is_allocated() -> None:
    rows, width, vocab, chunk = 512, 32, 1024, 32
    head = OutputHead(width, vocab, bias=False)
    hidden, labels = torch.randn(rows, width), torch.randint(0, vocab, (rows,))
    with torch.no_grad(), TensorAllocations() as fused:
        chunked_head_nll(hidden, head, labels, chunk, with_entropy=True)
    with torch.no_grad(), TensorAllocations() as full:
        chunked_nll(head(hidden), labels, chunk, with_entropy=True)
    logits_bytes = rows * vocab * 4
    assert fused.peak <= 3 * chunk * vocab * 4 + 16 * rows  # two chunk buffers (+ the first chunk's logits)
    assert full.peak >= logits_bytes


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("left_pad", [False, True])
def test_every_family_defers_its_head_and_scores_the_same(name: str, left_pad: bool) -> None:
    torch.manual_seed(0)
    model = build_model(FAMILIES[name], VOCAB, N_CTX).eval()
    batch = _batch(left_pad=left_pad)
    with torch.no_grad():
        logits = model.forward_batch(batch)
        with model.deferred_head() as head:
            hidden = model.forward_batch(batch)
        assert isinstance(head, OutputHead) and not head.deferred
        assert hidden.shape == (*logits.shape[:2], head.in_features)
        torch.testing.assert_close(head(hidden), logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_batch(batch), logits)  # the head is back
        want = token_stats(logits, batch["labels"], batch["target_bytes"])
        got = token_stats_from_hidden(hidden, head, batch["labels"], batch["target_bytes"], chunk_size=5)
    for field in ("loss", "nll", "entropy", "target_bytes", "valid", "n_tokens"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-5, atol=1e-5)


def test_the_head_is_restored_after_an_error_and_odd_heads_are_not_deferred() -> None:
    model = build_model(LLAMA, VOCAB, N_CTX)
    with pytest.raises(RuntimeError, match="inside"), model.deferred_head() as head:
        assert head is model.lm_head and head.deferred
        raise RuntimeError("inside")
    assert not model.lm_head.deferred
    # a LoRA branch on the head itself: the head is no longer a plain OutputHead child
    adapted = build_model({**LLAMA, "adapter": {"r": 2, "target_modules": ["lm_head"]}}, VOCAB, N_CTX)
    with adapted.deferred_head() as head:
        assert head is None
        assert adapted.forward_batch(_batch()).shape[-1] == VOCAB  # logits, as usual


class _Batches(torch.utils.data.Dataset):
    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batches[i]


@pytest.mark.parametrize("name", ["llama", "eacd-token"])
def test_a_trainer_reports_what_the_logits_give(name: str) -> None:
    """Trainer.test of the task (the deferred head) logs the metrics computed from the logits."""
    L.seed_everything(0, verbose=False)
    task = LanguageModelTask(model=FAMILIES[name], vocab_size=VOCAB, n_ctx=N_CTX)
    batches = [_batch(seed, left_pad=seed == 1) for seed in range(3)]
    loader = DataLoader(_Batches(batches), batch_size=None)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    task.report_stages = ["report_val"]
    logged = trainer.test(task, dataloaders=loader, verbose=False)[0]

    reference = language_metrics(side_bits_per_sequence=task.side_bits_per_sequence)
    task.eval()
    with torch.no_grad():
        for batch in batches:
            stats = token_stats(task.model.forward_batch(batch), batch["labels"], batch["target_bytes"])
            update_all(reference, stats, n_sequences=batch["input_ids"].shape[0])
    for key, value in reference.compute().items():
        assert logged[f"final/val/{key}"] == pytest.approx(float(value), rel=1e-5), key
