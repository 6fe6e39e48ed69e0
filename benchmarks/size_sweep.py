"""Which size for the general flagship? Val BPB against training compute at 2-3 Llama sizes.

Trains recipe ``general`` (data=general, packed n_ctx 256, 16 sequences a step, the published
flagship's 8k BPE) at each ``--sizes`` entry ``DxL`` (width D, L blocks, 4 heads) for the
same training compute: ``--tflop`` (default: what the first size spends in ``--steps``
steps), each size with as many steps as that buys and its own full warmup + cosine
schedule. Compute is the FLOP formula of :mod:`zoo.models.flops` times the tokens seen. Each
run validates 4 times on the first ``--val-batches`` batches of the general val split (the
curves of the plot) and scores the whole val split at its end (the table). Prints the table
and writes ``benchmarks/results/size_sweep.{md,json,png}``; the plot is val BPB against
training compute, and the lowest end point is the size to train for that budget.

    python benchmarks/size_sweep.py [--sizes 256x6,192x5,128x4] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from compare_families import run  # trains one recipe through zoo.fit and reads its val curve
from throughput import machine

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "checkpoints" / "llama-general" / "tokenizer.json"


def parse_size(text: str) -> tuple[int, int]:
    d, _, layers = text.lower().partition("x")
    if not (d.isdigit() and layers.isdigit()):
        sys.exit(f"--sizes: {text!r} is not WIDTHxLAYERS (e.g. 256x6)")
    return int(d), int(layers)


def train_flops_per_token(d: int, layers: int, vocab: int, n_ctx: int) -> float:
    """The zoo formula for this Llama, read off a real (untrained) model."""
    from zoo.models import build_model
    from zoo.models.flops import train_flops_per_token as formula

    model = build_model({"family": "llama", "d_model": d, "n_layers": layers, "n_heads": 4}, vocab, n_ctx)
    return formula(model, n_ctx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256x6,192x5,128x4", help="comma-separated WIDTHxLAYERS")
    p.add_argument("--steps", type=int, default=200, help="steps of the first size; sets the budget")
    p.add_argument("--tflop", type=float, default=None, help="training compute of every run (overrides --steps)")
    p.add_argument("--val-batches", type=int, default=20, help="batches of the val split each validation scores")
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    if not TOKENIZER.is_file():
        sys.exit(f"{TOKENIZER} is missing: the sweep uses the published flagship's tokenizer")
    from zoo.data.tokenizer import load_tokenizer

    vocab = len(load_tokenizer(TOKENIZER))
    tokens_per_step = args.batch_size * args.n_ctx
    sizes = [parse_size(size) for size in args.sizes.split(",")]
    per_token = {size: train_flops_per_token(*size, vocab, args.n_ctx) for size in sizes}
    budget = args.tflop * 1e12 if args.tflop else per_token[sizes[0]] * args.steps * tokens_per_step
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for d, layers in sizes:
            steps = max(8, round(budget / (per_token[d, layers] * tokens_per_step)))
            extra = [f"model.d_model={d}", f"model.n_layers={layers}", "model.n_heads=4",
                     f"data.tokenizer.path={TOKENIZER}", f"trainer.limit_val_batches={args.val_batches}",
                     f"optim.warmup_steps={max(1, steps // 20)}", "checkpoint.every_n_minutes=null"]
            run_args = argparse.Namespace(**{**vars(args), "steps": steps, "val_every": max(1, steps // 4)})
            r = run(f"{d}x{layers}", "general", extra, Path(tmp) / f"{d}x{layers}", run_args)
            for c in r["curve"]:
                c["flops"] = per_token[d, layers] * c["step"] * tokens_per_step
            r.update(size=f"{d}x{layers}", steps=steps, train_flops_per_token=per_token[d, layers])
            results.append(r)
    val = results[0]["val"]
    lines = [
        f"Recipe general (data=general, packed n_ctx {args.n_ctx}, the flagship's {vocab:,}-token BPE, "
        f"{tokens_per_step:,} tokens a step), the same training compute for every size: "
        f"{budget / 1e12:,.1f} TFLOP, each with its own warmup (5%) and cosine schedule. "
        "Val BPB: the whole general val split at the end of each run.",
        "",
        "| size | parameters | train MFLOP/token | steps | training tokens | train tokens/s | wall s | val BPB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['size']} | {r['params']:,} | {r['train_flops_per_token'] / 1e6:.1f} | {r['steps']:,} | "
            f"{r['steps'] * tokens_per_step:,} | {r['tokens_per_s']:,.0f} | {r['train_time']:.0f} | "
            f"{r['val']['bpb']:.4f} |"
        )
    lines += ["", f"On the whole val split: xz -9 {val['xz']:.4f}, PPMd {val['ppmd']:.4f} BPB.",
              "", f"Machine: {machine('cpu')}."]
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "size_sweep.md").write_text(table + "\n")
    (RESULTS / "size_sweep.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    plot(results, RESULTS / "size_sweep.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in results:
        ax.plot([c["flops"] / 1e12 for c in r["curve"]], [c["bpb"] for c in r["curve"]], marker="o", ms=3,
                label=f"{r['size']} ({r['params'] / 1e6:.1f}M)")
    ax.set_xlabel("training compute (TFLOP, zoo.models.flops)")
    ax.set_ylabel("val bits per byte (first val batches)")
    ax.set_title("Llama sizes on data=general: BPB against compute (CPU)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
