"""The headline comparison: causal transformer vs masked mixer vs the two EACDs.

Trains each model through ``python -m zoo.fit`` on the same data (embedded edu, packed
windows of ``--n-ctx`` tokens, the same 4k BPE, the same batch), for the same number of
steps, i.e. the same token budget, validating every ``--val-every`` steps on the full val
split. Then prints one table:

* parameters and training tokens/s (Lightning's ThroughputMonitor, last 20 steps);
* val BPB at equal tokens (the end of every run);
* val BPB at equal time: each model's last validation within the wall-clock training time
  the fastest model needed for the whole budget;
* for the EACDs, val BPB with the vector's cost (the headline) and without it;
* gzip -9 and xz -9 on the same val text.

and writes ``benchmarks/results/compare_families.{md,json,png}`` (the PNG plots val BPB
against training tokens). Each model keeps its recipe's optimizer settings.

    python benchmarks/compare_families.py [--steps 400] [--val-every 50]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = [  # (label, recipe, extra overrides)
    ("causal transformer", "quickstart", []),
    ("masked mixer", "mixer_clm", []),
    ("EACD mixer", "eacd_mixer", ["data.layout=packed"]),
    ("EACD transformer", "eacd_transformer", ["data.layout=packed"]),
]
RESULTS = Path(__file__).resolve().parent / "results"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def logged_parameters(output: str) -> int:
    """The parameter count ``zoo.fit`` logs (its "parameters (...) — N" line)."""
    return int(next(line.split("—")[1].split()[0].replace(",", "")
                    for line in output.splitlines() if "parameters (" in line))


def run(label: str, recipe: str, extra: list[str], out: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, "-m", "zoo.fit", f"recipe={recipe}", "logger=csv", f"out_dir={out}",
        f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.val_every}",
        "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false",
        f"data.n_ctx={args.n_ctx}", f"data.batch_size={args.batch_size}", "data.tokenizer.vocab_size=4096",
        "report.splits=[val]", f"checkpoint.every_n_train_steps={args.steps}", *extra,
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if proc.returncode:
        sys.exit(f"{label} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    run_dir = next((out / recipe).iterdir())
    rows = read_csv(run_dir / "csv" / "metrics.csv")
    times = {int(r["step"]): float(r["train/time"]) for r in rows if r.get("train/time")}
    tps = [float(r["train/device/items_per_sec"]) for r in rows if r.get("train/device/items_per_sec")]
    curve = []
    for r in rows:
        if r.get("val/bpb"):
            step = int(r["step"])
            earlier = [s for s in times if s <= step]  # the last throughput reading before it
            t = times.get(step) or (times[max(earlier)] if earlier else 0.0)
            curve.append({"step": step, "tokens": step * args.batch_size * args.n_ctx, "time": t,
                          "bpb": float(r["val/bpb"]),
                          "bpb_free_vector": float(r.get("val/bpb_free_vector") or r["val/bpb"])})
    report = json.loads((run_dir / "report.json").read_text())
    params = logged_parameters(proc.stdout + proc.stderr)
    print(f"  {label}: {time.time() - t0:.0f} s, final val BPB {curve[-1]['bpb']:.4f}", flush=True)
    return {"label": label, "recipe": recipe, "params": params, "tokens_per_s": tps[-1] if tps else float("nan"),
            "curve": curve, "train_time": times[max(times)], "val": report["splits"]["val"]}


def at_time(curve: list[dict], budget: float) -> dict:
    within = [c for c in curve if c["time"] <= budget * 1.001]
    return within[-1] if within else curve[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, recipe, extra in MODELS:
            results.append(run(label, recipe, extra, Path(tmp) / recipe, args))
    budget = min(r["train_time"] for r in results)
    tokens = args.steps * args.batch_size * args.n_ctx
    val = results[0]["val"]
    lines = [
        f"Same data (edu, packed, n_ctx {args.n_ctx}, 4k BPE), {args.steps} steps x {args.batch_size} "
        f"sequences = {tokens:,} training tokens each; equal time = {budget:.0f} s of training.",
        "",
        "| model | parameters | train tokens/s | val BPB, equal tokens | val BPB, equal time "
        "| EACD: val BPB without vector cost (equal tokens) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        end, timed = r["curve"][-1], at_time(r["curve"], budget)
        free = f"{end['bpb_free_vector']:.4f}" if end["bpb_free_vector"] != end["bpb"] else "—"
        lines.append(
            f"| {r['label']} | {r['params']:,} | {r['tokens_per_s']:,.0f} | {end['bpb']:.4f} | "
            f"{timed['bpb']:.4f} (step {timed['step']}) | {free} |"
        )
    lines += ["", f"gzip -9 on the same val text: {val['gzip']:.4f} BPB; xz -9: {val['xz']:.4f} BPB."]
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare_families.md").write_text(table + "\n")
    (RESULTS / "compare_families.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    plot(results, val, RESULTS / "compare_families.png")


def plot(results: list[dict], val: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in results:
        xs = [c["tokens"] / 1e6 for c in r["curve"]]
        (line,) = ax.plot(xs, [c["bpb"] for c in r["curve"]], marker="o", ms=3, label=r["label"])
        if any(c["bpb_free_vector"] != c["bpb"] for c in r["curve"]):
            ax.plot(xs, [c["bpb_free_vector"] for c in r["curve"]], ls="--", color=line.get_color(),
                    label=f"{r['label']} (vector free)")
    ax.axhline(val["xz"], color="gray", ls=":", label="xz -9")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("val bits per byte")
    ax.set_title("val BPB vs tokens (edu, CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
