"""Mixture of experts (zoo.models.moe) and router metrics (zoo.metrics.router).

Identities: with k = n_experts and identical experts the MoE layer IS the dense FFN (in the
masked-mixer block and, with LlamaMLP experts, in the whole Llama model); with k = n_experts
and different experts it is the router-probability-weighted average of the experts; with
k < n_experts the vectorised dispatch equals a per-token loop. The auxiliary loss is 1 for
uniform routing and (E/k) x the top-k mass >= 1 for any token-independent router.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.errors import ZooError
from zoo.metrics.router import (
    ExpertLoad,
    RouterEntropy,
    router_metrics,
    router_values,
    update_router_metrics,
)
from zoo.models import build_model, parameter_counts
from zoo.models.base import auxiliary_loss
from zoo.models.blocks import FeedForward
from zoo.models.llama import CausalTransformer
from zoo.models.mixer import MaskedMixerLM
from zoo.models.moe import MoEFeedForward, moe_layers
from zoo.recipes import compose
from zoo.training import train

D = 16


def moe(n_experts=4, k=2, d_ff=24, **kw) -> MoEFeedForward:
    return MoEFeedForward(D, lambda: FeedForward(D, d_ff=d_ff), n_experts=n_experts, k=k, **kw)


def reference(layer: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """The MoE by its definition, one token at a time (no capacity limit)."""
    h = x.reshape(-1, D)
    probs = layer.router(h).float().softmax(-1)
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        p, i = probs[t].topk(layer.k)
        for g, e in zip(p / p.sum(), i.tolist(), strict=True):
            out[t] += g * layer.experts[e](h[t:t + 1])[0]
    return out.view(x.shape)


@torch.no_grad()
def test_all_experts_identical_and_k_equal_n_is_the_dense_ffn() -> None:
    torch.manual_seed(0)
    dense = FeedForward(D, d_ff=24)
    layer = moe(n_experts=4, k=4)
    for expert in layer.experts:
        expert.load_state_dict(dense.state_dict())
    x = torch.randn(3, 7, D)
    # gates renormalised over the k = E chosen experts sum to 1: sum_e g_e f(x) = f(x)
    torch.testing.assert_close(layer(x), dense(x), rtol=0, atol=1e-6)


@torch.no_grad()
def test_k_equal_n_is_the_router_weighted_average_of_the_experts() -> None:
    torch.manual_seed(1)
    layer = moe(n_experts=3, k=3)
    x = torch.randn(2, 5, D)
    probs = layer.router(x).softmax(-1)
    expected = sum(probs[..., e:e + 1] * layer.experts[e](x) for e in range(3))
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
@torch.no_grad()
def test_vectorised_dispatch_equals_a_per_token_loop(k) -> None:
    torch.manual_seed(k)
    layer = moe(n_experts=4, k=k)
    layer.router.weight.mul_(5)  # confident, uneven routing
    x = torch.randn(4, 9, D)
    torch.testing.assert_close(layer(x), reference(layer, x), rtol=0, atol=1e-6)


@torch.no_grad()
def test_llama_with_identical_experts_equals_the_dense_llama() -> None:
    """One MoE implementation serves the Llama stack: its SwiGLU experts, all copies of the
    dense model's mlp with k = n_experts, give the dense model's logits."""
    torch.manual_seed(2)
    sizes = dict(vocab_size=50, n_ctx=12, d_model=32, n_layers=2, n_heads=2)
    dense = CausalTransformer(**sizes).eval()
    sparse = CausalTransformer(**sizes, moe={"n_experts": 3, "k": 3}).eval()
    state = dense.state_dict()
    for i, layer in enumerate(sparse.stack.layers):
        for expert in layer.mlp.experts:
            expert.load_state_dict(dense.stack.layers[i].mlp.state_dict())
        for name, p in layer.named_parameters():
            if not name.startswith("mlp."):
                p.copy_(state[f"stack.layers.{i}.{name}"])
    for name in ("embed_tokens.weight", "stack.norm.weight", "lm_head.weight"):
        sparse.get_parameter(name).copy_(state[name])
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding too
    torch.testing.assert_close(sparse(ids, mask), dense(ids, mask), rtol=0, atol=1e-5)
    assert len(moe_layers(sparse)) == 2


@torch.no_grad()
def test_both_stacks_take_moe() -> None:
    """``moe`` is an option of both stacks, so stack-built models (the EACD's encoder and
    decoder) get the same MoE layer."""
    from zoo.models.blocks import build_stack

    for kind, extra in (("mixer", {}), ("llama", {"n_heads": 2})):
        stack = build_stack({"kind": kind, "d_model": D, "n_layers": 2, **extra,
                             "moe": {"n_experts": 3, "k": 1, "d_ff": 8}}, n_ctx=6)
        assert len(moe_layers(stack)) == 2 and all(m.k == 1 for m in moe_layers(stack))
        assert stack(torch.randn(2, 6, D)).shape == (2, 6, D)


@torch.no_grad()
def test_capacity_drops_overflow_first_choices_first() -> None:
    torch.manual_seed(3)
    layer = moe(n_experts=4, k=2, capacity_factor=0.5)
    layer.router.weight.mul_(5)
    x = torch.randn(64, D)
    y = layer(x)
    r = layer.routing
    cap = layer.capacity(64)
    assert cap == math.ceil(0.5 * 64 * 2 / 4)
    kept_per_expert = torch.bincount(r.expert_index[r.kept], minlength=4)
    assert kept_per_expert.max() <= cap and not r.kept.all()
    # an expert serves every first choice before any second choice
    for e in range(4):
        first = (r.expert_index[:, 0] == e)
        if (r.expert_index[:, 1] == e)[r.kept[:, 1]].any():
            assert r.kept[first, 0].all()
    # dropped assignments contribute nothing; kept ones their gate times their expert
    probs = layer.router(x).softmax(-1)
    p = probs.gather(1, r.expert_index)
    gates = p / p.sum(-1, keepdim=True) * r.kept
    expected = sum(gates[:, j:j + 1] * torch.stack([layer.experts[e](x[t]) for t, e in
                                                     enumerate(r.expert_index[:, j].tolist())]) for j in range(2))
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)


def test_aux_loss_is_minimal_for_uniform_routing() -> None:
    torch.manual_seed(4)
    E = 4
    for k in (1, 2, 4):
        layer = moe(n_experts=E, k=k, aux_loss_coef=1.0)
        nn.init.zeros_(layer.router.weight)  # uniform routing: P_e = 1/E, so E * sum_e f_e / E = 1
        layer(torch.randn(32, D))
        assert layer.aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    # a token-independent router with probabilities p: f is uniform over p's top-k, so the
    # loss is (E/k) * (top-k mass of p) >= 1, with equality only for uniform p
    for k in (1, 2, 3):
        layer = moe(n_experts=E, k=k)
        for scale in (0.0, 1e-3, 0.1, 1.0, 10.0):
            logits = torch.randn(E) * scale
            p = logits.softmax(-1).expand(50, E)
            top_i = p.topk(k, dim=-1).indices
            loss = layer.balance_loss(p, top_i).item()
            assert loss == pytest.approx(E / k * p[0].topk(k).values.sum().item(), rel=1e-5)
            assert loss >= 1 - 1e-6 and (loss > 1 + 1e-6 or scale < 1e-2)
    # all tokens on one expert: the maximum, E
    layer = moe(n_experts=E, k=1)
    p = torch.zeros(10, E)
    p[:, 0] = 1
    assert layer.balance_loss(p, torch.zeros(10, 1, dtype=torch.long)).item() == pytest.approx(E)


def test_aux_loss_gradient_balances_a_skewed_router() -> None:
    """Minimising the auxiliary loss alone (through the router's probabilities) spreads the
    tokens of a router that sends all of them to one expert."""
    torch.manual_seed(5)
    layer = moe(n_experts=4, k=1, aux_loss_coef=1.0)
    x = torch.randn(256, D) + 1.0
    with torch.no_grad():
        layer.router.weight[0] = 0.2  # expert 0 takes every token
    opt = torch.optim.SGD(layer.router.parameters(), lr=3.0)
    losses, loads = [], []
    for _ in range(60):
        layer(x)
        losses.append(layer.aux_loss.item())
        loads.append(torch.bincount(layer.routing.expert_index[:, 0], minlength=4).max().item() / 256)
        opt.zero_grad()
        layer.aux_loss.backward()
        opt.step()
    assert losses[0] > 3 and losses[-1] < 1.5
    assert loads[0] == 1.0 and loads[-1] < 0.4  # the largest expert's share falls towards 1/4


def test_jitter_only_in_training() -> None:
    torch.manual_seed(6)
    layer = moe(jitter=0.5)
    layer.router.weight.data.mul_(3)
    x = torch.randn(200, D)
    layer.eval()
    with torch.no_grad():
        a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    layer.train()
    with torch.no_grad():
        layer(x)
    assert not torch.equal(layer.routing.probs, layer.eval().route(x)[0])


def test_gradients_reach_every_expert_and_the_router() -> None:
    """Every expert runs every step (on zero tokens if need be), so DDP sees all parameters."""
    torch.manual_seed(7)
    layer = moe(n_experts=4, k=1)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 100.0
    x = torch.randn(8, D).abs()  # every token -> expert 0
    (layer(x).sum() + layer.aux_loss).backward()
    assert layer.routing.expert_index.eq(0).all()
    assert all(p.grad is not None for p in layer.parameters())
    assert layer.router.weight.grad.abs().sum() > 0


def test_parameter_counts_equal_active_parameters() -> None:
    """The MoE recipes' models have the dense recipes' active parameters (+ the routers)."""
    for dense_name, moe_name in (("llama_tiny", "llama_moe_tiny"), ("mixer_tiny", "mixer_moe_tiny")):
        dense_cfg = compose("quickstart", [f"model={dense_name}"]).model
        moe_cfg = compose("moe_clm", [f"model={moe_name}"]).model
        dense = parameter_counts(build_model(dense_cfg, 4096, 256))
        sparse_model = build_model(moe_cfg, 4096, 256)
        sparse = parameter_counts(sparse_model)
        layers = moe_layers(sparse_model)
        routers = sum(m.router.weight.numel() for m in layers)
        # the mixer's GELU experts have biases: k output biases per token instead of one
        biases = sum((m.k - 1) * m.d for m in layers) if dense_name == "mixer_tiny" else 0
        assert dense["total"] == dense["active"] == dense["trainable"]
        assert sparse["active"] == dense["total"] + routers + biases, (dense_name, dense, sparse)
        assert sparse["total"] > sparse["active"] == sparse["total"] - sum(m.inactive_parameters() for m in layers)


def test_bad_moe_options_are_one_line_errors() -> None:
    for moe_cfg, match in (
        ({"n_expert": 4}, r"moe.n_expert is not an MoE option \(did you mean 'n_experts'\?\)"),
        ({"n_experts": 2, "k": 3}, "moe.k must be an integer from 1 to n_experts=2"),
        ({"capacity_factor": 0}, "moe.capacity_factor must be a positive number"),
        ({"jitter": 1.5}, r"moe.jitter must be in \[0, 1\)"),
    ):
        for family in ("llama", "mixer"):
            with pytest.raises(ZooError, match=match) as e:
                build_model({"family": family, "d_model": 16, "n_layers": 1, "moe": moe_cfg}, 32, 8)
            assert "\n" not in str(e.value)


def test_router_metrics() -> None:
    load, h, ht = ExpertLoad(4), RouterEntropy(4, of="load"), RouterEntropy(4, of="tokens")
    idx = torch.tensor([[0], [1], [2], [3]])
    uniform = torch.full((4, 4), 0.25)
    load.update(idx)
    h.update(idx, uniform)
    ht.update(idx, uniform)
    assert load.compute().tolist() == [0.25] * 4
    assert h.compute().item() == pytest.approx(2.0) and ht.compute().item() == pytest.approx(2.0)
    h.reset()
    ht.reset()
    one = torch.zeros(4, 4)
    one[:, 2] = 1
    h.update(torch.full((4, 1), 2), one)
    ht.update(torch.full((4, 1), 2), one)
    assert h.compute().item() == pytest.approx(0.0) and ht.compute().item() == pytest.approx(0.0)
    # per layer, from the layers' routing
    torch.manual_seed(8)
    model = MaskedMixerLM(40, 8, d_model=D, n_layers=2, moe={"n_experts": 4, "k": 2})
    metrics = router_metrics([4, 4])
    model(torch.randint(0, 40, (3, 8)))
    update_router_metrics(metrics, moe_layers(model))
    values = router_values(metrics, "val")
    assert sum(values[f"val/router_l1_load{e}"].item() for e in range(4)) == pytest.approx(1.0)
    assert 0 < values["val/router_balance"].item() <= 1 and values["val/router_max_load"].item() >= 1
    assert auxiliary_loss(model).item() > 0


def tiny_moe(recipe: str, *overrides: str):
    sizes = ["model.n_heads=2"] if recipe == "moe_clm" else []
    return compose(recipe, [
        "model.d_model=32", "model.n_layers=2", *sizes, "model.moe.d_ff=32", "data.n_ctx=32", "data.batch_size=4",
        "data.tokenizer.vocab_size=300", "data.tokenizer.train_bytes=200000", "trainer.max_steps=20",
        "trainer.val_check_interval=10", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=5", "optim.warmup_steps=2", "logger=csv", "report.splits=[val]",
        "report.compressors=[gzip]", *overrides,
    ])


@pytest.mark.parametrize("recipe", ["moe_clm", "moe_mixer"])
def test_fit_moe_recipes_20_steps(recipe, tmp_path, cache_dir, caplog) -> None:
    """``python -m zoo.fit recipe=moe_clm trainer.max_steps=20`` (and moe_mixer), tiny sizes."""
    import csv

    caplog.set_level("INFO", logger="zoo.fit")
    report = train(tiny_moe(recipe), tmp_path / "run")
    val = report["splits"]["val"]
    assert 0 < val["bpb"] < 10
    # router metrics in the report: per-layer loads sum to 1, balance in (0, 1]
    assert sum(val[f"router_l1_load{e}"] for e in range(4)) == pytest.approx(1.0, abs=1e-5)
    assert 0 < val["router_balance"] <= 1 and 0 <= val["router_l0_entropy"] <= 2
    # the auxiliary loss and the router metrics were logged in training and validation
    (metrics_csv,) = (tmp_path / "run").rglob("metrics.csv")
    rows = list(csv.DictReader(open(metrics_csv)))
    aux = [float(r["train/aux_loss"]) for r in rows if r.get("train/aux_loss")]
    assert aux and all(0.02 * 0.9 <= a <= 0.02 * 4 for a in aux)  # 2 layers x 0.01 x [~1, E]
    assert any(r.get("train/router_balance") for r in rows) and any(r.get("val/router_l0_load0") for r in rows)
    # parameter accounting at start: total, trainable, active per token
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model:"))
    n = parameter_counts(build_model(dict(tiny_moe(recipe).model), 300, 32))
    assert f"{n['total']:,} parameters ({n['total']:,} trainable, {n['active']:,} active per token)" in line
    # the exported folder reloads as the same MoE model
    from zoo.hub.folder import load_pretrained

    model, _, _ = load_pretrained(tmp_path / "run" / "model")
    assert len(moe_layers(model)) == 2


@pytest.mark.slow
def test_moe_trains_under_ddp_with_idle_experts(tmp_path, cache_dir) -> None:
    """2 CPU processes (gloo DDP): with 8 experts, top-1 and 4 x 32 tokens per process, some
    experts get no token in some steps; DDP (find_unused_parameters off) still trains, because
    every expert runs every step, on zero tokens if need be."""
    import os
    import subprocess
    import sys

    args = [f"{k}={v}" for k, v in {
        "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.moe.d_ff": 32,
        "model.moe.n_experts": 8, "model.moe.k": 1, "model.moe.capacity_factor": 1.0,
        "data.n_ctx": 32, "data.batch_size": 4, "data.tokenizer.vocab_size": 300,
        "data.tokenizer.train_bytes": 200000, "trainer.max_steps": 6, "trainer.enable_progress_bar": "false",
        "optim.warmup_steps": 2, "report.splits": "[val]", "logger": "csv", "trainer": "ddp_cpu",
        "trainer.limit_val_batches": 2, "out_dir": tmp_path,
    }.items()]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "zoo.fit", "recipe=moe_clm", *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "moe_clm").iterdir()
    assert (run_dir / "model" / "model.safetensors").is_file()


def _router(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k.startswith("router_")}


@pytest.mark.slow
def test_evaluate_reports_the_router_metrics_of_the_model_it_loads(tmp_path, cache_dir) -> None:
    """``zoo.evaluate`` loads the weights into a fresh task after building it; its router
    metrics must be those of the loaded model's layers (the fit's final report on the same
    split), not of the layers the task was first built with."""
    from zoo.evaluate import evaluate

    report = train(tiny_moe("moe_clm"), tmp_path / "run")
    fit_router = _router(report["splits"]["val"])
    assert len(fit_router) == 2 * (4 + 2) + 2  # per layer: 4 loads, 2 entropies; balance, max load
    for source in (tmp_path / "run" / "model", report["best_checkpoint"]):
        row = evaluate(source, split="val", compressors=())
        assert _router(row) == pytest.approx(fit_router, abs=1e-6), source
        assert row["bpb"] == pytest.approx(report["splits"]["val"]["bpb"], rel=1e-6)


@pytest.mark.slow
def test_published_moe_router_metrics_match_its_training_report() -> None:
    """The published moe-edu, evaluated on its val split, gives the router metrics its run's
    final report recorded (its weights are stored in bfloat16, hence the tolerance)."""
    import json

    import zoo
    from zoo.evaluate import evaluate

    folder = zoo.checkpoints_dir() / "moe-edu"
    recorded = _router(json.loads((folder / "metrics.json").read_text())["train_report"]["splits"]["val"])
    row = evaluate(folder, split="val", compressors=())
    assert set(_router(row)) == set(recorded)
    assert _router(row) == pytest.approx(recorded, abs=0.01)


def test_static_slot_dispatch_equals_exact_size_dispatch() -> None:
    """The accelerator path (every expert on its capacity slots: no host sync) gives the same
    outputs and gradients as the CPU path (each expert on exactly its tokens), drops included."""
    from zoo.models.llama_stack import SwiGLU

    torch.manual_seed(0)
    layer = MoEFeedForward(16, lambda: SwiGLU(16, 24), n_experts=4, k=2, capacity_factor=0.8)
    x = torch.randn(3, 10, 16, requires_grad=True)
    results = []
    for static in (False, True):
        layer.static_dispatch = static
        y = layer(x)
        results.append((y, torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])))
    assert (~layer.routing.kept).sum() > 0  # some assignments were dropped for capacity
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1) and all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))
