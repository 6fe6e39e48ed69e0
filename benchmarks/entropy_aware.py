"""Entropy-aware vs plain cross-entropy training in the data-limited regime.

Trains recipe ``entropy_ce`` (plain CE) and recipe ``entropy_aware`` (``2.5 × |CE_i − H_i|``
with chain-rule estimates ``H_i``) on the same document budget for the same number of epochs,
and after every epoch scores, in evaluation mode and with plain CE, the training documents
and the test split: bits per byte on both, and the generalisation gap (test − train). The
paper's claim: entropy-aware training has a smaller gap and a lower test loss.

Needs the estimates first (see the recipes' headers)::

    python -m zoo.fit recipe=entropy_eacd
    python -m zoo.entropy estimate checkpoint=runs/entropy_eacd/<time>/model split=train \\
        max_documents=500 out=runs/entropy_estimates
    python benchmarks/entropy_aware.py [--epochs 15] [--estimates runs/entropy_estimates] [--runs entropy_ce]

Writes ``benchmarks/results/entropy_aware.{json,md,png}`` and the weight-entropy plot of each
run (``benchmarks/results/weight_entropy_<recipe>.png``); prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from zoo.entropy.data import EntropyDataModule
from zoo.entropy.weights import WeightEntropy
from zoo.lit.language_model import LanguageModelTask
from zoo.metrics import token_stats
from zoo.recipes import compose

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def bits_per_byte(task: LanguageModelTask, loader) -> float:
    """Plain-CE bits per byte of every scored token of ``loader`` (evaluation mode)."""
    was = task.training
    task.eval()
    nats = nbytes = 0.0
    for batch in loader:
        stats = token_stats(task(batch), batch["labels"], batch["target_bytes"], with_entropy=False)
        nats += float(stats.nll.sum())
        nbytes += float(stats.target_bytes.sum())
    task.train(was)
    return nats / math.log(2) / nbytes


class EpochEval(Callback):
    """Train (the budget's documents) and test BPB after every epoch."""

    def __init__(self, dm: EntropyDataModule) -> None:
        self.dm, self.rows = dm, []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: LanguageModelTask) -> None:
        train = bits_per_byte(pl_module, self.dm.eval_dataloader("train"))
        test = bits_per_byte(pl_module, self.dm.eval_dataloader("test"))
        gap = trainer.callback_metrics.get("train/entropy_gap")
        self.rows.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step, "train_bpb": train,
                          "test_bpb": test, "gap": test - train,
                          "train_entropy_gap_nats": float(gap) if gap is not None else None})
        print(f"  epoch {trainer.current_epoch + 1:2d}: train {train:.4f}  test {test:.4f}  gap {test - train:+.4f}",
              flush=True)


def run(recipe: str, overrides: list[str]) -> dict:
    cfg = compose(recipe, overrides)
    L.seed_everything(cfg.seed, workers=True)
    data = dict(cfg.data)
    data["tokenizer"] = dict(data["tokenizer"])
    dm = EntropyDataModule(seed=cfg.seed, entropy=dict(cfg.entropy), **data)
    dm.prepare_data()
    dm.setup()
    task = LanguageModelTask(dict(cfg.model), vocab_size=dm.vocab_size, n_ctx=dm.n_ctx, optim=dict(cfg.optim),
                             loss=dict(cfg.loss))
    epochs = EpochEval(dm)
    weights = WeightEntropy(every_n_steps=int(cfg.weight_entropy.every_n_steps), out_dir=RESULTS / f"weights_{recipe}")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=int(cfg.trainer.max_epochs), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0,
                        callbacks=[epochs, weights])
    print(f"{recipe}: loss {dict(cfg.loss)}, {len(dm.dataset('train'))} training documents, "
          f"{cfg.trainer.max_epochs} epochs, estimates in batches: {dm.splits_with_entropy}", flush=True)
    t0 = time.time()
    trainer.fit(task, datamodule=dm)
    return {"recipe": recipe, "loss": dict(cfg.loss), "documents": len(dm.dataset("train")),
            "seconds": time.time() - t0, "epochs": epochs.rows, "weight_entropy": weights.history}


def table(results: list[dict]) -> str:
    a, b = results
    head = (f"| epoch | {a['recipe']} train | {a['recipe']} test | gap | "
            f"{b['recipe']} train | {b['recipe']} test | gap |")
    lines = [head, "|---:|---:|---:|---:|---:|---:|---:|"]
    for ra, rb in zip(a["epochs"], b["epochs"], strict=True):
        lines.append(f"| {ra['epoch']} | {ra['train_bpb']:.4f} | {ra['test_bpb']:.4f} | {ra['gap']:+.4f} | "
                     f"{rb['train_bpb']:.4f} | {rb['test_bpb']:.4f} | {rb['gap']:+.4f} |")
    best = {r["recipe"]: min(e["test_bpb"] for e in r["epochs"]) for r in results}
    lines.append("")
    lines.append("best test BPB: " + ", ".join(f"{k} {v:.4f}" for k, v in best.items()))
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for r, color in zip(results, ("tab:blue", "tab:red"), strict=False):
        ep = [e["epoch"] for e in r["epochs"]]
        ax[0].plot(ep, [e["train_bpb"] for e in r["epochs"]], "--", color=color, label=f"{r['recipe']} train")
        ax[0].plot(ep, [e["test_bpb"] for e in r["epochs"]], "-", color=color, label=f"{r['recipe']} test")
        ax[1].plot(ep, [e["gap"] for e in r["epochs"]], color=color, label=r["recipe"])
    ax[0].set(xlabel="epoch", ylabel="bits per byte", title="train (dashed) and test BPB")
    ax[1].set(xlabel="epoch", ylabel="test − train BPB", title="generalisation gap")
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs of both recipes")
    p.add_argument("--estimates", default="runs/entropy_estimates")
    p.add_argument("--documents", type=int, default=None, help="override entropy.train_documents")
    p.add_argument("--runs", default="entropy_ce,entropy_aware", help="which recipes to (re)run; the table "
                   "combines the stored results of both")
    args = p.parse_args()
    common = [] if args.epochs is None else [f"trainer.max_epochs={args.epochs}"]
    if args.documents is not None:
        common.append(f"entropy.train_documents={args.documents}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    overrides = {"entropy_ce": common, "entropy_aware": [*common, f"entropy.estimates={args.estimates}"]}
    for recipe in args.runs.split(","):  # each run's result is kept, so runs can go one at a time
        result = run(recipe, overrides[recipe])
        (RESULTS / f"entropy_aware_{recipe}.json").write_text(json.dumps(result, indent=1))
    results = [json.loads((RESULTS / f"entropy_aware_{r}.json").read_text()) for r in overrides
               if (RESULTS / f"entropy_aware_{r}.json").is_file()]
    if len(results) < 2:
        return
    text = table(results)
    print(text)
    (RESULTS / "entropy_aware.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "entropy_aware.md").write_text(text + "\n")
    plot(results, RESULTS / "entropy_aware.png")
    for r in results:
        src = RESULTS / f"weights_{r['recipe']}" / "weight_entropy.png"
        if src.is_file():
            src.replace(RESULTS / f"weight_entropy_{r['recipe']}.png")


if __name__ == "__main__":
    main()
