"""Training throughput on 1 vs 2 processes (DDP, gloo on CPU; NCCL on GPUs) through zoo.fit.

Runs the same recipe twice in one go, first on one process with per-device batch b, then on
two processes with per-device batch b (twice the global batch), and prints tokens/s and the
scaling efficiency = (tokens/s on 2) / (2 x tokens/s on 1). Throughput is read from the
wall-clock time between two training steps logged by the run (after a warm-up), so import,
data preparation and evaluation time do not count.

    python benchmarks/ddp_scaling.py [--steps 60] [--model llama_small] [--accelerator cpu]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(out: Path, devices: int, args: argparse.Namespace) -> float:
    trainer = "cpu" if devices == 1 else "ddp_cpu"
    if args.accelerator == "gpu":
        trainer = "gpu" if devices == 1 else "ddp"
    cmd = [
        sys.executable, "-m", "zoo.fit", "recipe=quickstart", f"trainer={trainer}", f"model={args.model}",
        f"trainer.devices={devices}", f"trainer.max_steps={args.steps}", "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=100000", "trainer.limit_val_batches=0", "report.splits=[]",
        f"data.batch_size={args.batch_size}", f"data.n_ctx={args.n_ctx}", "logger=csv",
        "trainer.enable_progress_bar=false", f"out_dir={out}", "checkpoint.every_n_train_steps=100000",
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, env=os.environ, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    metrics = next(out.glob("quickstart/*/csv/metrics.csv"))
    with open(metrics) as f:  # ThroughputMonitor's rolling mean over the last 20 steps
        rows = [r for r in csv.DictReader(f) if r.get("train/items_per_sec") or r.get("train/device/items_per_sec")]
    last = rows[-1]
    tokens_per_s = float(last.get("train/items_per_sec") or last["train/device/items_per_sec"])
    print(f"  {devices} process(es): {tokens_per_s:10,.0f} tokens/s  (whole run {time.time() - t0:.0f} s)")
    return tokens_per_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--model", default="llama_small")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(Path(tmp) / "one", 1, args)
        two = run(Path(tmp) / "two", 2, args)
    print("\n| processes | per-device batch | tokens/s | scaling efficiency |\n|---|---|---|---|")
    print(f"| 1 | {args.batch_size} | {one:,.0f} | 1.00 |")
    print(f"| 2 | {args.batch_size} | {two:,.0f} | {two / (2 * one):.2f} |")


if __name__ == "__main__":
    main()
