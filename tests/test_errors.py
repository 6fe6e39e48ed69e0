"""Bad input gets a clear error (what was wrong, what is allowed) and never runs foreign code.

Each row of BAD_INPUT is one line of the error table in docs/reliability.md: the command-line arguments
and a fragment of the message the user must see.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.errors import ZooError
from zoo.hub.folder import load_pretrained, read_checkpoint

# (what the user did wrong, extra zoo.fit arguments, expected fragment of the message)
BAD_INPUT = [
    ("unknown recipe", ["recipe=nope"], "unknown recipe 'nope'; available:"),
    ("mistyped config key", ["trainer.max_stepz=3"], "unknown config key 'trainer.max_stepz' (did you mean 'max_steps'?)"),
    ("wrong value type", ["trainer.max_steps=abc"], "trainer.max_steps must be a positive integer, or -1 (no limit); got 'abc'"),
    ("zero training steps", ["trainer.max_steps=0"], "trainer.max_steps must be a positive integer, or -1 (no limit); got 0"),
    ("value out of range", ["optim.min_lr_ratio=-0.5"], "optim.min_lr_ratio must be a number in [0, 1]; got -0.5"),
    ("unknown group option", ["model=llama_huge"], "unknown model option 'llama_huge'"),
    ("unknown source name", ["data.sources.0.name=wiki"], "unknown data source 'wiki'"),
    ("missing data path", ["data=files", "data.sources.0.paths=/nowhere/*.txt"], "matches no file"),
    ("FSDP on CPU", ["trainer.strategy=fsdp"], "invalid trainer configuration"),
    ("resume from a missing checkpoint", ["resume=/nowhere/last.ckpt"], "no such checkpoint file"),
]


def zoo_fit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "zoo.fit"]
    if not any(a.startswith("recipe=") for a in args):
        cmd.append("recipe=quickstart")
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([*cmd, "logger=none", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("what, args, message", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_message(what, args, message, tmp_path, cache_dir) -> None:
    proc = zoo_fit(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


class CreatesAFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.slow  # a subprocess fit that must refuse the file (~20 s)
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "zoo": {}, "payload": CreatesAFile(marker)}, f)
    with pytest.raises(ZooError, match="weights_only"):
        read_checkpoint(evil)
    assert not marker.exists()
    for cli in (["zoo.evaluate", f"checkpoint={evil}"], ["zoo.fit", "recipe=quickstart", f"resume={evil}"]):
        proc = subprocess.run([sys.executable, "-m", *cli], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "refusing" in proc.stderr, proc.stderr[-2000:]
        assert not marker.exists()


def test_truncated_and_foreign_checkpoints(tmp_path) -> None:
    good = {"state_dict": {"model.w": torch.zeros(3)}, "zoo": {"config": {}, "tokenizer": ""}}
    torch.save(good, tmp_path / "good.ckpt")
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ZooError, match="unable to read checkpoint"):
        read_checkpoint(tmp_path / "cut.ckpt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(ZooError, match="not a zoo training checkpoint"):
        read_checkpoint(tmp_path / "other.ckpt")


def test_corrupted_byte_in_a_saved_model_is_caught_by_its_checksum(tmp_path) -> None:
    from zoo.data.tokenizer import train_bpe
    from zoo.hub.folder import save_pretrained
    from zoo.models import build_model

    tok = train_bpe(["some text for a tokenizer"] * 20, vocab_size=300)
    spec = {"model": {"family": "llama", "d_model": 16, "n_layers": 1, "n_heads": 2}, "vocab_size": len(tok), "n_ctx": 16}
    folder = save_pretrained(build_model(spec["model"], len(tok), 16), tok, spec, tmp_path / "m")
    load_pretrained(folder)  # intact: loads
    weights = folder / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # flip one bit of one byte
    weights.write_bytes(bytes(blob))
    with pytest.raises(ZooError, match="checksum mismatch for .*model.safetensors"):
        load_pretrained(folder)


def test_init_from_a_checkpoint_of_another_family(tmp_path) -> None:
    from zoo.data.tokenizer import train_bpe
    from zoo.hub.folder import save_pretrained
    from zoo.lit.language_model import LanguageModelTask
    from zoo.models import build_model
    from zoo.training import init_weights_from

    tok = train_bpe(["some text for a tokenizer"] * 20, vocab_size=300)
    mixer = {"family": "mixer", "d_model": 16, "n_layers": 1}
    folder = save_pretrained(build_model(mixer, len(tok), 16), tok, {"model": mixer, "vocab_size": len(tok), "n_ctx": 16},
                             tmp_path / "mixer")
    llama = LanguageModelTask({"family": "llama", "d_model": 16, "n_layers": 1, "n_heads": 2}, len(tok), 16)
    with pytest.raises(ZooError, match="weights do not fit this model"):
        init_weights_from(llama, str(folder), tok)
