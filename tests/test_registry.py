"""The registry: every registered model builds and runs a forward; names, errors, manifests."""

from __future__ import annotations

import json

import pytest
import torch

import zoo
from zoo.errors import ZooError
from zoo.hub.manifest import verify_manifest
from zoo.hub.registry import list_models, model_info
from zoo.models import count_parameters


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_runs_a_forward(name) -> None:
    """Model configs are built at their real sizes (with a small vocabulary and context);
    published models with their trained weights."""
    info = model_info(name)
    if info.pretrained:
        model = zoo.create_model(name, pretrained=True)
        vocab, n_ctx = info.vocab_size, info.n_ctx
    else:
        vocab, n_ctx = 258, 32
        model = zoo.create_model(name, vocab_size=vocab, n_ctx=n_ctx)
    assert isinstance(model, torch.nn.Module) and count_parameters(model) > 0
    ids = torch.randint(2, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row
    with torch.no_grad():
        logits = model.eval()(ids, mask)
    assert logits.shape == (2, 16, vocab)
    assert torch.isfinite(logits[:, 5:]).all()


def test_top_level_exports() -> None:
    assert zoo.list_models is list_models
    assert {"llama_tiny", "mixer_tiny", "eacd_mixer_tiny", "eacd_transformer_tiny"} <= set(zoo.list_models())
    assert zoo.list_models("*_TINY") == sorted(n for n in zoo.list_models() if n.endswith("_tiny"))
    assert zoo.list_models("nothing-like-this*") == []
    assert all(model_info(n).pretrained for n in zoo.list_models(pretrained=True))
    assert not any(model_info(n).pretrained for n in zoo.list_models(pretrained=False))


def test_create_model_overrides() -> None:
    m = zoo.create_model("llama_tiny", vocab_size=300, n_ctx=16, d_model=32, n_layers=1)
    assert m.config.hidden_size == 32 and m.config.num_hidden_layers == 1 and m.config.vocab_size == 300
    e = zoo.create_model("eacd_mixer_tiny", vocab_size=300, n_ctx=16, encoder={"n_layers": 1})
    assert len(e.encoder.blocks if hasattr(e.encoder, "blocks") else list(e.encoder.children())) >= 1
    with pytest.raises(ZooError, match="not an option of family 'llama'"):
        zoo.create_model("llama_tiny", vocab_size=300, d_modle=32)


def test_unknown_names_get_one_line_with_a_suggestion() -> None:
    with pytest.raises(ZooError, match=r"unknown model 'llama_tinny' \(did you mean 'llama_tiny'\?\); available: "):
        zoo.create_model("llama_tinny")
    with pytest.raises(ZooError, match=r"did you mean 'mixer_tiny'"):
        zoo.load("mixer_tin")
    with pytest.raises(ZooError, match="model config with no trained weights"):
        zoo.load("llama_tiny")
    with pytest.raises(ZooError, match="model config with no trained weights"):
        zoo.create_model("mixer_tiny", pretrained=True)


def test_models_table_lists_every_name() -> None:
    from zoo.hub.listing import table

    out = table()
    for name in list_models():
        assert name in out
    assert "no registered model matches" in table("zzz*")


def _publish_tiny(root, name="tiny-edu"):
    """A hand-made published folder + manifest entry in ``root`` (no training)."""
    from zoo.data.tokenizer import train_bpe
    from zoo.hub.checksums import sha256
    from zoo.hub.folder import save_pretrained
    from zoo.models import build_model

    tok = train_bpe(["a few words of text for a tokenizer, again and again"] * 20, vocab_size=300)
    cfg = {"family": "mixer", "d_model": 16, "n_layers": 1}
    folder = save_pretrained(build_model(cfg, len(tok), 16), tok, {"model": cfg, "vocab_size": len(tok), "n_ctx": 16},
                             root / name)
    files = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    (root / "manifest.json").write_text(json.dumps({"models": {name: {"family": "mixer", "files": files,
                                                                      "parameters": 1, "metrics": {}}}}))
    return folder, tok


def test_published_models_load_by_name_and_tampering_is_caught(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path))
    folder, tok = _publish_tiny(tmp_path)
    assert "tiny-edu" in zoo.list_models(pretrained=True)
    model, tokenizer = zoo.load("tiny-edu")
    assert len(tokenizer) == len(tok) and not model.training
    assert zoo.create_model("tiny-edu").embed.weight.shape == model.embed.weight.shape  # architecture only
    model2, _ = zoo.load(folder)  # a path works too
    assert torch.equal(model2.embed.weight, model.embed.weight)
    with pytest.raises(ZooError, match="takes no overrides"):
        zoo.create_model("tiny-edu", pretrained=True, d_model=8)
    (folder / "notes.txt").write_text("x")
    with pytest.raises(ZooError, match="files not in manifest.json: notes.txt"):
        verify_manifest("tiny-edu")
    (folder / "notes.txt").unlink()
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ZooError, match="checksum mismatch .* manifest.json"):
        zoo.load("tiny-edu")


def test_init_from_accepts_a_published_name(tmp_path, monkeypatch) -> None:
    from zoo.lit.language_model import LanguageModelTask
    from zoo.training import init_weights_from

    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path))
    folder, tok = _publish_tiny(tmp_path)
    task = LanguageModelTask({"family": "mixer", "d_model": 16, "n_layers": 1}, len(tok), 16)
    init_weights_from(task, "tiny-edu", tok)
    model, _ = zoo.load("tiny-edu")
    assert torch.equal(task.model.embed.weight, model.embed.weight)
    with pytest.raises(ZooError, match=r"init_from=tiny-eud: no such .*did you mean 'tiny-edu'"):
        init_weights_from(task, "tiny-eud", tok)


def test_data_description_sums_the_shares_of_one_source_name() -> None:
    from omegaconf import OmegaConf

    from zoo.hub.registry import data_description
    from zoo.recipes import compose

    run = OmegaConf.to_container(compose("general"), resolve=True)
    assert data_description(run) == "edu 35% + bible 15% + docstrings 20% + python-code 15% + math 15%"
    assert data_description({"data": {"sources": [{"name": "edu"}]}}) == "edu"
    assert data_description(None) == ""
