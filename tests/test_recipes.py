"""The recipes and their schema: every option is visible with its default, bad values fail in one
line before any work starts, and the composed configs are what they were before the trainer files
and the shared CPU size were factored out."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from zoo import schema
from zoo.cli import flatten_keys
from zoo.errors import ZooError
from zoo.recipes import compose, list_group, list_recipes, recipes_dir

ROOT = Path(__file__).resolve().parent.parent


def zoo_fit(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "ZOO_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "zoo.fit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


# --------------------------------------------------------------------------- every option shown
#: what recipe quickstart sets differently from the schema's defaults (via recipes/scale/cpu.yaml)
QUICKSTART = {"name": "quickstart", "data.tokenizer.vocab_size": 4096, "optim.lr": 3.0e-3, "optim.warmup_steps": 30}


def test_cfg_job_shows_every_option_with_its_default(tmp_path) -> None:
    proc = zoo_fit("recipe=quickstart", "--cfg", "job", cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = yaml.safe_load(proc.stdout)
    flat = flatten_keys(shown)
    expected = flatten_keys(schema.defaults())
    for key in schema.keys():  # every key of the schema is printed ...
        node: object = shown
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"--cfg job lacks {key}"
            node = node[part]
    for key, default in expected.items():  # ... each with its default (or quickstart's value)
        if key in ("data.sources", "trainer", "model", "logger"):
            continue
        assert flat[key] == QUICKSTART.get(key, default), key
    assert shown["loss"] == {"kind": "ce", "alpha": 2.5}
    assert shown["entropy"] == {"estimates": None, "train_documents": None}  # off
    assert shown["weight_entropy"] == {"every_n_steps": None, "bins": 256, "plot": True}  # off
    assert shown["trainer"]["max_steps"] == 300 and shown["model"]["family"] == "llama"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_schema_defaults_are_default_yaml() -> None:
    """The schema and recipes/base/default.yaml carry the same defaults and the same keys."""
    base = yaml.safe_load((recipes_dir() / "base" / "default.yaml").read_text())
    base.pop("hydra")
    ours = schema.defaults()
    for section in schema.OPEN_SECTIONS:  # chosen by groups, not in base
        ours.pop(section)
    assert flatten_keys(base) == flatten_keys(ours)
    optim = dataclasses.asdict(schema.OptimOptions())
    assert optim == {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8,
                     "warmup_steps": 100, "schedule": "cosine", "min_lr_ratio": 0.1, "fused": False,
                     "temperature": 1e-6}
    assert (schema.DEFAULT_VOCAB_SIZE, schema.DEFAULT_N_CTX) == (8192, 256)


def test_schema_names_match_the_code_that_uses_them() -> None:
    import inspect

    import lightning as L

    from zoo.data.tokenizer import SPECIAL_TOKENS
    from zoo.objectives import list_objectives

    assert set(schema.LOSS_KINDS) <= set(list_objectives())
    assert schema.MIN_VOCAB_SIZE == 256 + len(SPECIAL_TOKENS)
    assert schema.trainer_arguments() == set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


def test_schema_and_recipes_import_no_torch() -> None:
    code = "import sys, zoo.schema, zoo.recipes, zoo.fit; sys.exit(int(any(m in sys.modules for m in ('torch', 'lightning'))))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("override, message", [
    ("optim.min_lr_ratio=-0.5", "optim.min_lr_ratio must be a number in [0, 1]; got -0.5"),  # range
    ("trainer.max_steps=1.5", "trainer.max_steps must be a positive integer, or -1 (no limit); got 1.5"),  # type
    ("data.batch_size=abc", "data.batch_size must be a positive integer; got 'abc'"),  # type
], ids=["range", "float-for-int", "str-for-int"])
def test_bad_value_fails_in_one_line_before_any_work(override, message, tmp_path) -> None:
    cache = tmp_path / "cache"
    proc = zoo_fit("recipe=quickstart", override, cwd=tmp_path, cache=cache)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {message}"]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not cache.exists() and not (tmp_path / "runs").exists()


BAD = [
    ("optim.lr=0", "optim.lr must be a positive number; got 0"),
    ("optim.lr=-1e-3", "optim.lr must be a positive number; got -0.001"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio must be a number in [0, 1]; got 1.5"),
    ("optim.warmup_steps=2.5", "optim.warmup_steps must be an integer >= 0; got 2.5"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be an integer >= 0; got -1"),
    ("optim.schedule=step", "optim.schedule must be one of cosine, linear, constant; got 'step'"),
    ("optim.name=sgd", "optim.name must be one of adamw, adamw8bit, sgld, psgld; got 'sgd'"),
    ("optim.betas=[0.9]", "optim.betas must be a list of 2 numbers in [0, 1); got [0.9]"),
    ("optim.fused=3", "optim.fused must be true or false; got 3"),
    ("trainer.max_steps=-2", "trainer.max_steps must be a positive integer, or -1 (no limit); got -2"),
    ("trainer.max_steps=abc", "trainer.max_steps must be a positive integer, or -1 (no limit); got 'abc'"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval must be a positive integer (steps)"),
    ("+trainer.max_stepss=3", "trainer.max_stepss is not a Lightning Trainer argument (did you mean 'max_steps'?)"),
    ("data.n_ctx=0", "data.n_ctx must be a positive integer; got 0"),
    ("data.eval_batch_size=-4", "data.eval_batch_size must be a positive integer or null; got -4"),
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0; got -1"),
    ("data.tokenizer.vocab_size=257", "data.tokenizer.vocab_size must be an integer >= 258; got 257"),
    ("data.layout=padded", "data.layout must be one of packed, left_padded; got 'padded'"),
    ("checkpoint.every_n_train_steps=0", "checkpoint.every_n_train_steps must be a positive integer; got 0"),
    ("nonfinite=ignore", "nonfinite must be one of stop, skip; got 'ignore'"),
    ("loss.kind=mse", "loss.kind must be one of ce, entropy_l1, entropy_clip; got 'mse'"),
    ("loss.alpha=0", "loss.alpha must be a positive number; got 0"),
    ("report.splits=[train,tset]", "report.splits must be a list with items from train, val, test; got ['train', 'tset']"),
    ("report.compressors=[zip]", "report.compressors must be a list with items from gzip, bz2, xz, zstd, ppmd; got ['zip']"),
    ("entropy.train_documents=0", "entropy.train_documents must be a positive integer or null; got 0"),
    ("model.d_model=0", "model.d_model must be a positive integer; got 0"),
    ("model.n_heads=2.5", "model.n_heads must be a positive integer; got 2.5"),
    ("seed=-1", "seed must be an integer in [0, 4294967295]; got -1"),
    ("optim.lrr=1", "unknown config key 'optim.lrr' (did you mean 'lr'?); keys of 'optim': name, lr,"),
    ("+data.shuffle=1", "unknown config key 'data.shuffle'; keys of 'data': sources, layout,"),
    ("model=llama_huge", "unknown model option 'llama_huge'"),
    ("trainer=tpu", "unknown trainer option 'tpu'"),
    ("data.sources.2.min_chars=3", "data.sources has 1 entry (indices 0..0)"),
    ("weight_entropy.every=3", "unknown config key 'weight_entropy.every'; keys of 'weight_entropy': every_n_steps, bins, plot"),
]


@pytest.mark.parametrize("override, message", BAD, ids=[b[0] for b in BAD])
def test_bad_override_is_refused(override, message) -> None:
    with pytest.raises(ZooError) as e:
        compose("quickstart", [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_nested_model_sizes_are_checked() -> None:
    with pytest.raises(ZooError, match=r"^model.encoder.n_layers must be a positive integer; got -1$"):
        compose("eacd_transformer", ["model.encoder.n_layers=-1"])
    with pytest.raises(ZooError, match=r"^model.moe.d_ff must be a positive integer; got 'wide'$"):
        compose("moe_clm", ["model.moe.d_ff=wide"])


def test_good_overrides_pass() -> None:
    cfg = compose("quickstart", ["optim.min_lr_ratio=0", "optim.schedule=linear", "trainer.max_steps=-1",
                                 "trainer.val_check_interval=0.5", "report.splits=[val]", "loss.kind=entropy_clip",
                                 "data.tokenizer.vocab_size=258", "checkpoint.every_n_minutes=30"])
    assert cfg.optim.min_lr_ratio == 0 and cfg.trainer.max_steps == -1 and list(cfg.report.splits) == ["val"]


def test_setting_a_key_turns_an_optional_section_on() -> None:
    """``entropy`` and ``weight_entropy`` are off until one of their keys is set (no '+' needed)."""
    cfg = compose("quickstart", ["entropy.train_documents=500", "weight_entropy.every_n_steps=10"])
    assert OmegaConf.to_container(cfg.entropy) == {"estimates": None, "train_documents": 500}
    assert OmegaConf.to_container(cfg.weight_entropy) == {"every_n_steps": 10, "bins": 256, "plot": True}
    cfg = compose("entropy_ce", ["entropy.train_documents=100"])  # already on: a plain override
    assert cfg.entropy.train_documents == 100 and cfg.entropy.estimates is None


# --------------------------------------------------------------------------- composition
@pytest.mark.slow
def test_every_recipe_with_every_trainer_validates() -> None:
    for recipe in list_recipes():
        for trainer in [None, *list_group("trainer")]:
            cfg = compose(recipe, [] if trainer is None else [f"trainer={trainer}"])
            assert cfg.name == recipe


CPU = {
    "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "32-true",
    "max_steps": 1000, "max_epochs": -1, "val_check_interval": 200, "check_val_every_n_epoch": None,
    "limit_val_batches": None, "num_sanity_val_steps": 0, "log_every_n_steps": 10, "gradient_clip_val": 1.0,
    "accumulate_grad_batches": 1, "deterministic": False, "enable_progress_bar": True,
}
#: each trainer option's full section, as the six files spelled it out before they were factored
TRAINERS = {
    "cpu": CPU,
    "ddp_cpu": {**CPU, "devices": 2, "strategy": "ddp"},
    "fsdp2_cpu": {**CPU, "devices": 2, "strategy": "fsdp2"},
    "gpu": {**CPU, "accelerator": "gpu", "precision": "bf16-mixed"},
    "ddp": {**CPU, "accelerator": "gpu", "devices": -1, "strategy": "ddp", "precision": "bf16-mixed"},
    "fsdp": {**CPU, "accelerator": "gpu", "devices": -1, "strategy": "fsdp", "precision": "bf16-mixed"},
}


def test_trainer_options_compose_to_their_full_sections() -> None:
    assert sorted(TRAINERS) == list_group("trainer")
    for name, expected in TRAINERS.items():
        cfg = compose("clm", [f"trainer={name}"])
        assert OmegaConf.to_container(cfg.trainer) == {**expected, "max_steps": 2000, "val_check_interval": 250}, name
        # and the recipe's keys still win over every trainer option's
        cfg = compose("entropy_ce", [f"trainer={name}"])
        assert cfg.trainer.max_epochs == 15 and cfg.trainer.val_check_interval == 1.0 and cfg.trainer.devices == expected["devices"]


#: the CPU-size values each recipe had written out before recipes/scale/cpu.yaml held them
SMALL = {"quickstart": 3e-3, "moe_clm": 3e-3, "mixer_clm": 1e-2, "moe_mixer": 1e-2, "eacd_mixer": 1e-2,
         "eacd_transformer": 2e-3, "eacd_noise": 2e-3, "eacd_noise_before": 2e-3}


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu", "gpu"])
def test_shared_cpu_size(trainer) -> None:
    for recipe, lr in SMALL.items():
        cfg = compose(recipe, [f"trainer={trainer}"])
        assert (cfg.data.n_ctx, cfg.data.batch_size, cfg.data.tokenizer.vocab_size) == (256, 16, 4096), recipe
        assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval) == (300, 100), recipe
        assert (cfg.optim.lr, cfg.optim.warmup_steps) == (lr, 30), recipe
        assert OmegaConf.to_container(cfg.trainer) == {**TRAINERS[trainer], "max_steps": 300, "val_check_interval": 100}
    layouts = {r: compose(r).data.layout for r in SMALL}
    assert layouts == {**dict.fromkeys(SMALL, "packed"), **dict.fromkeys(
        ["eacd_mixer", "eacd_transformer", "eacd_noise", "eacd_noise_before"], "left_padded")}
    clm = compose("clm")  # not a small recipe: the base's sizes
    assert (clm.data.tokenizer.vocab_size, clm.optim.warmup_steps) == (8192, 100)
