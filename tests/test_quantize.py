"""Quantization-aware training by uniform noise, and evaluation with weights and the EACD's
vector stored in other formats (bitsandbytes int8/nf4/fp4 on CPU, fp8/bf16/fp16/int8 vectors).
Real components: real bitsandbytes layers, a real trained EACD, a real Lightning Trainer."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from zoo.errors import ZooError
from zoo.evaluate import evaluate_quantized
from zoo.lit.language_model import LanguageModelTask
from zoo.models.eacd import NOISE_PLACES, EncoderAugmentedDecoder
from zoo.models.noise import DEFAULT_Q, UniformNoise
from zoo.models.vector_formats import VECTOR_FORMATS, get_vector_format, store_vector
from zoo.quantize import default_modes, parse_mode, quantize_weights
from zoo.recipes import compose
from zoo.training import train

LLAMA = {"kind": "llama", "d_model": 32, "n_layers": 1, "n_heads": 2}


def eacd(**kw) -> EncoderAugmentedDecoder:
    torch.manual_seed(0)
    return EncoderAugmentedDecoder(97, 16, LLAMA, LLAMA, compression=4, **kw)


# ---------------------------------------------------------------------------- noise
def test_noise_is_centred_bounded_and_only_in_training() -> None:
    q, n = DEFAULT_Q, 1_000_000
    noise = UniformNoise(q).train()
    torch.manual_seed(0)
    drawn = noise(torch.zeros(n))
    assert drawn.abs().max() <= q and drawn.abs().max() > 0.99 * q
    # U(-q, q) has standard deviation q/sqrt(3); the mean of n draws has q/sqrt(3n) = 3.6e-5 for
    # n = 1e6. |mean| < 5 of those fails by chance with probability 6e-7, while a noise
    # biased by even 0.5% of q (3.1e-4) would fail it for certain.
    assert abs(drawn.mean().item()) < 5 * q / math.sqrt(3 * n)
    assert drawn.std().item() == pytest.approx(q / math.sqrt(3), rel=0.01)
    x = torch.randn(100)
    assert torch.equal(noise.eval()(x), x)
    assert torch.equal(UniformNoise(0.0).train()(x), x)
    with pytest.raises(ValueError, match="q must be >= 0"):
        UniformNoise(-1.0)


@pytest.mark.parametrize("where", NOISE_PLACES)
def test_eacd_vector_is_noisy_in_training_only(where) -> None:
    model = eacd(noise_q=DEFAULT_Q, noise_at=where)
    tokens = torch.randint(2, 97, (8, 16))
    model.eval()
    clean = model.encode(tokens)
    assert torch.equal(clean, model.encode(tokens))  # evaluation: deterministic, no noise
    model.train()
    noisy_a, noisy_b = model.encode(tokens), model.encode(tokens)
    assert not torch.equal(noisy_a, noisy_b)
    if where == "after_down":  # the noise IS the difference, so it is bounded by q
        assert (noisy_a - clean).abs().max() <= DEFAULT_Q + 1e-6
    else:  # U(-q, q) on the state, then `down`: bounded by q × the row's L1 norm
        bound = DEFAULT_Q * model.down.weight.abs().sum(1)
        assert ((noisy_a - clean).abs() <= bound + 1e-6).all()
    # the noise does not stop gradients reaching the encoder
    model(tokens, targets=tokens).logsumexp(-1).mean().backward()
    assert model.enc_embed.weight.grad.abs().sum() > 0


def test_noise_recipes_configure_the_noise() -> None:
    after, before = compose("eacd_noise"), compose("eacd_noise_before")
    assert after.model.noise_q == before.model.noise_q == DEFAULT_Q
    assert (after.model.noise_at, before.model.noise_at) == ("after_down", "before_down")
    assert compose("eacd_transformer").model.noise_q == 0.0  # the same EACD without noise


# ---------------------------------------------------------------------------- formats
def test_int8_vector_round_trip_error_bound() -> None:
    """Symmetric absmax int8 with a float16 scale s: every number moves by at most s/2, the
    row's largest survives to within fp16 scale rounding, and zero stays exactly zero."""
    x = torch.tensor([[0.0, 1e-3, -0.25, 0.5, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    y = get_vector_format("int8").round_trip(x)
    scale = (x.abs().amax(-1, keepdim=True) / 127).clamp(min=2.0**-14).half().float()
    assert ((y - x).abs() <= scale / 2 + 1e-7).all()
    assert y[0, 0] == 0 and torch.equal(y[1], x[1])
    assert y[0, -1] == pytest.approx(3.0, rel=2**-10)
    assert (y[0] / scale[0]).round().tolist() == [0, 0, -11, 21, -42, 127]  # 1e-3 < s/2 rounds to 0


def test_int4_vector_has_seven_levels_a_side() -> None:
    """int4: the same absmax scheme with levels -7..7; every number moves by at most s/2."""
    x = torch.tensor([[0.0, 0.2, -0.5, 1.0, -2.0, 3.5], [1e-3, -1e-3, 0.0, 0.0, 0.0, 0.0]])
    y = get_vector_format("int4").round_trip(x)
    scale = (x.abs().amax(-1, keepdim=True) / 7).clamp(min=2.0**-14).half().float()
    assert ((y - x).abs() <= scale / 2 + 1e-7).all()
    assert (y[0] / scale[0]).round().tolist() == [0, 0, -1, 2, -4, 7]
    assert (y / scale).round().abs().max() == 7 and y.unique().numel() <= 15
    assert get_vector_format("int4").bits_per_vector(32) == 32 * 4 + 16


def test_float_vector_formats_round_to_nearest_and_saturate() -> None:
    x = torch.tensor([1.0, 1.03, 1.1, -2.2, 300.0, 1e6, -1e6])
    e4m3 = get_vector_format("fp8_e4m3").round_trip(x)
    # E4M3: 3 mantissa bits -> spacing 2^-3 in [1, 2): 1.03 -> 1.0, 1.1 -> 1.125; max finite 448
    assert e4m3.tolist()[:4] == [1.0, 1.0, 1.125, -2.25]
    assert e4m3[-2] == 448 and e4m3[-1] == -448 and torch.isfinite(e4m3).all()
    e5m2 = get_vector_format("fp8_e5m2").round_trip(x)
    assert e5m2[2] == 1.0 and e5m2[-2] == 57344  # 2 mantissa bits: spacing 2^-2; max 57344
    half = get_vector_format("fp16").round_trip(x)
    assert half[-2] == 65504 and torch.isfinite(half).all()
    assert torch.equal(get_vector_format("fp32").round_trip(x), x)


def test_stored_vector_passes_gradients_straight_through() -> None:
    x = torch.randn(4, 8, requires_grad=True)
    y = store_vector(x, get_vector_format("fp8_e4m3"))
    assert not torch.equal(y.detach(), x.detach())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("fmt", list(VECTOR_FORMATS))
def test_vector_cost_follows_its_format(fmt) -> None:
    model = eacd(vector_format=fmt)
    d_c, f = model.d_c, VECTOR_FORMATS[fmt]
    expected = d_c * f.bits + f.overhead_bits
    assert model.side_bits_per_sequence == expected == {"fp32": 256, "bf16": 128, "fp16": 128, "int4": 48}.get(fmt, 64 + f.overhead_bits)
    task = LanguageModelTask({"family": "eacd", "encoder": LLAMA, "decoder": LLAMA, "vector_format": fmt}, 97, 16)
    assert task.side_bits_per_sequence == expected
    task.model.set_vector_format("fp32")  # changed later: the task's metrics follow on refresh
    task.refresh_metrics()
    assert task.side_bits_per_sequence == 32 * d_c
    assert eacd(vector_format=fmt, vector_bits=2.5).side_bits_per_sequence == 2.5 * d_c  # explicit override


def test_bnb_int8_weight_round_trip_error_bound() -> None:
    """LLM.int8 stores each output row as int8 with the row's absmax: every weight moves by at
    most half a step of absmax/127, and the layer's output stays close to the float32 one."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    qmodel, share = quantize_weights(torch.nn.Sequential(lin), "int8")
    q = qmodel[0]
    assert type(q).__name__ == "Linear8bitLt" and q.weight.dtype == torch.int8 and share > 0.98
    absmax = lin.weight.abs().amax(1, keepdim=True).detach()
    assert torch.equal(q.weight.SCB, absmax[:, 0].half().float())  # the row's absmax, as float16
    step = absmax / 127  # the int8 grid of each row
    err = (q.weight.float() * q.weight.SCB[:, None] / 127 - lin.weight).abs() / step
    # round-to-nearest: at most half a step, a quarter on average for weights spread over many
    # steps. bitsandbytes' own arithmetic (a float16 scale, its reciprocal) puts ~1% of weights
    # that lie near a midpoint on the other neighbour: never as much as a whole step.
    assert err.max() < 1.0
    assert (err <= 0.5 + 1e-3).float().mean() > 0.98
    assert err.mean().item() == pytest.approx(0.25, abs=0.03)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(q(x), lin(x), atol=0.02)
    assert lin.weight.dtype == torch.float32  # the original model is untouched


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_bnb_4bit_weights_quantise(fmt) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    (q,), share = quantize_weights(torch.nn.Sequential(lin), fmt)
    assert type(q).__name__ == "Linear4bit" and q.weight.dtype == torch.uint8 and q.weight.numel() == 64 * 64 // 2
    x = torch.randn(5, 64)
    with torch.no_grad():
        err = (q(x) - lin(x)).abs().mean() / lin(x).abs().mean()
    assert 0 < err < 0.25


def test_modes_parse_with_clear_errors() -> None:
    assert parse_mode("int8+vec:fp8_e4m3").name == "int8+vec:fp8_e4m3"
    assert parse_mode("vec:bf16").weights == "fp32"
    with pytest.raises(ZooError, match="unknown quantize mode 'int4' \\(did you mean 'int8'\\?\\); available: .*nf4, vec:bf16"):
        parse_mode("int4")
    with pytest.raises(ZooError, match="unknown vector format 'fp8'"):
        parse_mode("vec:fp8")


# ---------------------------------------------------------------------------- evaluation
SMALL = [
    "model.encoder.d_model=64", "model.encoder.n_layers=1", "model.encoder.n_heads=2", "model.decoder.d_model=64",
    "model.decoder.n_layers=1", "model.decoder.n_heads=2", "data.n_ctx=32", "data.batch_size=4",
    "data.eval_batch_size=32", "data.tokenizer.vocab_size=300", "data.tokenizer.train_bytes=200000",
    "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false", "optim.warmup_steps=2", "logger=none", "report.splits=[val]",
]


@pytest.fixture(scope="module")
def noisy_eacd(tmp_path_factory, cache_dir):
    """An EACD trained 6 steps with recipe eacd_noise, exported as a model folder."""
    run = tmp_path_factory.mktemp("eacd_noise") / "run"
    train(compose("eacd_noise", SMALL), run)
    return run / "model"


def test_every_quantize_mode_runs_on_cpu(noisy_eacd) -> None:
    rows = evaluate_quantized(noisy_eacd, "all", max_batches=1, accelerator="cpu")
    by_mode = {r["mode"]: r for r in rows}
    assert list(by_mode) == [m.name for m in default_modes(True)]
    ref = by_mode["fp32"]
    assert ref["delta_bpb"] == 0 and ref["vector_bits"] == 16 * 32
    for r in rows:
        assert math.isfinite(r["bpb"]) and math.isfinite(r["bpb_free_vector"]) and r["bpb"] > 0
        # the charged BPB uses the bits of the format the vector was evaluated in
        bits = VECTOR_FORMATS[r["vector"] or "fp32"].bits_per_vector(16)
        assert r["vector_bits"] == bits
        # per byte, the vector costs bits × sequences / bytes: the same sequences in every mode
        assert (r["bpb"] - r["bpb_free_vector"]) / bits == pytest.approx((ref["bpb"] - ref["bpb_free_vector"]) / (16 * 32), rel=1e-6)
    size = {m: by_mode[m]["size_bytes"] for m in ("fp32", "bf16", "int8", "nf4")}
    assert size["fp32"] > size["int8"] and size["fp32"] > size["nf4"] and size["bf16"] == size["fp32"] // 2
    assert by_mode["bf16"]["quantized_share"] == 1.0 and 0 < by_mode["int8"]["quantized_share"] < 1
    assert by_mode["vec:bf16"]["size_bytes"] == size["fp32"]  # the vector's format is not the weights'


@pytest.mark.slow  # every mode through the command line (~26 s); test_every_quantize_mode_runs_on_cpu stays
def test_quantize_cli_prints_a_table_and_rejects_vector_modes_without_a_vector(noisy_eacd, tmp_path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "zoo.evaluate", f"checkpoint={noisy_eacd}", "quantize=int8,vec:fp8_e5m2",
           "max_batches=1", "accelerator=cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln.split()[0] for ln in proc.stdout.splitlines() if ln.strip()]
    assert ["fp32", "int8", "vec:fp8_e5m2"] == [w for w in lines if w in ("fp32", "int8", "vec:fp8_e5m2")]
    bad = subprocess.run([*cmd[:4], "quantize=int4"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown quantize mode 'int4'" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------- 8-bit optimizer
def test_adamw8bit_keeps_8bit_moments_and_trains(tmp_path, cache_dir) -> None:
    """optim.name=adamw8bit: bitsandbytes' AdamW8bit on CPU, moments of large tensors in uint8."""
    from zoo.lit.language_model import optimizer_class

    assert optimizer_class("adamw") is torch.optim.AdamW
    with pytest.raises(ZooError, match="unknown optim.name 'adam8'.*adamw8bit"):
        optimizer_class("adam8")
    cfg = compose("quickstart", [
        "optim.name=adamw8bit", "model.d_model=64", "model.n_layers=1", "model.n_heads=2", "data.n_ctx=32",
        "data.batch_size=4", "data.tokenizer.vocab_size=300", "data.tokenizer.train_bytes=200000",
        "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false", "optim.warmup_steps=1", "logger=none", "report.splits=[val]",
    ])
    report = train(cfg, tmp_path / "run")
    assert math.isfinite(report["splits"]["val"]["bpb"])
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    (opt_state,) = ckpt["optimizer_states"]
    quant = [v.get("__bnb_optimizer_quant_state__", v) for v in opt_state["state"].values()]
    dtypes = {(q["state1"].dtype, q["state2"].dtype) for q in quant if "state1" in q}
    # 8-bit moments for tensors of >= 4096 numbers (bitsandbytes keeps smaller ones in float32)
    assert (torch.uint8, torch.uint8) in dtypes
