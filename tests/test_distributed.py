"""Multi-process training through Lightning's strategies, with 2 CPU processes (gloo)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.data.sharding import EvalShardSampler, GlobalBatchSampler
from zoo.evaluate import evaluate, load_task

TINY = [
    "recipe=quickstart", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "data.n_ctx=32",
    "data.tokenizer.vocab_size=300", "data.tokenizer.train_bytes=200000", "optim.warmup_steps=2",
    "trainer.max_steps=8", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "report.splits=[val]",
]


def fit(out_dir: Path, *extra: str) -> Path:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.fit", *TINY, f"out_dir={out_dir}", *extra],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (out_dir / "quickstart").iterdir()
    return run_dir


def losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# -- samplers (pure functions, no processes) --------------------------------------------------
@pytest.mark.parametrize("n, batch", [(1000, 8), (997, 4)])
def test_ranks_see_disjoint_samples_that_cover_the_epoch(n, batch) -> None:
    shards = [sum(GlobalBatchSampler(n, batch, seed=3, rank=r, world_size=2), []) for r in range(2)]
    union = shards[0] + shards[1]
    assert len(set(union)) == len(union)  # no sample on two ranks
    assert len(union) == n - n % (2 * batch)  # everything but the last incomplete global batch
    single = sum(GlobalBatchSampler(n, 2 * batch, seed=3), [])
    for k in range(len(single) // (2 * batch)):  # each global batch = the single-process batch
        assert single[2 * batch * k : 2 * batch * (k + 1)] == (
            shards[0][batch * k : batch * (k + 1)] + shards[1][batch * k : batch * (k + 1)]
        )
    evals = [list(EvalShardSampler(n, r, 2)) for r in range(2)]
    assert sorted(evals[0] + evals[1]) == list(range(n))  # evaluation: complete, no padding


# -- real 2-process runs ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def single_and_ddp(tmp_path_factory, cache_dir):
    base = tmp_path_factory.mktemp("dist")
    single = fit(base / "single", "trainer=cpu", "data.batch_size=8", "logger=csv")
    ddp = fit(base / "ddp", "trainer=ddp_cpu", "data.batch_size=4", "logger.kind=[wandb,csv]")
    return single, ddp


@pytest.mark.slow
def test_ddp_loss_trajectory_matches_single_process(single_and_ddp) -> None:
    single, ddp = single_and_ddp
    a, b = losses(single), losses(ddp)
    assert len(a) == len(b) == 8
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)
    for k, v in state(single / "checkpoints" / "last.ckpt").items():
        torch.testing.assert_close(state(ddp / "checkpoints" / "last.ckpt")[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ddp_validation_bpb_equals_single_process_bpb(single_and_ddp) -> None:
    _, ddp = single_and_ddp
    report = json.loads((ddp / "report.json").read_text())
    alone = evaluate(report["best_checkpoint"], split="val", accelerator="cpu")
    assert alone["bpb"] == pytest.approx(report["splits"]["val"]["bpb"], rel=1e-6)


@pytest.mark.slow
def test_ddp_writes_one_wandb_run_and_one_set_of_checkpoints(single_and_ddp) -> None:
    _, ddp = single_and_ddp
    assert len(list(ddp.glob("wandb/offline-run-*"))) == 1
    assert len(list(ddp.parent.iterdir())) == 1  # both ranks wrote into one run folder
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir() if p.suffix == ".ckpt") == [
        "best-8.ckpt", "last.ckpt",
    ]


@pytest.mark.slow
def test_fsdp2_trains_and_reloads_in_one_process(tmp_path, cache_dir) -> None:
    run = fit(tmp_path, "trainer=fsdp2_cpu", "data.batch_size=4", "logger=csv", "trainer.max_steps=4")
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()  # consolidated into one file, readable without a process group
    task, _, _ = load_task(ckpt)
    x = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        logits = task.model(x)
    exported, _, _ = load_task(run / "model")
    with torch.no_grad():
        torch.testing.assert_close(exported.model(x), logits)
    assert torch.isfinite(logits).all()
    # the sharded 2-process evaluation of that checkpoint equals the single-process one
    report = json.loads((run / "report.json").read_text())
    alone = evaluate(report["best_checkpoint"], split="val", accelerator="cpu")
    assert alone["bpb"] == pytest.approx(report["splits"]["val"]["bpb"], rel=1e-5)


def assert_same_training(a: dict, b: dict) -> None:
    """Weights of two runs that did the same steps on the same samples, one process against
    two: equal to summation-order rounding. AdamW divides by the root of the second moment,
    so a coordinate whose gradient is near zero can turn rounding into a visible difference;
    at most one in a thousand weights may differ by more than 1e-5, none by more than 1e-4
    (a lost, repeated or reordered batch moves nearly every weight by about the learning rate)."""
    for k in a:
        diff = (b[k].float() - a[k].float()).abs()
        assert diff.max() <= 1e-4 + 1e-4 * a[k].float().abs().max(), (k, float(diff.max()))
        assert (diff > 1e-5).float().mean() <= 1e-3, (k, float((diff > 1e-5).float().mean()))


@pytest.mark.slow
def test_single_process_checkpoint_resumes_under_ddp(tmp_path, cache_dir) -> None:
    """One process (batch 8) stopped by SIGTERM mid-run, resumed on two (batch 4 each), ends
    with the weights of an uninterrupted single-process run."""
    from test_resume import interrupt, saved_step, wait_for_step

    same = ("logger=csv", "optim.schedule=constant", "trainer.max_steps=100", "checkpoint.every_n_train_steps=2")
    straight = fit(tmp_path / "straight", "trainer=cpu", "data.batch_size=8", *same)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoo.fit", *TINY, f"out_dir={tmp_path / 'split'}", "trainer=cpu", "data.batch_size=8",
         *same], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_step(tmp_path / "split", proc, 10)
    interrupt(proc, signal.SIGTERM)
    proc.wait(timeout=120)
    (first,) = (tmp_path / "split" / "quickstart").iterdir()
    assert 10 <= saved_step(first / "checkpoints" / "last.ckpt") < 100
    resumed = fit(tmp_path / "split", "trainer=ddp_cpu", "data.batch_size=4", *same, "resume=auto")
    assert resumed == first  # continued in the same run folder
    a, b = state(straight / "checkpoints" / "last.ckpt"), state(resumed / "checkpoints" / "last.ckpt")
    assert_same_training(a, b)
