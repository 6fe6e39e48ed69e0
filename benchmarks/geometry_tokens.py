"""Information gain of the last token (ridge) and which context tokens carry it (Lasso vs attention).

On a published Llama (``--model``, default ``llama-edu``) and ``--sequences`` seeded random
val windows of edu, each cut to a context of ``--context`` tokens whose next token is the
target, :func:`zoo.geometry.information_gain.token_experiment` gives

* the ridge R² of the last token's representation regressed on the context tokens'
  (features: the context tokens; samples: the d coordinates), in sample and 5-fold
  cross-validated over the coordinates, at every hidden layer;
* for each ``k`` of ``--ks``: the rise of the next-token loss (nats) when the first ``k``
  tokens to enter the Lasso path of the last block's representation are deleted from the context,
  against the ``k`` the last attention layer's last position attends to most (mean over
  heads), and ``k`` random tokens (mean of 8 draws); how often Lasso's rise beats attention's,
  and how much the two choices overlap.

Writes ``benchmarks/results/geometry_tokens.{json,md,png}``.

    OMP_NUM_THREADS=1 python benchmarks/geometry_tokens.py [--sequences 64] [--context 64] [--ks 1,3,10]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-edu")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--ks", default="1,3,10")
    p.add_argument("--ridge-alpha", type=float, default=1.0)
    args = p.parse_args()

    import torch

    from zoo.evaluate import prepare
    from zoo.geometry.__main__ import model_reference
    from zoo.geometry.information_gain import token_experiment

    torch.set_num_threads(1)
    torch.manual_seed(0)
    task, dm = prepare(model_reference(args.model), "val", group="edu")
    model = task.model.float().eval()
    ks = [int(k) for k in args.ks.split(",")]
    loader = dm.eval_dataloader("val", max_samples=args.sequences)
    rows: list[dict] = []
    t0 = time.time()
    from tqdm.auto import tqdm

    samples = [(ids, labels) for batch in loader for ids, labels in zip(batch["input_ids"], batch["labels"],
                                                                        strict=True)]
    for i, (ids, labels) in enumerate(tqdm(samples, desc="sequences")):
        context, target = ids[: args.context], int(labels[args.context - 1])
        if target < 0:
            continue
        r = token_experiment(model, context, target, ks, ridge_alpha=args.ridge_alpha, seed=i)
        rows.append({"sequence": i, "target": target, **r})
    seconds = time.time() - t0

    layers = list(rows[0]["ridge"])
    ridge = {name: {"r2": mean_se([r["ridge"][name]["r2"] for r in rows]),
                    "r2_cv": mean_se([r["ridge"][name]["r2_cv"] for r in rows])} for name in layers}
    deletion = {}
    for k in ks:
        got = [r["deletion"][k] for r in rows]
        deletion[k] = {m: mean_se([g[f"rise_{m}"] for g in got]) for m in ("lasso", "attention", "random")}
        deletion[k]["lasso_beats_attention"] = float(np.mean([g["rise_lasso"] > g["rise_attention"] for g in got]))
        deletion[k]["lasso_beats_random"] = float(np.mean([g["rise_lasso"] > g["rise_random"] for g in got]))
        deletion[k]["overlap"] = mean_se([g["overlap"] for g in got])
    lines = [f"{args.model} on {len(rows)} seeded random edu val windows, context {args.context} tokens "
             f"(d = {rows[0]['dim']}), target: the next token. "
             f"Ridge alpha {args.ridge_alpha}, Lasso: the first k tokens on its path (scikit-learn); "
             "representations unit-normalised; "
             f"{seconds:.0f} s on 1 thread. Mean ± standard error over the windows.", "",
             "Ridge R² of the last token's representation on the context tokens' (features: tokens; samples: "
             "coordinates):", "", "| layer | R² in sample | R² 5-fold CV over coordinates |", "|---|---:|---:|"]
    for name in layers:
        (a, sa), (b, sb) = ridge[name]["r2"], ridge[name]["r2_cv"]
        lines.append(f"| {name} | {a:.3f} ± {sa:.3f} | {b:.3f} ± {sb:.3f} |")
    lines += ["", f"Next-token loss {mean_se([r['loss'] for r in rows])[0]:.3f} nats with the full context. Rise "
              f"(nats) after deleting k tokens chosen by a Lasso fit at {rows[0]['layer']}, by the last attention "
              "layer, or at random:", "",
              "| k | Lasso | attention | random | Lasso > attention | Lasso > random | overlap Lasso/attention |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for k in ks:
        d = deletion[k]
        cells = " | ".join(f"{d[m][0]:+.3f} ± {d[m][1]:.3f}" for m in ("lasso", "attention", "random"))
        lines.append(f"| {k} | {cells} | {d['lasso_beats_attention']:.0%} | {d['lasso_beats_random']:.0%} | "
                     f"{d['overlap'][0]:.2f} |")
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "geometry_tokens.md").write_text(table + "\n")
    (RESULTS / "geometry_tokens.json").write_text(json.dumps(
        {"args": vars(args), "seconds": seconds, "ridge": ridge, "deletion": deletion, "rows": rows}, indent=1))
    plot(ridge, deletion, ks, RESULTS / "geometry_tokens.png")


def plot(ridge: dict, deletion: dict, ks: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    names = list(ridge)
    x = np.arange(len(names))
    for key, label in (("r2", "in sample"), ("r2_cv", "5-fold CV")):
        a.errorbar(x, [ridge[n][key][0] for n in names], yerr=[ridge[n][key][1] for n in names], marker="o",
                   label=label, capsize=3)
    a.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
    a.set_ylabel("ridge R² (last token on context)")
    a.set_title("how much of the last token the context spans")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    width = 0.25
    for j, m in enumerate(("lasso", "attention", "random")):
        b.bar(np.arange(len(ks)) + (j - 1) * width, [deletion[k][m][0] for k in ks], width,
              yerr=[deletion[k][m][1] for k in ks], capsize=3, label=m)
    b.set_xticks(np.arange(len(ks)), [f"k={k}" for k in ks])
    b.axhline(0, color="gray", lw=0.8)
    b.set_ylabel("next-token loss rise after deletion (nats)")
    b.set_title("deleting the k tokens each method picks")
    b.grid(alpha=0.3, axis="y")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
