"""A run killed at any moment resumes to the same weights as a run that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TINY = [
    "recipe=quickstart", "logger=csv", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
    "data.n_ctx=32", "data.batch_size=4", "data.tokenizer.vocab_size=300", "data.tokenizer.train_bytes=200000",
    "optim.warmup_steps=5", "trainer.max_steps=60", "checkpoint.every_n_train_steps=5",
    "report.splits=[]", "trainer.enable_progress_bar=false",
]


def fit(out_dir: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoo.fit", *TINY, f"out_dir={out_dir}", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if wait:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    return proc


def last_ckpt(out_dir: Path) -> Path:
    (path,) = (out_dir / "quickstart").glob("*/checkpoints/last.ckpt")
    return path


def saved_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def wait_for_step(out_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
    """Return as soon as ``last.ckpt`` holds ``step`` or later, with the run frozen by SIGSTOP.

    A tiny step takes milliseconds on a fast machine, so the run is stopped the moment the
    checkpoint is seen: otherwise it could finish its remaining steps before the signal lands.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        paths = list((out_dir / "quickstart").glob("*/checkpoints/last.ckpt"))
        try:
            reached = bool(paths) and saved_step(paths[0]) >= step
        except (RuntimeError, EOFError, OSError):  # caught mid-write or mid-rename: look again
            reached = False
        if reached:
            proc.send_signal(signal.SIGSTOP)
            return
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint at step {step}")


def interrupt(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to a run frozen by :func:`wait_for_step` and let it wake to handle it."""
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)


def weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 60
    return ckpt["state_dict"]



@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted")
    fit(out)
    return weights(last_ckpt(out))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


# SIGKILL in the default pass; the graceful SIGTERM path (~50 s) in the slow pass
@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_killed_run_resumes_to_identical_weights(sig, uninterrupted, tmp_path) -> None:
    proc = fit(tmp_path, wait=False)
    wait_for_step(tmp_path, proc, 5)  # mid-epoch: an epoch has thousands of steps here
    interrupt(proc, sig)
    out, _ = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:  # graceful: it saved where it stopped and exited cleanly
        assert "continue with resume=auto" in out, out[-2000:]
    stopped_at = saved_step(last_ckpt(tmp_path))
    assert 5 <= stopped_at < 60
    fit(tmp_path, "resume=auto")
    assert_same(weights(last_ckpt(tmp_path)), uninterrupted)


@pytest.mark.slow  # a subprocess fit driven to a non-finite loss (~16 s)
def test_non_finite_loss_stops_with_a_clear_message(tmp_path) -> None:
    proc = fit(tmp_path, "optim.lr=1e30", "optim.warmup_steps=0", wait=False)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, out[-2000:]
    assert "non-finite" in out and "at step" in out and "Traceback" not in out


def test_non_finite_steps_can_be_skipped(tmp_path, cache_dir) -> None:
    from zoo.recipes import compose
    from zoo.training import train

    cfg = compose("quickstart", [*TINY[1:], "logger=none", "optim.lr=1e30", "optim.warmup_steps=0",
                                 "nonfinite=skip", "trainer.max_steps=6", "trainer.limit_val_batches=2"])
    train(cfg, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())  # NaN never reached the weights
