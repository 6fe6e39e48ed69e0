"""LoRA adapters on a frozen zoo model (zoo.models.adapters) and the ``adapter_math`` recipe.

A tiny base is trained on edu inside the tests (a few steps), so nothing here needs
``checkpoints/``. Shown: only adapter weights get gradients (and the base weights do not
move in a real run); the adapter is saved alone (a small file) and reloads onto the base to
identical logits; merging it gives the unmerged logits within float tolerance; the merged
export is an ordinary model folder; a different base is refused.
"""

from __future__ import annotations

import pytest
import torch

from zoo.errors import ZooError
from zoo.hub.folder import load_adapter, load_pretrained, model_state, read_checkpoint
from zoo.models import build_model
from zoo.models.adapters import add_lora, is_adapted, load_base_state, merge_adapter
from zoo.models.mixer import MaskedMixerLM
from zoo.recipes import compose
from zoo.training import train

#: the tiny sizes of the base and of the adapter run (they must agree)
SIZES = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.n_ctx=32", "data.batch_size=4",
         "trainer.enable_progress_bar=false", "optim.warmup_steps=2", "trainer.limit_val_batches=2"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, cache_dir):
    """A tiny Llama trained on edu for a few steps and exported (stands in for checkpoints/llama-edu)."""
    out = tmp_path_factory.mktemp("base")
    cfg = compose("quickstart", [*SIZES, "data.tokenizer.vocab_size=300", "data.tokenizer.train_bytes=200000",
                                 "trainer.max_steps=4", "trainer.val_check_interval=4", "logger=none",
                                 "report.splits=[]"])
    train(cfg, out / "run")
    return out / "run" / "model"


@pytest.fixture(scope="module")
def math_sample(tmp_path_factory):
    """400 documents of the embedded math corpus as a .jsonl (tokenising all 23 MB of it with
    the tests' tiny tokenizer would take minutes)."""
    import itertools
    import json

    from zoo.data.sources import build_source

    path = tmp_path_factory.mktemp("math") / "math.jsonl"
    docs = itertools.islice(build_source({"name": "math"}).documents("train"), 400)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def adapter_run(tiny_base, math_sample, tmp_path_factory):
    """``python -m zoo.fit recipe=adapter_math trainer.max_steps=20`` on the tiny base (math
    documents from a sample of the same corpus)."""
    out = tmp_path_factory.mktemp("adapter") / "run"
    cfg = compose("adapter_math", [*SIZES, f"init_from={tiny_base}", "trainer.max_steps=20",
                                   "data=files", f"data.sources.0.paths=[{math_sample}]",
                                   "data.sources.0.val_fraction=0.1", "data.sources.0.split_salt=sample",
                                   "trainer.val_check_interval=10", "logger=csv", "report.splits=[val]",
                                   "report.compressors=[gzip]", "optim.lr=1e-2"])
    report = train(cfg, out)
    return out, report, cfg


def test_adapter_math_trains_20_steps_and_saves_adapter_and_merged_model(adapter_run, tiny_base) -> None:
    out, report, _ = adapter_run
    assert 0 < report["splits"]["val"]["bpb"] < 10
    adapter = out / "adapter"
    for f in ("adapter_model.safetensors", "adapter_config.json", "zoo_adapter.yaml", "sha256.json"):
        assert (adapter / f).is_file()
    # the adapter alone is a small file next to the base's weights
    size = (adapter / "adapter_model.safetensors").stat().st_size
    assert size < 0.3 * (tiny_base / "model.safetensors").stat().st_size
    # model/ is the merged model: an ordinary zoo folder (no adapter in its config)
    merged, _, spec = load_pretrained(out / "model")
    assert "adapter" not in spec["model"] and not is_adapted(merged)


def test_only_adapter_weights_get_gradients(adapter_run, tiny_base) -> None:
    out, _, cfg = adapter_run
    base, tokenizer, spec = load_pretrained(tiny_base)
    model = build_model(dict(cfg.model), spec["vocab_size"], spec["n_ctx"])
    load_base_state(model, base.state_dict())
    ids = torch.randint(0, spec["vocab_size"], (2, 16))
    model(ids).logsumexp(-1).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in n for n in with_grad)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
    # and in the 20-step run the base weights did not move while the adapter's did
    trained = model_state(read_checkpoint(out / "checkpoints" / "last.ckpt"))
    base_state = base.state_dict()
    lora_b = [k for k in trained if ".lora_B." in k]
    assert lora_b and any(trained[k].abs().sum() > 0 for k in lora_b)  # B starts at zero
    for key, value in trained.items():
        if ".lora_" not in key:
            assert torch.equal(value, base_state[key.removeprefix("base_model.model.").replace(".base_layer.", ".")])


def live_model(report, cfg, spec):
    """The adapted model as training left it: built from its config, the best checkpoint's
    weights (the one the run exported)."""
    model = build_model(dict(cfg.model), spec["vocab_size"], spec["n_ctx"])
    model.load_state_dict(model_state(read_checkpoint(report["best_checkpoint"])))
    return model.eval()


@torch.no_grad()
def test_saved_adapter_reloads_to_identical_logits_and_merge_matches(adapter_run, tiny_base) -> None:
    out, report, cfg = adapter_run
    reloaded, _, spec = load_adapter(out / "adapter")  # base found from the recorded path
    assert is_adapted(reloaded)
    ids = torch.randint(0, spec["vocab_size"], (3, 32))
    mask = torch.ones_like(ids)
    expected = live_model(report, cfg, spec)(ids, mask)
    assert torch.equal(reloaded(ids, mask), expected)
    # merged into the base weights: the same logits within float tolerance
    merged, _, _ = load_adapter(out / "adapter", base=tiny_base, merge=True)
    assert not is_adapted(merged)
    torch.testing.assert_close(merged(ids, mask), expected, rtol=1e-4, atol=1e-4)
    exported, _, _ = load_pretrained(out / "model")
    torch.testing.assert_close(exported(ids, mask), expected, rtol=1e-4, atol=1e-4)
    # and the adapter changed the model: it is not the base
    base, _, _ = load_pretrained(tiny_base)
    assert not torch.allclose(base(ids, mask), expected, atol=1e-4)


def test_adapter_refuses_another_base(adapter_run, tmp_path) -> None:
    out, _, _ = adapter_run
    other = tmp_path / "other"
    base_dir = tmp_path / "copy"
    import shutil

    from zoo.hub.folder import save_pretrained

    model, tokenizer, spec = load_pretrained(load_adapter_base(out))
    shutil.copytree(load_adapter_base(out), base_dir)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_pretrained(model, tokenizer, spec, other)
    with pytest.raises(ZooError, match="other base weights"):
        load_adapter(out / "adapter", base=other)
    load_adapter(out / "adapter", base=base_dir)  # an identical copy is fine
    with pytest.raises(ZooError, match="not a zoo adapter folder"):
        load_adapter(tmp_path)


def load_adapter_base(out):
    import yaml

    return yaml.safe_load((out / "adapter" / "zoo_adapter.yaml").read_text())["base"]


def test_adapter_config_errors(tiny_base, math_sample, tmp_path) -> None:
    with pytest.raises(ZooError, match=r"adapter.rank is not an adapter option; options: method, r, alpha"):
        build_model({"family": "llama", "d_model": 16, "n_layers": 1, "n_heads": 2, "adapter": {"rank": 4}}, 32, 8)
    with pytest.raises(ZooError, match="adapter.target_modules"):
        build_model({"family": "llama", "d_model": 16, "n_layers": 1, "n_heads": 2,
                     "adapter": {"target_modules": ["nope_proj"]}}, 32, 8)
    with pytest.raises(ZooError, match="set init_from"):
        train(compose("adapter_math", [*SIZES, "init_from=null", "data.tokenizer.path=" + str(tiny_base),
                                       "logger=none"]), tmp_path / "x")
    # a base of another size: one line, not a traceback
    with pytest.raises(ZooError, match="weights do not fit this model"):
        train(compose("adapter_math", [*SIZES, "model.d_model=64", f"init_from={tiny_base}", "logger=none",
                                       "data=files", f"data.sources.0.paths=[{math_sample}]",
                                       "data.sources.0.val_fraction=0.1", "data.sources.0.split_salt=sample"]),
              tmp_path / "y")


@torch.no_grad()
def test_lora_on_the_masked_mixer() -> None:
    """The mixer's Linear layers take LoRA too; a fresh adapter (B = 0) leaves the logits as
    they were, and only adapter weights are trainable."""
    torch.manual_seed(0)
    base = MaskedMixerLM(60, 12, d_model=16, n_layers=2, heads=2).eval()
    ids = torch.randint(0, 60, (2, 12))
    before = base(ids)
    adapted = add_lora(base, {"r": 4})
    targets = {n.split(".")[-4] for n, _ in adapted.named_parameters() if ".lora_A." in n}
    assert targets == {"fc_in", "fc_out", "proj_in", "proj_out"}
    assert all((".lora_" in n) == p.requires_grad for n, p in adapted.named_parameters())
    assert torch.equal(adapted(ids), before)
    for n, p in adapted.named_parameters():
        if ".lora_B." in n:
            p.normal_()
    changed = adapted(ids)
    merged = merge_adapter(adapted)
    assert isinstance(merged, MaskedMixerLM)
    torch.testing.assert_close(merged(ids), changed, rtol=1e-4, atol=1e-4)
