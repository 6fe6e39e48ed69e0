"""The curvature and the local learning coefficient of every published model.

Runs ``python -m zoo.flatness`` (in process) on each model of ``checkpoints/``, on the same
small budget for all: one batch of its own training data (``--batch-size`` rows of its n_ctx),
the top 3 Hessian eigenvalues (Lanczos), a Hutch++ trace of 9 products, and λ̂ from one SGLD
chain of 50 steps (ε = 1e-5, γ = 100, nβ = m / log m). The models differ in size, family and
data, so the table describes the zoo; it does not rank training methods (benchmarks/flatness.py
does that on one recipe).

    OMP_NUM_THREADS=1 python benchmarks/flatness_zoo.py [--models llama-edu,mixer-edu] [--batch-size 4]

Writes ``benchmarks/results/flatness_zoo.{json,md}``; prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from zoo.flatness.__main__ import parse, run
from zoo.hub.manifest import read_manifest

RESULTS = Path(__file__).resolve().parent / "results"


def table(rows: list[dict]) -> str:
    lines = ["| model | parameters | loss (nats/token) | λ_max | trace | d_eff (top-3) | λ̂ (LLC) | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c, llc = r["curvature"], r["llc"]
        lines.append(f"| {r['model']} | {c['parameters']:,} | {c['loss']:.4f} | {c['top_eigenvalues'][0]:.3f} "
                     f"| {c['trace']:.1f} ± {c['trace_stderr']:.1f} | {c['effective_dimension_top_k']:.2f} "
                     f"| {llc['llc_mean']:.1f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="", help="comma-separated published names (default: all)")
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    names = [n for n in args.models.split(",") if n] or sorted(read_manifest()["models"])
    rows = []
    for name in names:
        t0 = time.time()
        opts = parse([f"checkpoint={name}", "batches=1", f"batch_size={args.batch_size}", "top_k=3",
                      "trace_samples=9", "llc_steps=50", "llc_chains=1", "llc_lr=1e-5"])
        result = run(opts)
        result.update(model=name, seconds=time.time() - t0)
        rows.append(result)
        print(f"{name}: λmax {result['curvature']['top_eigenvalues'][0]:.3f} trace {result['curvature']['trace']:.1f} "
              f"λ̂ {result['llc']['llc_mean']:.1f} ({result['seconds']:.0f} s)", flush=True)
    text = table(rows)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for r in rows:  # the per-step traces are long and not needed to read the table
        r["llc"].pop("loss_trace", None)
    (RESULTS / "flatness_zoo.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1))
    (RESULTS / "flatness_zoo.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
