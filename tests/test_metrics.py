"""Tests of zoo.metrics (token statistics, BPB, entropy, DDP reduction) and zoo.compression."""

from __future__ import annotations

import math
import os
import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torchmetrics.text import Perplexity as TMPerplexity

from zoo.compression import COMPRESSORS, compressed_bits_per_byte, compression_table
from zoo.metrics import (
    BitsPerByte,
    CrossEntropy,
    Perplexity,
    PredictiveEntropy,
    language_metrics,
    token_stats,
    update_all,
)

LN2 = math.log(2.0)


def _random_batch(seed: int, batch: int = 3, time: int = 7, vocab: int = 11):
    """Random logits, labels with some -100, and byte counts 1..4 per token."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, time, vocab, generator=gen) * 2
    labels = torch.randint(0, vocab, (batch, time), generator=gen)
    labels[torch.rand(batch, time, generator=gen) < 0.25] = -100
    labels[0, 0] = -100
    nbytes = torch.randint(1, 5, (batch, time), generator=gen)
    return logits, labels, nbytes


# ------------------------------------------------------------------------------ token_stats


def test_bpb_matches_hand_computation() -> None:
    logits = torch.tensor(
        [
            [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]],
            [[2.0, -1.0, 0.5, 0.0], [3.0, 1.0, 1.0, -2.0]],
        ]
    )
    labels = torch.tensor([[3, -100], [0, 2]])
    nbytes = torch.tensor([[4, 99], [1, 3]])  # 99 sits under a -100 label: ignored

    def nll(row: list[float], target: int) -> float:
        z = sum(math.exp(v) for v in row)
        return -math.log(math.exp(row[target]) / z)

    expected_nll = [
        nll([1.0, 2.0, 3.0, 4.0], 3),
        nll([2.0, -1.0, 0.5, 0.0], 0),
        nll([3.0, 1.0, 1.0, -2.0], 2),
    ]
    expected_bpb = sum(expected_nll) / (LN2 * (4 + 1 + 3))

    stats = token_stats(logits, labels, nbytes)
    assert int(stats.n_tokens) == 3
    assert stats.loss.item() == pytest.approx(sum(expected_nll) / 3, rel=1e-6)
    assert stats.nll[stats.valid].tolist() == pytest.approx(expected_nll, rel=1e-6)

    bpb = BitsPerByte()
    bpb.update(stats.nll, stats.target_bytes, mask=stats.valid)
    assert bpb.compute().item() == pytest.approx(expected_bpb, rel=1e-6)

    # compact mode gives the same numbers with only the valid rows
    compact = token_stats(logits, labels, nbytes, compact=True)
    assert compact.nll.shape == (3,)
    assert compact.target_bytes.tolist() == [4, 1, 3]
    bpb2 = BitsPerByte()
    bpb2.update(compact.nll, compact.target_bytes)
    assert bpb2.compute().item() == pytest.approx(expected_bpb, rel=1e-6)

    ce = CrossEntropy()
    ce.update(stats.nll, mask=stats.valid)
    assert ce.compute().item() == pytest.approx(sum(expected_nll) / 3, rel=1e-6)


def test_bpb_agrees_with_torchmetrics_perplexity() -> None:
    reference = TMPerplexity(ignore_index=-100)
    metrics = language_metrics(prefix="val/")
    tokens = 0
    total_bytes = 0
    for seed in range(4):
        logits, labels, nbytes = _random_batch(seed)
        reference.update(logits, labels)
        update_all(metrics, token_stats(logits, labels, nbytes))
        valid = labels != -100
        tokens += int(valid.sum())
        total_bytes += int(nbytes[valid].sum())

    ppl = reference.compute().item()
    values = metrics.compute()
    assert set(values) == {"val/bpb", "val/ce", "val/ppl", "val/entropy", "val/entropy_bpb"}
    assert values["val/bpb"].item() == pytest.approx(
        math.log2(ppl) * tokens / total_bytes, rel=1e-5
    )
    assert values["val/ppl"].item() == pytest.approx(ppl, rel=1e-5)
    assert values["val/ce"].item() == pytest.approx(math.log(ppl), rel=1e-5)
    # each metric of the collection can be computed (and hence logged) on its own
    assert metrics["bpb"].compute().item() == pytest.approx(values["val/bpb"].item())


def test_entropy_uniform_peaked_and_chunked() -> None:
    vocab = 16
    labels = torch.zeros(2, 5, dtype=torch.long)
    nbytes = torch.full((2, 5), 2)

    uniform = token_stats(torch.zeros(2, 5, vocab), labels, nbytes)
    per_token = PredictiveEntropy("token")
    per_byte = PredictiveEntropy(unit="byte")
    per_token.update_from_stats(uniform)
    per_byte.update_from_stats(uniform)
    assert per_token.compute().item() == pytest.approx(math.log2(vocab), rel=1e-6)
    assert per_byte.compute().item() == pytest.approx(math.log2(vocab) / 2, rel=1e-6)

    peaked_logits = torch.full((2, 5, vocab), -50.0)
    peaked_logits[..., 3] = 50.0
    peaked_logits[0, 0, 5] = -float("inf")  # a masked vocabulary entry must not give NaN
    peaked = token_stats(peaked_logits, labels, nbytes)
    assert torch.isfinite(peaked.entropy).all()
    assert peaked.entropy.max().item() < 1e-6

    logits, labels, nbytes = _random_batch(7, batch=4, time=9)
    whole = token_stats(logits, labels, nbytes, chunk_size=10_000)
    for chunk in (1, 5, 36):
        chunked = token_stats(logits, labels, nbytes, chunk_size=chunk)
        torch.testing.assert_close(chunked.entropy, whole.entropy)
    p = logits.softmax(-1)
    direct = -(p * p.log()).sum(-1).flatten()
    valid = labels.flatten() != -100
    torch.testing.assert_close(whole.entropy[valid], direct[valid], rtol=1e-5, atol=1e-6)
    assert (whole.entropy[~valid] == 0).all()


def test_loss_and_gradients_match_cross_entropy() -> None:
    logits, labels, nbytes = _random_batch(3)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)

    stats = token_stats(a, labels, nbytes)
    stats.loss.backward()
    reference = F.cross_entropy(b.flatten(0, 1), labels.flatten(), ignore_index=-100)
    reference.backward()

    torch.testing.assert_close(stats.loss, reference)
    torch.testing.assert_close(a.grad, b.grad)
    assert stats.entropy is not None and not stats.entropy.requires_grad

    no_entropy = token_stats(logits, labels, nbytes, with_entropy=False)
    assert no_entropy.entropy is None
    with pytest.raises(ValueError, match="with_entropy=True"):
        PredictiveEntropy().update_from_stats(no_entropy)


def test_bf16_logits_are_upcast() -> None:
    logits, labels, nbytes = _random_batch(5)
    low = logits.to(torch.bfloat16)
    stats16 = token_stats(low, labels, nbytes)
    stats32 = token_stats(low.float(), labels, nbytes)
    assert stats16.nll.dtype == torch.float32
    assert torch.isfinite(stats16.loss)
    torch.testing.assert_close(stats16.loss, stats32.loss)
    torch.testing.assert_close(stats16.entropy, stats32.entropy)
    # and close to the full-precision logits (bf16 rounding of the inputs only)
    assert stats16.loss.item() == pytest.approx(
        token_stats(logits, labels, nbytes).loss.item(), rel=2e-2
    )


def test_extra_bits_per_sequence() -> None:
    logits, labels, nbytes = _random_batch(11)
    stats = token_stats(logits, labels, nbytes)
    plain = BitsPerByte()
    charged = BitsPerByte(extra_bits_per_sequence=256.0)
    for _ in range(2):
        plain.update_from_stats(stats, n_sequences=3)
        charged.update_from_stats(stats, n_sequences=torch.tensor(3))
    total_bytes = 2 * int(stats.target_bytes.sum())
    assert charged.compute().item() - plain.compute().item() == pytest.approx(
        256.0 * 6 / total_bytes, rel=1e-9
    )

    metrics = language_metrics(side_bits_per_sequence=256.0, with_entropy=False)
    assert set(metrics.keys()) == {"bpb", "bpb_free_vector", "ce", "ppl"}
    update_all(metrics, stats, n_sequences=3)
    values = metrics.compute()
    assert values["bpb"] - values["bpb_free_vector"] == pytest.approx(
        256.0 * 3 / (total_bytes / 2), rel=1e-9
    )

    with pytest.raises(ValueError, match="n_sequences"):
        charged.update(stats.nll, stats.target_bytes)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="allowed: 'token', 'byte'"):
        PredictiveEntropy(unit="char")
    with pytest.raises(ValueError, match="extra_bits_per_sequence"):
        BitsPerByte(extra_bits_per_sequence=-1)
    with pytest.raises(ValueError, match="target_bytes"):
        PredictiveEntropy(unit="byte").update(torch.ones(3))
    logits, labels, nbytes = _random_batch(0)
    with pytest.raises(ValueError, match="labels"):
        token_stats(logits, labels[:, :-1], nbytes)
    with pytest.raises(TypeError):
        update_all({"x": TMPerplexity()}, token_stats(logits, labels, nbytes))


def test_perplexity_metric_matches_exp_ce() -> None:
    logits, labels, nbytes = _random_batch(2)
    stats = token_stats(logits, labels, nbytes)
    ppl = Perplexity()
    ppl.update_from_stats(stats)
    assert ppl.compute().item() == pytest.approx(math.exp(stats.loss.item()), rel=1e-6)


def test_metrics_fed_from_batch_totals_equal_per_token_updates() -> None:
    """update_all reads each batch's sums once (TokenStats.totals); every metric ends equal,
    to the last bit, to updating it with the per-token values and the mask, over batches
    with unscored positions, and a compact batch."""
    fed, masked = language_metrics(side_bits_per_sequence=24.0), language_metrics(side_bits_per_sequence=24.0)
    for seed, compact in ((3, False), (4, False), (5, True)):
        logits, labels, nbytes = _random_batch(seed)
        stats = token_stats(logits, labels, nbytes, with_entropy=True, compact=compact)
        assert stats.totals() is stats.totals()  # summed once, whichever metric asks first
        update_all(fed, stats, n_sequences=3)
        full = token_stats(logits, labels, nbytes, with_entropy=True)
        for metric in masked.values():
            if isinstance(metric, BitsPerByte):
                metric.update(full.nll, full.target_bytes, mask=full.valid, n_sequences=3)
            elif isinstance(metric, PredictiveEntropy):
                metric.update(full.entropy, full.target_bytes, mask=full.valid)
            else:
                metric.update(full.nll, mask=full.valid)
    for name in fed:
        assert torch.equal(fed[name].compute(), masked[name].compute()), name
    assert fed["ce"].tokens == sum(int((_random_batch(s)[1] != -100).sum()) for s in (3, 4, 5))


def test_count_takes_a_mask_or_n_tokens_not_both() -> None:
    nll = torch.tensor([0.5, 0.0, 1.5])
    ce = CrossEntropy()
    ce.update(nll, n_tokens=2)  # the zero is an unscored position
    assert ce.compute().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mask or n_tokens, not both"):
        CrossEntropy().update(nll, mask=nll > 0, n_tokens=2)


# ------------------------------------------------------------------------ DDP reduction


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_data(rank: int):
    return _random_batch(100 + rank, batch=2 + rank, time=6)


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        metric = BitsPerByte(extra_bits_per_sequence=8.0)
        logits, labels, nbytes = _rank_data(rank)
        metric.update_from_stats(token_stats(logits, labels, nbytes), n_sequences=logits.shape[0])
        value = metric.compute()
        torch.save(value, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_bits_per_byte_reduces_across_two_processes(tmp_path) -> None:
    world_size = 2
    mp.spawn(
        _ddp_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size, join=True
    )

    union = BitsPerByte(extra_bits_per_sequence=8.0)
    for rank in range(world_size):
        logits, labels, nbytes = _rank_data(rank)
        union.update_from_stats(token_stats(logits, labels, nbytes), n_sequences=logits.shape[0])
    expected = union.compute().item()

    for rank in range(world_size):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True).item()
        assert got == pytest.approx(expected, rel=1e-12)
    # the single-rank values differ from the union, so the test would catch a missing reduce
    alone = BitsPerByte(extra_bits_per_sequence=8.0)
    logits, labels, nbytes = _rank_data(0)
    alone.update_from_stats(token_stats(logits, labels, nbytes), n_sequences=logits.shape[0])
    assert alone.compute().item() != pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- compression


def _english_text(n_sentences: int = 1500) -> bytes:
    rng = random.Random(0)
    subjects = [
        "The cat",
        "A scientist",
        "My neighbour",
        "The old river",
        "Every student",
        "The committee",
    ]
    verbs = ["observed", "described", "remembered", "carried", "questioned", "painted"]
    objects = [
        "the quiet harbour",
        "a long letter",
        "the winter sky",
        "an unusual theory",
        "the market square",
        "their first experiment",
    ]
    tails = [
        "before dawn.",
        "with great care.",
        "for many years.",
        "without a word.",
        "in the library.",
        "after the storm.",
    ]
    sentences = [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(tails)}"
        for _ in range(n_sentences)
    ]
    return " ".join(sentences).encode("utf-8")


def test_compression_baselines() -> None:
    repetitive = b"abcabcabd" * 20_000
    noise = random.Random(1).randbytes(50_000)
    text = _english_text()

    for method in COMPRESSORS:
        assert compressed_bits_per_byte(repetitive, method) < 0.1
        assert compressed_bits_per_byte(noise, method) > 7.9
        assert compressed_bits_per_byte(text, method) < 4.0

    table = compression_table(text)
    assert list(table) == list(COMPRESSORS)
    assert table["xz"] <= table["gzip"]

    with pytest.raises(ValueError, match="allowed: gzip, bz2, xz"):
        compressed_bits_per_byte(text, "zip")
    with pytest.raises(ValueError, match="did you mean 'gzip'"):
        compression_table(text, ["gzip", "gzp"])
    with pytest.raises(ValueError, match="empty"):
        compressed_bits_per_byte(b"", "xz")
