"""Flat-basin training vs plain AdamW in the data-limited edu regime, and whether flatness
(or a lower local learning coefficient) goes with a smaller generalisation gap.

Arms (each the recipe ``entropy_ce`` — the quickstart Llama on the first 500 edu documents,
left-padded, n_ctx 64 — with these options):

* ``adamw``   plain AdamW (the recipe as it is);
* ``swa``     ``swa.enabled=true`` (Lightning's stochastic weight averaging from ``--swa-start``);
* ``sgld``    ``optim.name=psgld`` (preconditioned Langevin dynamics, ``optim.temperature``);
* ``entropy_aware``  recipe ``entropy_aware`` (needs chain-rule estimates, see
  benchmarks/entropy_aware.py's header; left out when ``--estimates`` does not exist).

After training, per arm: train (the budget's documents) and test BPB and their gap, then on a
fixed set of training batches the top Hessian eigenvalues, the trace (Hutch++), the effective
dimension, the SGLD local learning coefficient (zoo.flatness) and the weight entropy
(zoo.entropy.weights); finally the Spearman and Pearson correlations over the arms of each
measure with the gap::

    python benchmarks/flatness.py --epochs 5 [--arms adamw,swa,sgld] [--phase train|measure|all]

Weights go to runs/flatness/<arm>.pt (phase ``train``), the table to
``benchmarks/results/flatness.{json,md,png}`` (phase ``measure``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from entropy_aware import bits_per_byte  # noqa: E402  (the same BPB as the entropy-aware benchmark)

from zoo.entropy.data import EntropyDataModule  # noqa: E402
from zoo.entropy.weights import weight_entropy  # noqa: E402
from zoo.lit.language_model import LanguageModelTask  # noqa: E402
from zoo.recipes import compose  # noqa: E402
from zoo.training import save_averaged_weights, swa_callback  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs/flatness")  # --tag T: runs/flatness_T and results/flatness_T.*


def arm_overrides(arm: str, args: argparse.Namespace) -> tuple[str, list[str]]:
    common = [f"trainer.max_epochs={args.epochs}"]
    if arm == "adamw":
        return "entropy_ce", common
    if arm == "swa":
        return "entropy_ce", [*common, "swa.enabled=true", f"swa.epoch_start={args.swa_start}",
                              f"swa.lr={args.swa_lr}"]
    if arm == "sgld":
        return "entropy_ce", [*common, "optim.name=psgld", f"optim.temperature={args.temperature}",
                              f"optim.eps={args.psgld_eps}"]
    if arm == "entropy_aware":
        return "entropy_aware", [*common, f"entropy.estimates={args.estimates}"]
    raise SystemExit(f"unknown arm {arm}")


def data_module(cfg) -> EntropyDataModule:
    data = dict(cfg.data)
    data["tokenizer"] = dict(data["tokenizer"])
    dm = EntropyDataModule(seed=cfg.seed, entropy=dict(cfg.entropy), **data)
    dm.prepare_data()
    dm.setup()
    return dm


def train_arm(arm: str, args: argparse.Namespace) -> dict:
    recipe, overrides = arm_overrides(arm, args)
    cfg = compose(recipe, overrides)
    L.seed_everything(cfg.seed, workers=True)
    dm = data_module(cfg)
    task = LanguageModelTask(dict(cfg.model), vocab_size=dm.vocab_size, n_ctx=dm.n_ctx, optim=dict(cfg.optim),
                             loss=dict(cfg.loss))
    swa = swa_callback(dict(cfg))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=int(cfg.trainer.max_epochs), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0,
                        callbacks=[swa] if swa is not None else [])
    print(f"{arm}: {recipe} {overrides}, {len(dm.dataset('train'))} training documents", flush=True)
    t0 = time.time()
    trainer.fit(task, datamodule=dm)
    if swa is not None:
        save_averaged_weights(trainer, task, swa, RUNS / f"{arm}.ckpt")
    RUNS.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": task.model.state_dict(), "recipe": recipe, "overrides": overrides},
               RUNS / f"{arm}.pt")
    row = {"arm": arm, "recipe": recipe, "overrides": overrides, "epochs": args.epochs,
           "train_seconds": time.time() - t0,
           "train_bpb": bits_per_byte(task, dm.eval_dataloader("train")),
           "test_bpb": bits_per_byte(task, dm.eval_dataloader("test"))}
    row["gap"] = row["test_bpb"] - row["train_bpb"]
    (RUNS / f"{arm}.json").write_text(json.dumps(row, indent=1))
    print(f"  {arm}: train {row['train_bpb']:.4f} test {row['test_bpb']:.4f} gap {row['gap']:+.4f} "
          f"({row['train_seconds']:.0f} s)", flush=True)
    return row


def measure_arm(arm: str, args: argparse.Namespace) -> dict:
    from zoo.flatness.curvature import fixed_batches, measure
    from zoo.flatness.learning_coefficient import estimate_llc

    row = json.loads((RUNS / f"{arm}.json").read_text())
    cfg = compose(row["recipe"], row["overrides"])
    dm = data_module(cfg)
    task = LanguageModelTask(dict(cfg.model), vocab_size=dm.vocab_size, n_ctx=dm.n_ctx, optim=dict(cfg.optim))
    task.model.load_state_dict(torch.load(RUNS / f"{arm}.pt", weights_only=True)["state_dict"])
    model = task.model.float().eval()
    torch.manual_seed(0)
    batches = fixed_batches(dm.eval_dataloader("train"), args.batches)  # the same batches for every arm
    t0 = time.time()
    curv = measure(model, batches, top_k=args.top_k, trace_samples=args.trace_samples, seed=0,
                   z=args.z)
    llc = estimate_llc(model, batches, steps=args.llc_steps, chains=args.llc_chains, lr=args.llc_lr,
                       localization=args.llc_gamma, n_beta=args.llc_nbeta, seed=0)
    went = weight_entropy(model)
    row.update({"top_eigenvalue": curv.top_eigenvalues[0], "top_eigenvalues": curv.top_eigenvalues,
                "trace": curv.trace, "trace_stderr": curv.trace_stderr, "z": curv.z,
                "effective_dimension_top_k": curv.effective_dimension_top_k,
                "llc": llc.llc_mean, "llc_std": llc.llc_std, "llc_trace": llc.loss_trace_mean,
                "weight_entropy_bits": went["hist"], "weight_gauss_entropy_bits": went["gauss"],
                "measure_seconds": time.time() - t0})
    (RUNS / f"{arm}.json").write_text(json.dumps(row, indent=1))
    print(f"  {arm}: λmax {row['top_eigenvalue']:.3f} trace {row['trace']:.1f} λ̂ {row['llc']:.1f} "
          f"({row['measure_seconds']:.0f} s)", flush=True)
    return row


def correlations(rows: list[dict], keys: list[str]) -> dict[str, dict[str, float]]:
    """Spearman and Pearson correlation of each measure with the gap over the arms."""
    from scipy.stats import pearsonr, spearmanr

    gap = [r["gap"] for r in rows]
    out = {}
    for k in keys:
        x = [r[k] for r in rows]
        if len(rows) < 3 or len(set(x)) < 2:
            out[k] = {"spearman": math.nan, "pearson": math.nan}
            continue
        out[k] = {"spearman": float(spearmanr(x, gap).statistic), "pearson": float(pearsonr(x, gap).statistic)}
    return out


MEASURES = ["top_eigenvalue", "trace", "effective_dimension_top_k", "llc", "weight_entropy_bits"]


def table(rows: list[dict], corr: dict) -> str:
    lines = ["| arm | train BPB | test BPB | gap | λ_max | trace | d_eff (top-k) | λ̂ (LLC) | weight entropy (bits) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['train_bpb']:.4f} | {r['test_bpb']:.4f} | {r['gap']:+.4f} | "
                     f"{r['top_eigenvalue']:.3f} | {r['trace']:.1f} ± {r['trace_stderr']:.1f} | "
                     f"{r['effective_dimension_top_k']:.2f} | {r['llc']:.1f} ± {r['llc_std']:.1f} | "
                     f"{r['weight_entropy_bits']:.3f} |")
    lines += ["", f"correlation with the gap over {len(rows)} arms:", "",
              "| measure | Spearman | Pearson |", "|---|---:|---:|"]
    for k, v in corr.items():
        lines.append(f"| {k} | {v['spearman']:+.2f} | {v['pearson']:+.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for r in rows:
        ax[0].plot(range(1, len(r["top_eigenvalues"]) + 1), r["top_eigenvalues"], "o-", label=r["arm"])
        ax[1].plot(r["llc_trace"], label=r["arm"])
    ax[0].set(xlabel="rank", ylabel="Hessian eigenvalue", title="top Hessian eigenvalues (train loss)")
    ax[1].set(xlabel="SGLD step", ylabel="nβ (L − L(w*)) running", title="λ̂ trace (mean over chains)")
    for r in rows:
        ax[2].scatter(r["llc"], r["gap"], s=40)
        ax[2].annotate(r["arm"], (r["llc"], r["gap"]))
    ax[2].set(xlabel="λ̂ (LLC)", ylabel="test − train BPB", title="λ̂ vs generalisation gap")
    for a in ax[:2]:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--arms", default="adamw,swa,sgld,entropy_aware")
    p.add_argument("--phase", choices=("train", "measure", "all"), default="all")
    p.add_argument("--estimates", default="runs/entropy_estimates")
    p.add_argument("--swa-start", type=float, default=0.6, help="swa.epoch_start")
    p.add_argument("--swa-lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=1e-6, help="psgld optim.temperature")
    p.add_argument("--psgld-eps", type=float, default=1e-5)
    p.add_argument("--batches", type=int, default=2, help="training batches the curvature and λ̂ use")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--trace-samples", type=int, default=9)
    p.add_argument("--z", type=float, default=1.0, help="scale of the effective dimension (the same for every arm)")
    p.add_argument("--llc-steps", type=int, default=60)
    p.add_argument("--llc-chains", type=int, default=2)
    p.add_argument("--llc-lr", type=float, default=1e-4)
    p.add_argument("--llc-gamma", type=float, default=100.0)
    p.add_argument("--llc-nbeta", type=float, default=None)
    p.add_argument("--tag", default="", help="suffix of the runs folder and the result files (e.g. e15)")
    args = p.parse_args()
    global RUNS
    stem = f"flatness_{args.tag}" if args.tag else "flatness"
    RUNS = RUNS.parent / stem
    torch.set_num_threads(max(1, torch.get_num_threads()))
    arms = [a for a in args.arms.split(",") if a]
    if "entropy_aware" in arms and not Path(args.estimates).is_dir():
        print(f"entropy_aware: no estimates at {args.estimates}; left out (see benchmarks/entropy_aware.py)")
        arms.remove("entropy_aware")
    if args.phase in ("train", "all"):
        for arm in arms:
            train_arm(arm, args)
    if args.phase in ("measure", "all"):
        rows = [measure_arm(arm, args) for arm in arms if (RUNS / f"{arm}.json").is_file()]
        corr = correlations(rows, MEASURES)
        text = table(rows, corr)
        print(text)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{stem}.json").write_text(json.dumps({"rows": rows, "correlations": corr,
                                                            "args": vars(args)}, indent=1))
        (RESULTS / f"{stem}.md").write_text(text + "\n")
        plot(rows, RESULTS / f"{stem}.png")


if __name__ == "__main__":
    main()
