"""The encoder-augmented causal decoder (EACD): causality, left padding, injections, the
honest cost of its vector, and its recipes. Real components throughout (no mocks)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from zoo.data.datamodule import TextDataModule
from zoo.errors import ZooError
from zoo.lit.language_model import LanguageModelTask
from zoo.models import build_model
from zoo.models.blocks import LlamaStack
from zoo.models.eacd import INJECTIONS, EncoderAugmentedDecoder
from zoo.recipes import compose
from zoo.training import train

VOCAB, N_CTX, PAD = 97, 16, 1
KINDS = ("mixer", "llama")


def stack(kind: str, d: int = 32, n_layers: int = 2) -> dict:
    spec = {"kind": kind, "d_model": d, "n_layers": n_layers}
    return {**spec, "n_heads": 2} if kind == "llama" else {**spec, "kernel": 3, "heads": 2}


def eacd(enc: str, dec: str, injection: str, **kw) -> EncoderAugmentedDecoder:
    torch.manual_seed(0)
    return EncoderAugmentedDecoder(VOCAB, N_CTX, stack(enc), stack(dec), injection=injection, **kw).eval()


def left_padded(doc: torch.Tensor, n_ctx: int) -> dict[str, torch.Tensor]:
    """The left_padded sample layout of zoo.data.layouts (doc[0] plays end-of-text)."""
    n_pad = n_ctx + 1 - len(doc)
    window = torch.cat([torch.full((n_pad,), PAD), doc])
    valid = torch.arange(n_ctx) >= n_pad
    return {
        "input_ids": window[:-1],
        "labels": torch.where(valid, window[1:], -100),
        "attention_mask": valid.long(),
    }


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none") * (labels != -100)


@pytest.mark.parametrize("dec", KINDS)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_decoder_is_causal_given_the_vector(dec, injection) -> None:
    model = eacd("mixer", dec, injection)
    ids = torch.randint(2, VOCAB, (2, N_CTX))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # one left-padded row
    vector = torch.randn(2, model.d_c)
    with torch.no_grad():
        base = model.decode(ids, mask, vector)
        for i in (4, 9, N_CTX - 1):
            changed = ids.clone()
            changed[:, i] = (changed[:, i] + 1) % VOCAB
            diff = (model.decode(changed, mask, vector) - base).abs().amax(dim=(0, 2))
            assert torch.all(diff[:i] <= 1e-6), f"position < {i} saw token {i}: {diff[:i]}"
            assert diff[i] > 1e-4
        # and the vector reaches every position
        moved = (model.decode(ids, mask, vector + 1.0) - base).abs().amax(dim=-1)  # [B, T]
        assert torch.all(moved[0, 4:] > 1e-5) and torch.all(moved[1] > 1e-5)


@pytest.mark.parametrize("enc", KINDS)
def test_encoder_input_changes_the_vector(enc) -> None:
    model = eacd(enc, "mixer", "token")
    tokens = torch.randint(2, VOCAB, (2, N_CTX))
    mask = torch.ones_like(tokens)
    with torch.no_grad():
        base = model.encode(tokens, mask)
        assert base.shape == (2, model.d_c)
        for i in (0, N_CTX // 2, N_CTX - 1):  # the last position sees the whole sequence
            changed = tokens.clone()
            changed[:, i] = (changed[:, i] + 1) % VOCAB
            assert torch.all((model.encode(changed, mask) - base).abs().amax(-1) > 1e-6)
        # forward(): the encoder reads the targets, not the inputs
        ids = torch.randint(2, VOCAB, (2, N_CTX))
        out = model(ids, mask, targets=tokens)
        torch.testing.assert_close(out, model.decode(ids, mask, base))
        other = tokens.clone()
        other[:, 3] = (other[:, 3] + 1) % VOCAB
        assert not torch.allclose(model(ids, mask, targets=other), out)


@pytest.mark.parametrize("enc", KINDS)
@pytest.mark.parametrize("dec", KINDS)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_left_padding_gives_the_same_vector_and_losses(enc, dec, injection) -> None:
    model = eacd(enc, dec, injection)
    doc = torch.randint(2, VOCAB, (7,))
    n_pad = N_CTX + 1 - len(doc)
    pad = left_padded(doc, N_CTX)
    full = left_padded(torch.randint(2, VOCAB, (N_CTX + 1,)), N_CTX)  # an unpadded row beside it
    batch = {k: torch.stack([pad[k], full[k]]) for k in pad}
    alone = left_padded(doc, len(doc) - 1)  # the unpadded copy: T = 6, no pads
    alone = {k: v[None] for k, v in alone.items()}
    with torch.no_grad():
        vec_pad = model.encode(batch["labels"].clamp(min=PAD), batch["labels"] != -100)[:1]
        vec_alone = model.encode(alone["labels"], alone["labels"] != -100)
        torch.testing.assert_close(vec_pad, vec_alone, atol=1e-5, rtol=1e-5)
        logits = model(batch["input_ids"], batch["attention_mask"], targets=batch["labels"])
        loss_pad = nll(logits, batch["labels"])[0, n_pad:]
        loss_alone = nll(model(alone["input_ids"], alone["attention_mask"], targets=alone["labels"]), alone["labels"])[0]
    assert loss_alone.shape == (6,) and torch.all(loss_alone > 0)
    torch.testing.assert_close(loss_pad, loss_alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("enc", KINDS)
def test_right_padded_final_window_reads_its_last_real_token(enc) -> None:
    """A packed split's last window is padded on the RIGHT: its vector is the encoder state at
    its last real token, as in a full window with the same prefix (positions count from the left,
    as in the full packed windows the model trains on)."""
    model = eacd(enc, "mixer", "token")
    tokens = torch.randint(2, VOCAB, (1, N_CTX))
    mask = (torch.arange(N_CTX) < 10).long()[None]
    with torch.no_grad():
        vec = model.encode(tokens.masked_fill(mask == 0, PAD), mask)
        reference = model.down(model.encoder(model.enc_embed(tokens))[:, 9])
    torch.testing.assert_close(vec, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("injection", INJECTIONS)
def test_every_parameter_gets_a_gradient(kind, injection) -> None:
    """No unused parameters (DDP would complain): the Llama stacks hold no token embedding."""
    model = eacd(kind, kind, injection).train()
    ids = torch.randint(2, VOCAB, (2, N_CTX))
    labels = ids.roll(-1, dims=1)
    nll(model(ids, targets=labels), labels).mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused
    assert not [n for n, _ in LlamaStack(8, 16, 1, 2).named_parameters() if "embed" in n]


def test_sizes_side_bits_and_errors() -> None:
    model = eacd("mixer", "llama", "embedding", compression=8, vector_bits=4)
    assert model.d_c == 4 and model.side_bits_per_sequence == 16.0 and not model.can_generate
    assert model.head.in_features == 32 + 4  # decoder width d_dec + d_c
    token = eacd("mixer", "mixer", "token")
    assert token.decoder.n_ctx == N_CTX + 1
    with pytest.raises(ZooError, match="injection must be one of token, embedding, additive"):
        build_model({"family": "eacd", "encoder": stack("mixer"), "decoder": stack("mixer"), "injection": "x"},
                    VOCAB, N_CTX)
    with pytest.raises(ZooError, match="'n_heads' is not an option of a mixer stack"):
        build_model({"family": "eacd", "encoder": {**stack("mixer"), "n_heads": 2}, "decoder": stack("mixer")},
                    VOCAB, N_CTX)
    with pytest.raises(ZooError, match="stack kind must be one of mixer, llama"):
        build_model({"family": "eacd", "encoder": {**stack("mixer"), "kind": "rnn"}, "decoder": stack("mixer")},
                    VOCAB, N_CTX)


SMALL = [
    "model.encoder.d_model=32", "model.encoder.n_layers=1", "model.decoder.d_model=32", "model.decoder.n_layers=1",
    "data.n_ctx=32", "data.batch_size=4", "data.eval_batch_size=64", "data.tokenizer.vocab_size=300",
    "data.tokenizer.train_bytes=200000", "trainer.max_steps=6", "trainer.val_check_interval=3",
    "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false", "optim.warmup_steps=2", "logger=csv",
    "report.splits=[val]",
]


def test_eacd_transformer_recipe_trains(tmp_path, cache_dir) -> None:
    cfg = compose("eacd_transformer", [*SMALL, "model.encoder.n_heads=2", "model.decoder.n_heads=2"])
    assert cfg.data.layout == "left_padded" and cfg.model.injection == "token"
    report = train(cfg, tmp_path / "run")
    val = report["splits"]["val"]
    assert val["bpb"] > val["bpb_free_vector"] > 0


def test_eacd_mixer_val_bpb_charges_the_vector_exactly(tmp_path, cache_dir) -> None:
    """val/bpb - bpb_free_vector = side_bits × n_sequences / bytes, on the logged metrics too."""
    cfg = compose("eacd_mixer", SMALL)
    assert cfg.data.layout == "left_padded" and cfg.model.injection == "embedding"
    report = train(cfg, tmp_path / "run")
    val = report["splits"]["val"]
    assert cfg.model.vector_format == "fp32"
    side_bits = (32 // cfg.model.compression) * 32  # d_c float32 numbers
    assert LanguageModelTask(cfg.model, 300, 32).side_bits_per_sequence == side_bits

    dm = TextDataModule(seed=cfg.seed, **{k: v for k, v in cfg.data.items()})
    dm.prepare_data()
    n_sequences = n_bytes = 0
    logged_sequences = logged_bytes = 0  # what validation during training saw (limit_val_batches=2)
    for i, batch in enumerate(dm.eval_dataloader("val")):
        n_sequences += batch["input_ids"].shape[0]
        n_bytes += int(batch["target_bytes"].sum())
        if i < 2:
            logged_sequences, logged_bytes = n_sequences, n_bytes
    assert n_sequences == len(dm.dataset("val")) > 0
    assert val["bpb"] - val["bpb_free_vector"] == pytest.approx(side_bits * n_sequences / n_bytes, rel=1e-9)
    assert math.isfinite(val["bpb"]) and val["bpb_free_vector"] > 0

    # the logged val/bpb (what the best-checkpoint monitor reads) charges it too
    (metrics_csv,) = (tmp_path / "run").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("val/bpb")]
    assert len(rows) == 2  # validation at steps 3 and 6
    for r in rows:
        gap = float(r["val/bpb"]) - float(r["val/bpb_free_vector"])
        assert gap == pytest.approx(side_bits * logged_sequences / logged_bytes, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ddp_cpu", "fsdp2_cpu"])
def test_eacd_trains_on_two_processes(trainer, tmp_path, cache_dir) -> None:
    """DDP (which fails on parameters without gradients) and FSDP2 (sharding both stacks'
    block classes) over 2 CPU processes, with a Llama encoder and a mixer decoder."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = ["recipe=eacd_transformer", *[a for a in SMALL if a != "logger=csv"], "logger=csv",
            "model.encoder.n_heads=2", "model.decoder.kind=mixer", "~model.decoder.n_heads",
            "trainer.max_steps=4", f"trainer={trainer}", f"out_dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "-m", "zoo.fit", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "eacd_transformer").iterdir()
    val = json.loads((run_dir / "report.json").read_text())["splits"]["val"]
    assert val["bpb"] > val["bpb_free_vector"] > 0
