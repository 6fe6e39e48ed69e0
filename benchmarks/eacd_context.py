"""Does the EACD beat the causal model once its vector is charged? A sweep of the context
length n_ctx and of the format the vector is stored in, on the general corpus.

For each n_ctx in ``--n-ctx``, trains through ``python -m zoo.fit``:

* the causal Llama (recipe ``quickstart``: d=128 x 4);
* one EACD per vector format in ``--formats`` (recipe ``eacd_transformer``: a Llama encoder
  d=128 x 4 -> 32 numbers, and a decoder of the causal model's size). The vector is rounded
  through its format while training (straight-through) and in evaluation, so each EACD
  learns the vector it will be charged for;
* and, for each format in ``--stored``, the first EACD scored again with its vector stored
  in that format after training (no retraining: what rounding a trained vector costs).

Every model reads packed windows of ``data=general`` with one 4k BPE and the same tokens per
step (``--tokens-per-step``; batch = tokens / n_ctx), for ``--steps`` steps: equal tokens at
every n_ctx. Each is then scored by its run's final report on the whole general val split
(every token once). The table gives the honest BPB (the vector charged at its format's
bits), the BPB without the vector, and EACD minus causal; the plot draws EACD minus causal
against n_ctx, one line per format. Writes ``benchmarks/results/eacd_context.{md,json,png}``.

    python benchmarks/eacd_context.py [--n-ctx 256,512,1024] [--formats fp32,int4] [--stored fp8_e4m3]
                                      [--steps 300] [--tokens-per-step 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare_families import logged_parameters
from throughput import machine

from zoo.models.vector_formats import VECTOR_FORMATS

RESULTS = Path(__file__).resolve().parent / "results"
D_C = 32  # the eacd_transformer recipe's vector: encoder d_model 128 // compression 4
COMMON = ["data=general", "data.tokenizer.vocab_size=4096", "data.layout=packed", "logger=csv",
          "trainer.enable_progress_bar=false", "report.splits=[val]", "compile=false"]


def train(label: str, recipe: str, extra: list[str], out: Path, args: argparse.Namespace, n_ctx: int,
          compressors: str, fmt: str | None = None) -> dict:
    """One ``zoo.fit`` run; its report's val row, its parameter count and wall time."""
    batch = args.tokens_per_step // n_ctx
    cmd = [sys.executable, "-m", "zoo.fit", f"recipe={recipe}", *COMMON, f"out_dir={out}",
           f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
           "trainer.limit_val_batches=1", f"checkpoint.every_n_train_steps={args.steps}",
           f"data.n_ctx={n_ctx}", f"data.batch_size={batch}", f"data.eval_batch_size={max(1, 8192 // n_ctx)}",
           f"report.compressors={compressors}", *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if proc.returncode:
        sys.exit(f"{label} (n_ctx {n_ctx}) failed:\n{' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    run_dir = next((out / recipe).iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    params = logged_parameters(proc.stdout + proc.stderr)
    val = report["splits"]["val"]
    row = {"label": label, "format": fmt, "n_ctx": n_ctx, "batch_size": batch, "params": params,
           "seconds": time.time() - t0, "checkpoint": report["best_checkpoint"], **scores(val), "val": val}
    say(row)
    return row


def scores(metrics: dict) -> dict:
    """The honest BPB (the vector charged) and the vector-free one of a report row."""
    return {"bpb": metrics["bpb"], "bpb_free_vector": metrics.get("bpb_free_vector", metrics["bpb"])}


def say(row: dict) -> None:
    """One progress line per model."""
    print(f"  n_ctx {row['n_ctx']:5d}  {row['label']:34s} {row['seconds']:6.0f} s  val BPB {row['bpb']:.4f}"
          f" (vector free {row['bpb_free_vector']:.4f})", flush=True)


def restored(trained: dict, fmt: str) -> dict:
    """``trained``'s EACD scored on the same val split with its vector stored in ``fmt``."""
    from zoo.evaluate import prepare, score

    t0 = time.time()
    task, dm = prepare(trained["checkpoint"], "val", overrides={"eval_batch_size": max(1, 8192 // trained["n_ctx"])})
    task.model.set_vector_format(fmt)
    task.refresh_metrics()
    row = {**trained, "label": f"{trained['label']}, stored {fmt}", "format": fmt, "trained_format": trained["format"],
           **scores(score(task, dm.eval_dataloader("val"), "val", accelerator="cpu"))}
    row["seconds"] = time.time() - t0
    say(row)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-ctx", default="256,512,1024", help="comma-separated context lengths")
    p.add_argument("--formats", default="fp32,int4",
                   help="comma-separated vector formats (zoo.models.vector_formats), one EACD trained in each")
    p.add_argument("--stored", default="fp8_e4m3",
                   help="comma-separated formats the first EACD's trained vector is also scored in")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of every run")
    p.add_argument("--tokens-per-step", type=int, default=2048, help="tokens per step at every n_ctx")
    args = p.parse_args()
    contexts = [int(n) for n in args.n_ctx.split(",")]
    formats = [f for f in args.formats.split(",") if f]
    stored = [f for f in args.stored.split(",") if f]
    if unknown := [f for f in formats + stored if f not in VECTOR_FORMATS]:
        p.error(f"unknown vector format(s) {unknown}; available: {', '.join(VECTOR_FORMATS)}")
    if both := set(formats) & set(stored):
        p.error(f"{sorted(both)} in both --formats and --stored: a format is either trained in or stored in")
    if any(args.tokens_per_step % n for n in contexts):
        p.error(f"--tokens-per-step {args.tokens_per_step} must be a multiple of every n_ctx in {contexts}")
    rows: list[dict] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        for i, n in enumerate(contexts):  # the compressors once: the val text is the same at every n_ctx
            rows.append(train("causal", "quickstart", [], Path(tmp) / f"c{n}", args, n,
                              "[gzip,xz,zstd,ppmd]" if i == 0 else "[]"))
            for j, fmt in enumerate(formats):
                rows.append(train(f"EACD, vector {fmt}", "eacd_transformer", [f"model.vector_format={fmt}"],
                                  Path(tmp) / f"e{n}{fmt}", args, n, "[]", fmt))
                if j == 0:
                    rows += [restored(rows[-1], f) for f in stored]
    formats = formats[:1] + stored + formats[1:]  # the table's order: fp32, its roundings, the others
    table = render(rows, contexts, formats, args, started)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eacd_context.md").write_text(table + "\n")
    (RESULTS / "eacd_context.json").write_text(json.dumps({"args": vars(args), "started": started,
                                                           "machine": machine("cpu"), "rows": rows}, indent=1))
    plot(rows, contexts, formats, RESULTS / "eacd_context.png")


def render(rows: list[dict], contexts: list[int], formats: list[str], args: argparse.Namespace, started: str) -> str:
    causal = {r["n_ctx"]: r for r in rows if r["label"] == "causal"}
    ref = causal[contexts[0]]["val"]
    lines = [
        f"data=general (packed, 4k BPE), {args.steps} steps x {args.tokens_per_step:,} tokens = "
        f"{args.steps * args.tokens_per_step:,} training tokens per model; scored on the whole general val split "
        f"({ref['text_bytes']:,} bytes). {machine('cpu')}; started {started}.",
        "",
        "| n_ctx | model | parameters | vector bits / window | val BPB (vector charged) | vector-free BPB "
        "| EACD − causal (charged) | EACD − causal (free) | wall s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c = causal[r["n_ctx"]]
        eacd = r["format"] is not None
        bits_cell = f"{VECTOR_FORMATS[r['format']].bits_per_vector(D_C)}" if eacd else "—"
        gap = f"{r['bpb'] - c['bpb']:+.4f}" if eacd else "—"
        gap_free = f"{r['bpb_free_vector'] - c['bpb']:+.4f}" if eacd else "—"
        lines.append(f"| {r['n_ctx']} | {r['label']} | {r['params']:,} | {bits_cell} | {r['bpb']:.4f} | "
                     f"{r['bpb_free_vector']:.4f} | {gap} | {gap_free} | {r['seconds']:.0f} |")
    lines += ["", "Wall s: the run's training and val scoring; for a *stored* row, its val scoring only."]
    comps = ", ".join(f"{k} {ref[k]:.4f}" for k in ("gzip", "xz", "zstd", "ppmd") if k in ref)
    lines += ["", f"Classical compressors on the same val text (bits per byte): {comps}."]
    for fmt in formats:
        gaps = [(n, next(r for r in rows if r["n_ctx"] == n and r["format"] == fmt)["bpb"] - causal[n]["bpb"])
                for n in contexts]
        wins = [n for n, g in gaps if g < 0]
        lines.append(f"- vector {fmt}: EACD − causal " + ", ".join(f"{g:+.4f} at {n}" for n, g in gaps)
                     + (f"; the EACD wins from n_ctx {wins[0]}." if wins else "; no crossover in this range."))
    return "\n".join(lines)


def plot(rows: list[dict], contexts: list[int], formats: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    causal = {r["n_ctx"]: r["bpb"] for r in rows if r["label"] == "causal"}
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for fmt in formats:
        ours = [next(r for r in rows if r["n_ctx"] == n and r["format"] == fmt) for n in contexts]
        ax.plot(contexts, [r["bpb"] - causal[r["n_ctx"]] for r in ours], marker="o",
                label=f"{ours[0]['label'].removeprefix('EACD, ')} (charged)")
    free = [next(r for r in rows if r["n_ctx"] == n and r["format"] == formats[0]) for n in contexts]
    ax.plot(contexts, [r["bpb_free_vector"] - causal[r["n_ctx"]] for r in free], ls="--", color="gray",
            marker=".", label=f"vector {formats[0]}, not charged")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [str(n) for n in contexts])
    ax.set_xlabel("n_ctx (tokens per window)")
    ax.set_ylabel("val BPB: EACD − causal")
    ax.set_title("EACD vs causal at equal tokens (data=general, CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
