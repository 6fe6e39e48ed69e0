"""zoo.geometry on known answers: the matrix entropy of isotropic, low-rank and repeated
embeddings, the per-layer hidden states of every family (a block that is the identity adds no
entropy), the Rényi-α limit, the attention weights the Lasso is compared with, and the
``python -m zoo.geometry entropy`` command on a published model with its one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from zoo.geometry.hidden_states import collect_hidden_states, language_model
from zoo.geometry.matrix_entropy import (
    density_spectrum,
    effective_rank,
    matrix_entropy,
    renyi_entropy,
)
from zoo.models import family_class

ALPHAS = (0.0, 0.5, 1.0, 2.0, math.inf)


def test_isotropic_gaussian_embeddings_fill_every_dimension() -> None:
    torch.manual_seed(0)
    d = 32
    x = torch.randn(20_000, d)  # N >> d: the unit rows' Gram spectrum is ~ 1/d each
    assert matrix_entropy(x, 1.0) == pytest.approx(math.log2(d), abs=0.01)
    assert matrix_entropy(x, 2.0) == pytest.approx(math.log2(d), abs=0.02)
    assert matrix_entropy(x, 0.0) == pytest.approx(math.log2(d))
    assert effective_rank(x) == pytest.approx(d, rel=0.01)
    # scaling rows changes nothing: every row is normalised first
    assert matrix_entropy(x * torch.rand(x.shape[0], 1) * 10) == pytest.approx(matrix_entropy(x), abs=1e-9)


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("kind", ["gram", "covariance"])
def test_rank_k_embeddings_have_at_most_log2_k_bits(k, kind) -> None:
    torch.manual_seed(k)
    x = torch.randn(2000, k) @ torch.randn(k, 48)
    for alpha in ALPHAS:
        assert matrix_entropy(x, alpha, kind) <= math.log2(k) + 1e-9, alpha
    if kind == "gram":
        assert matrix_entropy(x, 0.0) == pytest.approx(math.log2(k))


def test_identical_embeddings_have_zero_entropy() -> None:
    x = torch.randn(1, 16).repeat(100, 1)
    for alpha in ALPHAS:
        assert matrix_entropy(x, alpha) == pytest.approx(0.0, abs=1e-9)
        assert matrix_entropy(x, alpha, "covariance") == pytest.approx(0.0, abs=1e-9)


def test_the_renyi_entropy_is_continuous_at_alpha_1_and_falls_with_alpha() -> None:
    torch.manual_seed(1)
    spectrum = density_spectrum(torch.randn(500, 24) * torch.linspace(0.1, 3, 24))
    s1 = renyi_entropy(spectrum, 1.0)
    for eps in (1e-3, 1e-5, 1e-8):
        assert renyi_entropy(spectrum, 1 - eps) == pytest.approx(s1, abs=20 * eps + 1e-7)
        assert renyi_entropy(spectrum, 1 + eps) == pytest.approx(s1, abs=20 * eps + 1e-7)
    values = [renyi_entropy(spectrum, a) for a in (0, 0.25, 0.5, 0.9, 1, 1.1, 2, 4, 16, math.inf)]
    assert all(a >= b - 1e-9 for a, b in zip(values, values[1:], strict=False))  # non-increasing in α
    assert spectrum.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        renyi_entropy(spectrum, -1.0)


def _tiny(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "eacd":
        return family_class("eacd")(vocab_size=64, n_ctx=16, encoder={"kind": "mixer", "d_model": 16, "n_layers": 1},
                                    decoder={"kind": "llama", "d_model": 16, "n_layers": 2, "n_heads": 2})
    if family == "moe":
        return family_class("llama")(vocab_size=64, n_ctx=16, d_model=16, n_layers=2, n_heads=2,
                                     moe={"n_experts": 2, "k": 1})
    return family_class(family)(vocab_size=64, n_ctx=16, d_model=16, n_layers=3, **({"n_heads": 2} if family == "llama" else {}))


def _batch(n: int = 4, t: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, 64, (n, t), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


@pytest.mark.parametrize("family, names", [
    ("llama", ["embed_tokens", "stack.layers.0", "stack.layers.1", "stack.layers.2"]),
    ("mixer", ["embed", "stack.blocks.0", "stack.blocks.1", "stack.blocks.2"]),
    ("moe", ["embed_tokens", "stack.layers.0", "stack.layers.1"]),
    ("eacd", ["enc_embed", "encoder.blocks.0", "down", "dec_embed", "decoder.layers.0", "decoder.layers.1"]),
])
def test_every_family_declares_its_hidden_layers_and_the_hooks_read_them(family, names) -> None:
    model = _tiny(family)
    assert [n for n, _ in model.hidden_layers()] == names
    states = collect_hidden_states(model, [_batch(), _batch()], tokens=100)
    assert list(states) == names
    for name, x in states.items():
        assert x.shape[0] == (8 if name == "down" else 100), name  # the vector: one row per sequence
    assert all(not m._forward_hooks for m in model.modules())  # the hooks are gone


@pytest.mark.slow  # importing peft takes seconds
def test_a_lora_adapted_model_is_read_through_the_model_inside() -> None:
    from zoo.models.adapters import add_lora

    base = _tiny("llama")
    plain = collect_hidden_states(base, [_batch()])
    adapted = add_lora(base, {"method": "lora", "r": 2})
    assert language_model(adapted) is base
    states = collect_hidden_states(adapted, [_batch()])
    assert list(states) == list(plain)
    for name in plain:  # LoRA starts as a zero update: the same states
        torch.testing.assert_close(states[name], plain[name])


@pytest.mark.parametrize("family", ["llama", "mixer"])
def test_a_block_that_is_the_identity_keeps_the_previous_layers_entropy(family) -> None:
    model = _tiny(family).eval()
    layers = model.hidden_layers()
    block = layers[2][1]  # the second block
    with torch.no_grad():  # zero what each residual branch writes: the block returns its input
        for name, p in block.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "fc_out.weight", "fc_out.bias",
                              "mix.weight", "mix.bias")):
                p.zero_()
    states = collect_hidden_states(model, [_batch()])
    before, after = states[layers[1][0]], states[layers[2][0]]
    torch.testing.assert_close(after, before)
    for alpha in ALPHAS:
        assert matrix_entropy(after, alpha) == pytest.approx(matrix_entropy(before, alpha), abs=1e-9)
    assert matrix_entropy(states[layers[3][0]]) != pytest.approx(matrix_entropy(before), abs=1e-6)


def test_attention_probs_are_the_weights_the_attention_applies() -> None:
    from zoo.models.llama_stack import Attention, RotaryEmbedding

    torch.manual_seed(0)
    attn, rotary = Attention(32, n_heads=4, n_kv_heads=2), RotaryEmbedding(8, 16)
    x = torch.randn(2, 10, 32)
    cos, sin = rotary.tables(10, None, x.dtype)
    probs = attn.attention_probs(x, cos, sin)
    assert probs.shape == (2, 4, 10, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 10))
    assert (probs.triu(1) == 0).all()  # causal
    v = attn.qkv_proj(x).view(2, 10, 8, 8).transpose(1, 2)[:, 6:].repeat_interleave(2, dim=1)
    y = (probs @ v).transpose(1, 2).reshape(2, 10, 32)
    torch.testing.assert_close(attn.o_proj(y), attn(x, cos, sin), atol=1e-5, rtol=1e-5)


def test_ridge_and_lasso_recover_a_last_token_made_of_context_tokens() -> None:
    from zoo.geometry.information_gain import lasso_tokens, ridge_last_token

    torch.manual_seed(0)
    context = torch.randn(20, 64)
    last = 2.0 * context[3] - 1.5 * context[11] + context[17]
    states = torch.cat([context, last[None]])
    assert ridge_last_token(states, alpha=1e-6)["r2"] == pytest.approx(1.0, abs=1e-6)
    assert sorted(lasso_tokens(states, 3)) == [3, 11, 17]
    assert len(set(lasso_tokens(states, 10))) == 10  # always k tokens, past the true ones
    noise = torch.cat([context, torch.randn(1, 64)])  # a last token the context does not span
    assert ridge_last_token(noise)["r2_cv"] < 0.2


@pytest.mark.slow
def test_the_token_experiment_on_a_published_llama() -> None:
    from zoo.geometry.information_gain import attention_tokens, token_experiment
    from zoo.hub.registry import load

    model, tokenizer = load("llama-edu")
    ids = torch.tensor(tokenizer("The river runs through the old town, past the market and the church, "
                                 "and then it turns north towards the")["input_ids"])
    picked = attention_tokens(model, ids, 4)
    assert len(set(picked)) == 4 and all(0 <= i < len(ids) - 1 for i in picked)
    r = token_experiment(model, ids[:-1], int(ids[-1]), ks=(2,), random_draws=2)
    assert set(r["ridge"]) == {n for n, _ in model.hidden_layers()}
    assert r["layer"] == "stack.layers.3" and r["loss"] > 0
    assert all(math.isfinite(r["deletion"][2][key]) for key in ("rise_lasso", "rise_attention", "rise_random"))


# ---------------------------------------------------------------------------------- the command


def test_the_entropy_command_on_a_published_model(tmp_path, capsys, cache_dir) -> None:
    from zoo.geometry.__main__ import main

    target, out = tmp_path / "r.json", tmp_path / "out"
    main(["entropy", "checkpoint=llama-edu", "data=edu", "split=val", "tokens=600", "alpha=1",
          f"json={target}", f"out={out}"])
    text = capsys.readouterr().out
    assert "| layer | module |" in text and "stack.layers.3" in text
    result = json.loads(target.read_text())
    assert json.loads((out / "geometry_entropy.json").read_text()) == result
    assert [r["name"] for r in result["layers"]] == ["embed_tokens", *(f"stack.layers.{i}" for i in range(4))]
    for r in result["layers"]:
        assert r["rows"] == 600 and r["dim"] == 128
        assert 0 < r["entropy_bits"] <= math.log2(128) + 1e-9
        assert r["effective_rank"] == pytest.approx(2 ** r["entropy_bits"])
    assert (out / "geometry_entropy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, named", [
    (["nope"], "command"),
    (["entropy"], "checkpoint"),
    (["entropy", "checkpoint=no-such-model"], "checkpoint"),
    (["entropy", "checkpoint=llama-edu", "tokens=1"], "tokens"),
    (["entropy", "checkpoint=llama-edu", "alpha=-0.5"], "alpha"),
    (["entropy", "checkpoint=llama-edu", "matrix=laplacian"], "matrix"),
    (["entropy", "checkpoint=llama-edu", "colour=red"], "colour"),
    (["entropy", "checkpoint=llama-edu", "data=nope"], "data"),
])
def test_the_command_refuses_bad_input_in_one_line(argv, named, capsys) -> None:
    from zoo.geometry.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2 and len(lines) == 1 and named in lines[0], err


def test_help_prints_the_docstring(capsys) -> None:
    from zoo.geometry.__main__ import main

    main(["--help"])
    assert "matrix (Rényi-α) entropy" in capsys.readouterr().out
