"""The entropy toolkit against a source whose entropy is known exactly (an order-2 Markov
chain over 4 letters), the chain-rule estimator's batched form against the naive one, the
entropy-aware loss and its data path, the second-order regressor, and the CLI."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch

from zoo.data.datamodule import TextDataModule
from zoo.data.sources import build_source
from zoo.data.sources.markov import MarkovChain
from zoo.data.tokenizer import EOT, PAD
from zoo.entropy.data import EntropyDataModule
from zoo.entropy.estimate import (
    chain_rule_estimates,
    estimate_split,
    estimates_path,
    naive_estimates,
    prefix_batch,
    sequence_nll,
    task_model_fn,
)
from zoo.errors import ZooError
from zoo.lit.language_model import LanguageModelTask
from zoo.metrics.entropy_gap import EntropyGap
from zoo.objectives import entropy_aware_loss, loss_options

LN2 = math.log(2)
N_CTX = 24
#: 4 letters, order 2, 24 letters per document: one document is one left-padded sample
MARKOV = {"name": "markov", "alphabet": 4, "order": 2, "length": N_CTX, "n_documents": 3000, "seed": 3,
          "val_fraction": 0.1, "test_fraction": 0.05}
#: a byte-level BPE with no merges (256 bytes + 2 specials): one letter = one token = one byte
BYTES = {"vocab_size": 258, "train_bytes": 20_000}
LLAMA = {"family": "llama", "d_model": 32, "n_layers": 2, "n_heads": 2}
#: a tiny EACD whose vector is 2 numbers stored in fp8 (16 bits): see the estimator's tolerance
EACD = {"family": "eacd", "compression": 16, "injection": "token", "vector_format": "fp8_e4m3",
        "encoder": {"kind": "llama", "d_model": 32, "n_layers": 1, "n_heads": 2},
        "decoder": {"kind": "llama", "d_model": 32, "n_layers": 2, "n_heads": 2}}


# --------------------------------------------------------------------------------------------
# the source


def test_markov_chain_is_exact() -> None:
    chain = MarkovChain(alphabet=3, order=2, concentration=0.7, seed=5)
    # pi is stationary for the chain on pairs
    T = np.zeros((9, 9))
    for s in range(9):
        for x in range(3):
            T[s, chain.next_state(s, x)] += chain.P[s, x]
    assert np.allclose(chain.pi @ T, chain.pi, atol=1e-12) and chain.pi.sum() == pytest.approx(1)
    assert 0 < chain.entropy_rate < math.log2(3)
    # the mean surprisal of a long sample estimates the entropy rate: within 4 standard errors
    texts = chain.texts(400, 100, seed=1)
    s = np.concatenate([chain.surprisals(t) for t in texts])
    se = s[2:].std() / math.sqrt(len(s))
    assert abs(np.concatenate([chain.surprisals(t)[2:] for t in texts]).mean() - chain.entropy_rate) < 4 * se
    # per-position conditional entropies: the first symbol's is the entropy of the stationary letter law
    first = chain.pi.reshape(3, 3).sum(1)
    assert chain.conditional_entropies(texts[0])[0] == pytest.approx(-(first * np.log2(first)).sum())
    assert np.allclose(chain.conditional_entropies(texts[0])[2:],
                       [chain.row_entropy[a * 3 + b] for a, b in zip(chain.encode(texts[0])[:-2], chain.encode(texts[0])[1:-1], strict=False)])


def test_markov_source_options_and_errors() -> None:
    src = build_source(MARKOV)
    docs = list(src.documents("train"))
    assert len(docs) > 2000 and all(len(d) == N_CTX and set(d) <= set("abcd") for d in docs[:50])
    assert docs == list(build_source(MARKOV).documents("train"))  # deterministic
    assert src.entropy_rate == pytest.approx(src.chain.entropy_rate)
    with pytest.raises(ZooError, match="alphabet"):
        build_source({"name": "markov", "alphabet": 1})
    with pytest.raises(ZooError, match="concentration"):
        build_source({"name": "markov", "concentration": 0})


# --------------------------------------------------------------------------------------------
# training on it


@pytest.fixture(scope="module")
def markov_dm(cache_dir):
    dm = TextDataModule([MARKOV], layout="left_padded", n_ctx=N_CTX, batch_size=32, eval_batch_size=64,
                        tokenizer=BYTES, cache_dir=cache_dir)
    dm.prepare_data()
    dm.setup()
    return dm


def fit(task: LanguageModelTask, dm, steps: int, callbacks=()) -> None:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=list(callbacks), gradient_clip_val=1.0)
    trainer.fit(task, datamodule=dm)


@torch.no_grad()
def val_nll_bits(task: LanguageModelTask, dm) -> tuple[np.ndarray, np.ndarray]:
    """Per-token NLL (bits) of the val split and the oracle's surprisal of the same tokens."""
    task.eval()
    src = dm.sources[0]
    tok = dm.tokenizer
    model_bits, oracle_bits = [], []
    for batch in dm.eval_dataloader("val"):
        logp = torch.log_softmax(task(batch).float(), -1)
        valid = batch["labels"] != -100
        nll = -logp.gather(-1, batch["labels"].clamp(min=0)[..., None])[..., 0]
        for r in range(len(nll)):
            model_bits.append(nll[r][valid[r]].numpy() / LN2)
            text = tok.decode(batch["labels"][r][valid[r]].tolist())
            oracle_bits.append(src.chain.surprisals(text))
    task.train()
    return np.concatenate(model_bits), np.concatenate(oracle_bits)


@pytest.fixture(scope="module")
def causal_curve(markov_dm):
    """A tiny Llama trained on the chain; val NLL recorded after 0, 30, 100 and 400 steps."""
    L.seed_everything(0)
    task = LanguageModelTask(LLAMA, vocab_size=markov_dm.vocab_size, n_ctx=N_CTX,
                             optim={"lr": 1e-2, "warmup_steps": 10, "schedule": "constant"})
    curve, done = [], 0
    for steps in (0, 30, 100, 400):
        if steps > done:
            fit(task, markov_dm, steps - done)
            done = steps
        curve.append(val_nll_bits(task, markov_dm))
    return curve


def test_causal_lm_cross_entropy_approaches_the_entropy_rate_from_above(causal_curve, markov_dm) -> None:
    H = markov_dm.sources[0].entropy_rate
    ces = [m.mean() for m, _ in causal_curve]
    model, oracle = causal_curve[-1]
    # the oracle's mean surprisal on these tokens is the entropy measured on this very sample
    # (it differs from the rate only through the first two letters of each document and sampling)
    n = len(model)
    diff = model - oracle
    # (1) from above: every model pays at least the oracle's code length in expectation
    # (E[model - oracle] = KL >= 0); allow 3 standard errors of the paired mean for sampling noise
    se = diff.std() / math.sqrt(n)
    assert diff.mean() > -3 * se, (diff.mean(), se)
    # (2) it approaches: the curve falls step after step...
    assert all(a > b for a, b in zip(ces, ces[1:], strict=False)), ces
    assert ces[0] > H + 3  # a random init: ~log2(258) = 8 bits
    # (3) ...to within 0.06 bits of the exact entropy (the oracle's mean: same tokens) and of the
    # rate itself: the excess of a tiny model after 400 steps is a KL of a few hundredths of a
    # bit (measured 0.01-0.03 on an AVX-512 Xeon, 0.041 on a 2-core AVX2 EPYC: 0.069 after 250
    # steps, 0.025 after 600); the rate differs from the sample's oracle mean by the first two
    # letters of each document (higher entropy, 2/24 of the tokens: ~+0.04 bits) and by sampling
    # (3 SE ~ 0.03 bits), hence the wider 0.12 for the rate.
    assert 0 <= diff.mean() < 0.06, diff.mean()
    assert abs(model.mean() - H) < 0.12, (model.mean(), H)


# --------------------------------------------------------------------------------------------
# the chain-rule estimator


@pytest.fixture(scope="module")
def eacd(markov_dm):
    """A tiny EACD trained on the chain (left-padded documents, the vector as a token)."""
    L.seed_everything(1)
    task = LanguageModelTask(EACD, vocab_size=markov_dm.vocab_size, n_ctx=N_CTX,
                             optim={"lr": 1e-2, "warmup_steps": 10, "schedule": "constant"})
    fit(task, markov_dm, 250)
    return task.eval()


def ids(dm) -> tuple[int, int]:
    return dm.tokenizer.convert_tokens_to_ids(PAD), dm.tokenizer.convert_tokens_to_ids(EOT)


def val_docs(dm, n: int) -> list[np.ndarray]:
    split = dm.dataset("val").split
    return [np.asarray(split.document(i)) for i in range(n)]


def test_prefix_rows_match_the_left_padded_dataset(markov_dm) -> None:
    pad, eot = ids(markov_dm)
    ds = markov_dm.dataset("val")
    doc = np.asarray(ds.split.document(0))
    row = prefix_batch([doc], N_CTX, pad, eot)
    sample = ds[0]
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(row[key][0], sample[key])


def test_batched_estimator_equals_naive_and_agrees_across_batch_sizes(eacd, markov_dm) -> None:
    pad, eot = ids(markov_dm)
    fn = task_model_fn(eacd)
    docs = val_docs(markov_dm, 3)
    docs[1] = docs[1][:9]  # documents of different lengths share batches
    naive = [naive_estimates(fn, d, N_CTX, pad, eot) for d in docs]  # 2 passes per token
    for batch_size, crop in ((1, False), (7, True), (64, True), (200, False)):
        batched = chain_rule_estimates(fn, docs, N_CTX, pad, eot, batch_size=batch_size, crop=crop)
        for b, n in zip(batched, naive, strict=True):
            assert b.shape == n.shape
            np.testing.assert_allclose(b, n, atol=2e-4)
    # the estimates telescope to the code length of the whole sequence
    full = sequence_nll(fn, prefix_batch([docs[0]], N_CTX, pad, eot))[0]
    assert chain_rule_estimates(fn, docs[:1], N_CTX, pad, eot)[0].sum() == pytest.approx(float(full), abs=1e-3)


def test_estimator_mean_is_close_to_the_true_entropy_rate(eacd, markov_dm) -> None:
    pad, eot = ids(markov_dm)
    docs = val_docs(markov_dm, 120)
    est = chain_rule_estimates(task_model_fn(eacd), docs, N_CTX, pad, eot, batch_size=256)
    H = markov_dm.sources[0].entropy_rate
    inner = np.concatenate([h[2:] for h in est]) / LN2  # positions with a full order-2 context
    # Tolerance 0.1 bits/token. The mean over positions j > 2 telescopes to
    # (S(L) - S(2)) / (L - 2), the decoder's code length of the tail of each document given the
    # vectors. Three things move it off H: (i) the decoder's excess over the true law (a KL:
    # >= 0; after 250 steps a few hundredths of a bit, as the causal test above measures);
    # (ii) what the oracle vector tells the decoder for free, which LOWERS the estimate: at most
    # its 16 bits (2 numbers x 8 bits, fp8) per document, i.e. < 16/22 bits/token in the worst
    # case, and much less in practice because it largely cancels between S(j) and S(j-1)
    # (measured: the mean lands 0.03 bits ABOVE H; with a free float32 vector of 8 numbers it
    # fell 0.12 bits below H after 300 steps); (iii) sampling: 2,640 tokens, 3 SE ~ 0.04 bits.
    assert abs(inner.mean() - H) < 0.1, (inner.mean(), H)
    # and per token, the estimates follow the exact conditional law: they correlate with the
    # oracle's surprisal -log2 P(x_j | x_j-2, x_j-1) (measured r ~ 0.97)
    oracle = np.concatenate([markov_dm.sources[0].chain.surprisals(markov_dm.tokenizer.decode(d.tolist()))[2:]
                             for d in docs])
    assert np.corrcoef(inner, oracle)[0, 1] > 0.8


def test_estimate_split_is_aligned_resumable_and_summarized(eacd, markov_dm, tmp_path) -> None:
    from zoo.data import cache, prepare
    from zoo.data.tokenizer import token_byte_lengths

    pad, eot = ids(markov_dm)
    tok = markov_dm.tokenizer
    path = prepare.split_tokens(markov_dm.sources[0], "val", tok, markov_dm.cache_dir)
    fn, lut = task_model_fn(eacd), token_byte_lengths(tok)
    first = estimate_split(fn, path, tmp_path, N_CTX, pad, eot, lut, max_documents=5, docs_per_chunk=2,
                           progress=False)
    folder = estimates_path(tmp_path, path)
    assert json.loads((folder / "progress.json").read_text())["done"] == 5
    est = np.memmap(folder / "entropy.f32", dtype=np.float32, mode="r")
    split = cache.load_split(path)
    assert len(est) == split.n_tokens
    ref = chain_rule_estimates(fn, [np.asarray(split.document(i)) for i in range(5)], N_CTX, pad, eot)
    for i in range(5):
        o = split.offsets[i]
        np.testing.assert_allclose(est[o:o + N_CTX], ref[i], atol=1e-4)
        assert np.isnan(est[split.offsets[i + 1] - 1])  # the end-of-text token
    assert np.isnan(est[split.offsets[5]:]).all()
    # a rerun with a larger budget continues after document 5 and matches a fresh run
    second = estimate_split(fn, path, tmp_path, N_CTX, pad, eot, lut, max_documents=8, progress=False)
    assert first["tokens"] == 5 * N_CTX and second["tokens"] == 8 * N_CTX
    assert second["bits_per_byte"] == pytest.approx(second["mean_bits_per_token"])  # 1 byte per token
    with pytest.raises(ZooError, match="another model"):
        estimate_split(fn, path, tmp_path, N_CTX - 1, pad, eot, lut, max_documents=8, progress=False)


# --------------------------------------------------------------------------------------------
# entropy-aware training


def test_entropy_aware_losses_and_gap() -> None:
    nll = torch.tensor([1.0, 2.0, 0.5, 3.0, 9.0], requires_grad=True)
    valid = torch.tensor([True, True, True, True, False])
    h = torch.tensor([1.5, 1.0, float("nan"), 3.0, 0.0])
    l1 = entropy_aware_loss(nll, valid, h, "entropy_l1", alpha=2.0)
    assert float(l1) == pytest.approx((2 * 0.5 + 2 * 1.0 + 0.5 + 0.0) / 4)  # NaN: plain CE
    clip = entropy_aware_loss(nll, valid, h, "entropy_clip", alpha=2.0)
    assert float(clip) == pytest.approx((0 + 2 * 1.0 + 0.5 + 0) / 4)
    l1.backward()
    assert nll.grad.tolist() == pytest.approx([-0.5, 0.5, 0.25, 0.0, 0.0])  # |x| at 0: gradient 0
    assert float(entropy_aware_loss(nll, valid, h, "ce")) == pytest.approx((1 + 2 + 0.5 + 3) / 4)
    gap = EntropyGap()
    gap.update(nll, h, valid)
    assert float(gap.compute()) == pytest.approx((-0.5 + 1.0 + 0.0) / 3)
    assert loss_options(None) == {"kind": "ce", "alpha": 2.5}
    with pytest.raises(ZooError, match="loss.kind"):
        loss_options({"kind": "l2"})
    with pytest.raises(ZooError, match="alpha"):
        loss_options({"kind": "entropy_l1", "alpha": -1})


def test_entropy_data_module_aligns_estimates_and_trains(eacd, markov_dm, tmp_path, cache_dir) -> None:
    from zoo.data import cache, prepare
    from zoo.data.tokenizer import token_byte_lengths

    pad, eot = ids(markov_dm)
    tok = markov_dm.tokenizer
    path = prepare.split_tokens(markov_dm.sources[0], "train", tok, markov_dm.cache_dir)
    estimate_split(task_model_fn(eacd), path, tmp_path, N_CTX, pad, eot, token_byte_lengths(tok),
                   max_documents=64, progress=False)
    est = np.memmap(estimates_path(tmp_path, path) / "entropy.f32", dtype=np.float32, mode="r")
    split = cache.load_split(path)
    for layout, n_ctx in (("left_padded", N_CTX), ("packed", 16)):
        dm = EntropyDataModule([MARKOV], layout=layout, n_ctx=n_ctx, batch_size=8, tokenizer=BYTES,
                               cache_dir=cache_dir, entropy={"estimates": str(tmp_path), "train_documents": 64})
        dm.setup()
        train = dm.dataset("train")
        assert dm.splits_with_entropy == ["train"] and "entropy" not in dm.dataset("val")[0]
        if layout == "left_padded":
            assert len(train) == 64
            s = train[3]
            o = split.offsets[3]
            np.testing.assert_allclose(s["entropy"].numpy(), est[o:o + N_CTX])
        else:
            assert len(train) == (int(split.offsets[64]) - 1) // n_ctx
            s = train[2]  # targets: tokens 33..48 of the stream
            np.testing.assert_allclose(s["entropy"].numpy(), est[2 * n_ctx + 1:3 * n_ctx + 1], equal_nan=True)
            assert torch.isnan(s["entropy"][s["labels"] == tok.convert_tokens_to_ids(EOT)]).all()
        assert torch.isnan(s["entropy"][s["labels"] == -100]).all()
    # entropy-aware training runs and logs the gap; without estimates it refuses
    task = LanguageModelTask(LLAMA, vocab_size=dm.vocab_size, n_ctx=16, loss={"kind": "entropy_l1"},
                             optim={"warmup_steps": 1})
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, datamodule=dm)
    assert {"train/entropy_gap", "train/objective"} <= set(trainer.callback_metrics)
    plain = TextDataModule([MARKOV], layout="packed", n_ctx=16, batch_size=8, tokenizer=BYTES, cache_dir=cache_dir)
    with pytest.raises(RuntimeError, match="needs per-token estimates"):
        L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(
            LanguageModelTask(LLAMA, vocab_size=dm.vocab_size, n_ctx=16, loss={"kind": "entropy_clip"}), datamodule=plain)
    with pytest.raises(ZooError, match="no such folder"):
        EntropyDataModule([MARKOV], tokenizer=BYTES, cache_dir=cache_dir, entropy={"estimates": str(tmp_path / "x")})


# --------------------------------------------------------------------------------------------
# the second-order estimator


def test_regressor_learns_estimates_that_depend_on_the_text() -> None:
    from zoo.entropy.regressor import EntropyRegressor, train_regressor

    rng = np.random.default_rng(0)
    chain = MarkovChain(4, 2, 0.5, seed=0)
    docs = [np.asarray(list(t.encode()), dtype=np.int64) for t in chain.texts(300, 20, seed=2)]
    # a target the text determines: the exact surprisal (needs the previous two letters and the letter)
    hs = [chain.surprisals(bytes(d.tolist()).decode()) * LN2 + rng.normal(0, 0.05, len(d)) for d in docs]
    model, fit_ = train_regressor(docs, hs, vocab_size=258, n_ctx=20, pad_id=1, steps=250, batch_size=32,
                                  stack={"kind": "llama", "d_model": 32, "n_layers": 2, "n_heads": 2})
    assert isinstance(model, EntropyRegressor)
    assert fit_["r2"] > 0.6 and fit_["mae_nats"] < 0.6 * fit_["baseline_mae_nats"], fit_
    # causal: changing a later token does not change earlier estimates
    x = torch.from_numpy(docs[0][None, :20])
    y = x.clone()
    y[0, -1] = (y[0, -1] - 96) % 4 + 97
    with torch.no_grad():
        assert torch.allclose(model(x)[0, :-1], model(y)[0, :-1], atol=1e-5)
