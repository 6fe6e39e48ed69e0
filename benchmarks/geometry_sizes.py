"""Matrix entropy against model size: does it follow a power law?

Trains one family (the quickstart Llama, ``recipe=quickstart``) at several widths ``d_model``
(same data: embedded edu, packed windows of ``--n-ctx`` tokens, the same 4k BPE, the same
batch and number of steps, i.e. the same training tokens; 4 layers, 4 heads), each through
``python -m zoo.fit`` on one torch thread. Each trained model is then measured with
``python -m zoo.geometry entropy`` (``--tokens`` val token representations per layer, α = 1,
Gram matrix of the unit rows), and ``S = c · N^β`` is fitted by least squares on
``log S = log c + β log N``, with ``N`` the non-embedding parameters, for

* the mean entropy over the block outputs (layers 1..L; the embedding, layer 0, left out),
* the last block's entropy,
* the mean of the normalised entropy ``S / log2 d`` over the blocks (raw entropy grows with
  ``log2 d`` just because there are more directions; the normalised one does not),

and the slope β, its R² and the log-log plot go to ``benchmarks/results/geometry_sizes.{json,md,png}``.
A run already finished in ``--work`` is measured again, not retrained.

    OMP_NUM_THREADS=1 python benchmarks/geometry_sizes.py [--sizes 32,48,64,96,128] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def train(d: int, work: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """The exported model folder of the run at width ``d`` (trained unless already there)."""
    out = work / f"d{d}"
    done = sorted(out.glob("quickstart/*/report.json"))
    if done:
        return done[-1].parent / "model", float("nan")
    cmd = [sys.executable, "-m", "zoo.fit", "recipe=quickstart", "logger=csv", f"out_dir={out}",
           f"model.d_model={d}", f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
           "trainer.enable_progress_bar=false", f"data.n_ctx={args.n_ctx}", f"data.batch_size={args.batch_size}",
           "report.splits=[val]", f"checkpoint.every_n_train_steps={args.steps}"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if proc.returncode:
        sys.exit(f"d={d} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    report = sorted(out.glob("quickstart/*/report.json"))[-1]
    return report.parent / "model", time.time() - t0


def measure(folder: Path, args: argparse.Namespace) -> dict:
    """``python -m zoo.geometry entropy`` on a model folder (its JSON result)."""
    target = folder.parent / "geometry_entropy.json"
    cmd = [sys.executable, "-m", "zoo.geometry", "entropy", f"checkpoint={folder}", "data=edu", "split=val",
           f"tokens={args.tokens}", "alpha=1", f"json={target}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if proc.returncode:
        sys.exit(f"measuring {folder} failed:\n{proc.stderr[-3000:]}")
    return json.loads(target.read_text())


def power_law(sizes: list[float], values: list[float]) -> dict:
    """Least squares of ``log y = log c + β log x``: ``beta``, ``c`` and ``r2`` (of the log fit)."""
    x, y = np.log(sizes), np.log(values)
    beta, logc = np.polyfit(x, y, 1)
    resid = y - (logc + beta * x)
    r2 = 1 - float((resid**2).sum()) / float(((y - y.mean()) ** 2).sum())
    return {"beta": float(beta), "c": float(math.exp(logc)), "r2": r2}


def non_embedding_parameters(folder: Path) -> tuple[int, float]:
    """Parameters outside the token embedding and the output head, and the val BPB of the run."""
    import torch

    from zoo.hub.folder import load_pretrained

    model, _tok, _spec = load_pretrained(folder)
    skip = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    skip |= {id(p) for n, p in model.named_parameters() if n.endswith("lm_head.weight")}
    n = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    report = json.loads((folder.parent / "report.json").read_text())
    return n, float(report["splits"]["val"]["bpb"])


MEASURES = [("mean_blocks", "mean S over blocks (bits)"), ("last_block", "last block S (bits)"),
            ("mean_fraction", "mean S / log2 d over blocks")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="32,48,64,96,128")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--n-ctx", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--work", default="/tmp/geo_sizes", help="where the runs are kept (reused when there)")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for d in [int(s) for s in args.sizes.split(",")]:
        folder, seconds = train(d, work, args)
        result = measure(folder, args)
        params, bpb = non_embedding_parameters(folder)
        blocks = result["layers"][1:]
        run = {"d_model": d, "non_embedding_parameters": params, "val_bpb": bpb, "train_seconds": seconds,
               "mean_blocks": float(np.mean([r["entropy_bits"] for r in blocks])),
               "last_block": blocks[-1]["entropy_bits"],
               "mean_fraction": float(np.mean([r["entropy_bits"] / math.log2(r["dim"]) for r in blocks])),
               "layers": result["layers"]}
        runs.append(run)
        print(f"  d={d}: {params:,} non-embedding parameters, val BPB {bpb:.4f}, "
              f"mean S {run['mean_blocks']:.3f} bits, last {run['last_block']:.3f} bits", flush=True)
    sizes = [r["non_embedding_parameters"] for r in runs]
    fits = {key: power_law(sizes, [r[key] for r in runs]) for key, _ in MEASURES}
    tokens = args.steps * args.batch_size * args.n_ctx
    lines = [f"Llama (quickstart recipe) at widths {args.sizes}, 4 layers x 4 heads; edu, packed n_ctx {args.n_ctx}, "
             f"4k BPE, {args.steps} steps x {args.batch_size} = {tokens:,} training tokens each, 1 torch thread. "
             f"Entropy: α = 1 (von Neumann), Gram matrix of {args.tokens} unit-normalised val token "
             "representations per layer.", "",
             "| d_model | non-embedding params | val BPB | layer S bits (0 = embedding, 1.. = blocks) "
             "| mean S over blocks | last block S | mean S / log2 d |",
             "|---:|---:|---:|---|---:|---:|---:|"]
    for r in runs:
        per_layer = ", ".join(f"{x['entropy_bits']:.2f}" for x in r["layers"])
        lines.append(f"| {r['d_model']} | {r['non_embedding_parameters']:,} | {r['val_bpb']:.4f} | {per_layer} | "
                     f"{r['mean_blocks']:.3f} | {r['last_block']:.3f} | {r['mean_fraction']:.3f} |")
    lines += ["", "Power law S = c · N^β (N: non-embedding parameters), least squares in log-log:", "",
              "| measure | β | c | R² |", "|---|---:|---:|---:|"]
    for key, label in MEASURES:
        f = fits[key]
        lines.append(f"| {label} | {f['beta']:.4f} | {f['c']:.4g} | {f['r2']:.4f} |")
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "geometry_sizes.md").write_text(table + "\n")
    (RESULTS / "geometry_sizes.json").write_text(json.dumps(
        {"args": vars(args), "machine": platform.processor() or platform.machine(), "runs": runs, "fits": fits},
        indent=1))
    plot(runs, fits, RESULTS / "geometry_sizes.png")


def plot(runs: list[dict], fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    n = np.array([r["non_embedding_parameters"] for r in runs], dtype=float)
    grid = np.geomspace(n.min(), n.max(), 50)
    for ax, keys in zip(axes, (("mean_blocks", "last_block"), ("mean_fraction",)), strict=True):
        for key in keys:
            label = dict(MEASURES)[key]
            f = fits[key]
            (line,) = ax.loglog(n, [r[key] for r in runs], "o", label=label)
            ax.loglog(grid, f["c"] * grid ** f["beta"], "--", color=line.get_color(),
                      label=f"fit: β = {f['beta']:.3f}, R² = {f['r2']:.3f}")
        for r in runs:
            ax.annotate(f"d={r['d_model']}", (r["non_embedding_parameters"], r[keys[0]]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("non-embedding parameters")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("matrix entropy (bits)")
    axes[1].set_ylabel("S / log2 d")
    fig.suptitle("matrix entropy of the hidden states against model size (Llama, edu)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
