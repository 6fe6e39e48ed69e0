"""Export to plain transformers, and text generation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.errors import ZooError
from zoo.generate import generate, generate_ids, main, sample_loop
from zoo.hub.export import export


@pytest.fixture(scope="module")
def tok():
    from zoo.data.tokenizer import train_bpe

    text = "The history of science is the study of the development of science and scientific knowledge. "
    return train_bpe([text * 3, "Mathematics is the study of numbers, shapes and patterns. " * 3] * 30, vocab_size=400)


@pytest.fixture(scope="module")
def tiny_llama(tok):
    torch.manual_seed(0)
    return zoo.create_model("llama_tiny", vocab_size=len(tok), n_ctx=64, d_model=32, n_layers=2).eval()


def test_export_loads_in_plain_transformers_with_the_same_logits(tok, tiny_llama, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export(tiny_llama, tmp_path / "hf", tokenizer=tok)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    text = "The history of mathematics"
    ids = hf_tok(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == tok(text).input_ids and hf_tok.eos_token == "<|endoftext|>"
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, tiny_llama(ids), atol=1e-5, rtol=0)
    assert hf.generation_config.eos_token_id == tok.eos_token_id


def test_export_refuses_families_without_a_transformers_twin(tok, tmp_path) -> None:
    mixer = zoo.create_model("mixer_tiny", vocab_size=len(tok), n_ctx=16, d_model=16, n_layers=1)
    with pytest.raises(ZooError, match="no transformers equivalent"):
        export(mixer, tmp_path / "x", tokenizer=tok)


def test_generate_llama_greedy_equals_the_plain_sampling_loop(tok, tiny_llama) -> None:
    ids = [tok.eos_token_id, *tok("The history").input_ids]
    via_hf = generate_ids(tiny_llama, ids, max_new_tokens=12, temperature=0, eos_id=None)
    assert via_hf == sample_loop(tiny_llama, ids, 12, 0.0, 0, 0, 64, None)
    a = generate(tiny_llama, tok, "The history", max_new_tokens=8, temperature=1.0, seed=3)
    assert a == generate(tiny_llama, tok, "The history", max_new_tokens=8, temperature=1.0, seed=3)
    assert a.startswith("The history")
    with pytest.raises(ZooError, match="does not fit the model's context"):
        generate(tiny_llama, tok, "x", max_new_tokens=64)


def test_generate_mixer_slides_past_its_context_and_eacd_is_refused(tok) -> None:
    mixer = zoo.create_model("mixer_tiny", vocab_size=len(tok), n_ctx=8, d_model=16, n_layers=1).eval()
    new = generate_ids(mixer, [0, 5, 6], max_new_tokens=20, temperature=1.0, top_k=10, seed=0, eos_id=None)
    assert len(new) == 20 and all(0 <= t < len(tok) for t in new)
    eacd = zoo.create_model("eacd_mixer_tiny", vocab_size=len(tok), n_ctx=8,
                            encoder={"d_model": 16, "n_layers": 1}, decoder={"d_model": 16, "n_layers": 1})
    with pytest.raises(ZooError, match="not a generator"):
        generate(eacd, tok, "The")


PUBLISHED = zoo.list_models(pretrained=True)
CAUSAL = [n for n in PUBLISHED if zoo.model_info(n).family != "eacd"]
#: published Llamas that a stock LlamaForCausalLM can hold (an MoE Llama cannot: export refuses it)
LLAMAS = [n for n in PUBLISHED if zoo.model_info(n).family == "llama" and not zoo.model_info(n).model.get("moe")]
MOE_LLAMAS = [n for n in PUBLISHED if zoo.model_info(n).family == "llama" and zoo.model_info(n).model.get("moe")]


@pytest.mark.parametrize("name", CAUSAL)
def test_generate_command_on_published_models(name, capsys) -> None:
    main([name, "prompt=The history of", "max_new_tokens=12", "seed=1"])
    out = capsys.readouterr().out
    assert out.startswith("The history of") and len(out) > len("The history of") + 5


def test_generate_command_errors(capsys) -> None:
    for name in [n for n in PUBLISHED if zoo.model_info(n).family == "eacd"][:1]:
        with pytest.raises(SystemExit):
            main([name, "prompt=x"])
        assert "not a generator" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["llama_tiny", "prompt=x"])
    assert "no trained weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["llama_tiny", "prompt=x", "max_new_tokenz=3"])
    assert "did you mean 'max_new_tokens'" in capsys.readouterr().err


HF_ONLY = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
ids = tok("<|endoftext|>The history of science", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits
assert not any(m == "zoo" or m.startswith("zoo.") for m in sys.modules)
print(json.dumps({"ids": ids[0].tolist(), "logits": logits[0, :, :50].tolist()}))
"""


@pytest.mark.parametrize("name", LLAMAS)
def test_published_llama_exports_to_plain_transformers(name, tmp_path) -> None:
    """A separate interpreter that imports only transformers loads the export: same logits."""
    out = export(name, tmp_path / name)
    res = subprocess.run([sys.executable, "-c", HF_ONLY, str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    model, tokenizer = zoo.load(name)
    ids = torch.tensor([got["ids"]])
    assert got["ids"][0] == tokenizer.eos_token_id
    with torch.no_grad():
        want = model(ids)[0, :, :50]
    assert torch.allclose(torch.tensor(got["logits"]), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", MOE_LLAMAS)
def test_published_moe_llama_is_refused_by_export(name, tmp_path) -> None:
    with pytest.raises(ZooError, match="does not reproduce the model"):
        export(name, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_export_refuses_a_model_the_stock_architecture_cannot_hold(tok, tmp_path) -> None:
    """A Llama whose MLPs were swapped for experts would load in plain transformers with missing
    weights; the export's read-back check refuses it and leaves nothing behind."""
    if "llama_moe_tiny" not in zoo.list_models():
        pytest.skip("no MoE model config")
    moe = zoo.create_model("llama_moe_tiny", vocab_size=len(tok), n_ctx=32, d_model=32, n_layers=1)
    with pytest.raises(ZooError, match="does not reproduce the model"):
        export(moe, tmp_path / "moe", tokenizer=tok)
    assert not (tmp_path / "moe").exists()


def _tiny_llama_folder(tok, folder):
    """A tiny random Llama saved as a zoo model folder (zoo.create_model + save_pretrained)."""
    from zoo.hub.folder import save_pretrained

    cfg = {**zoo.model_info("llama_tiny").model, "d_model": 32, "n_layers": 1}
    torch.manual_seed(0)
    model = zoo.create_model("llama_tiny", vocab_size=len(tok), n_ctx=32, d_model=32, n_layers=1)
    return save_pretrained(model, tok, {"model": cfg, "vocab_size": len(tok), "n_ctx": 32}, folder), model


def test_export_of_a_model_folder_writes_through_a_temporary_folder(tok, tmp_path, capsys) -> None:
    """The command on a folder: the export lands at out= and nothing else is left beside it."""
    from transformers import AutoModelForCausalLM

    from zoo.export import main as export_main

    src, model = _tiny_llama_folder(tok, tmp_path / "src")
    export_main([str(src), f"out={tmp_path / 'hf'}"])
    assert f"wrote {tmp_path / 'hf'}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "src"]  # no staging folder left behind
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()(ids).logits,
                              model.eval()(ids), atol=1e-5, rtol=0)


def test_export_refuses_a_non_empty_out_and_leaves_it_alone(tok, tmp_path, capsys) -> None:
    from zoo.export import main as export_main

    src, _ = _tiny_llama_folder(tok, tmp_path / "src")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "sentinel.txt").write_text("not the export's")
    with pytest.raises(ZooError, match="exists and is not empty; pass overwrite=true"):
        export(src, out)
    with pytest.raises(SystemExit) as e:
        export_main([str(src), f"out={out}"])
    assert e.value.code == 2 and "error: out=" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["sentinel.txt"] and (out / "sentinel.txt").read_text() == "not the export's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "src"]
    export(src, out, overwrite=True)  # asked for: replaced by the export
    assert (out / "config.json").is_file() and not (out / "sentinel.txt").exists()


def test_a_failed_export_leaves_the_existing_out_as_it_was(tok, tmp_path) -> None:
    """The read-back check fails (an MoE Llama): an empty out= stays, and nothing is left beside it."""
    if "llama_moe_tiny" not in zoo.list_models():
        pytest.skip("no MoE model config")
    moe = zoo.create_model("llama_moe_tiny", vocab_size=len(tok), n_ctx=32, d_model=32, n_layers=1)
    out = tmp_path / "empty"
    out.mkdir()
    with pytest.raises(ZooError, match="does not reproduce the model"):
        export(moe, out, tokenizer=tok)
    assert out.is_dir() and not any(out.iterdir()) and [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_export_refuses_the_published_checkpoints_and_the_source_folder(tok, tmp_path, monkeypatch) -> None:
    root = tmp_path / "checkpoints"
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(root))
    src, model = _tiny_llama_folder(tok, root / "tiny-llama")
    before = sorted(p.name for p in src.iterdir())
    for out in (root / "tiny-llama", root / "tiny-llama" / "hf", root / "other", root, tmp_path):
        with pytest.raises(ZooError, match="inside \\(or holds\\) the published checkpoints"):
            export(model, out, tokenizer=tok)
    other, _ = _tiny_llama_folder(tok, tmp_path / "elsewhere" / "src")
    for out in (other, other / "hf", other.parent):
        with pytest.raises(ZooError, match="overlaps the model folder it exports"):
            export(other, out, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == before
    assert sorted(p.name for p in other.iterdir()) == before and not (other / "hf").exists()
