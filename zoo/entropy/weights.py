"""Entropy of a model's weights, per layer and overall, tracked over training.

Two numbers per weight tensor, both in bits per weight:

* **histogram entropy**: the weights binned in ``bins`` (256) equal-width bins between their
  min and max, ``-sum p_b log2 p_b`` (at most ``log2(bins)`` = 8 bits: every bin equally full);
* **Gaussian differential entropy**: ``0.5 * log2(2 pi e sigma^2)`` for the weights' standard
  deviation ``sigma`` (the entropy of a Gaussian with that spread; it follows the scale of the
  weights, and falls without bound as they shrink).

"Overall" pools every tracked weight into one histogram (and one ``sigma``). Tracked tensors
are the parameters with at least 2 dimensions (matrices, embeddings, mixing weights; not
biases or norm gains). :class:`WeightEntropy` logs them every ``every_n_steps`` (series
``weights/hist_entropy``, ``weights/gauss_entropy`` and per layer
``weights/hist_entropy/<name>``; with a W&B logger also a histogram of the per-layer values)
and at the end of fit writes ``weight_entropy.json`` and ``weight_entropy.png``: weight entropy
and training loss against steps (the seed notes expect "low, rising, plateau", or not).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

TWO_PI_E = 2 * math.pi * math.e


@torch.no_grad()
def histogram_entropy(w: Tensor, bins: int = 256) -> float:
    """Shannon entropy in bits of ``w``'s values binned in ``bins`` equal-width bins."""
    w = w.detach().float().reshape(-1)
    if w.numel() == 0:
        return 0.0
    lo, hi = float(w.min()), float(w.max())
    if hi <= lo:
        return 0.0
    counts = torch.histc(w, bins=bins, min=lo, max=hi)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def gaussian_entropy(w: Tensor) -> float:
    """Differential entropy in bits of a Gaussian with ``w``'s standard deviation (``-inf`` at 0)."""
    var = float(w.detach().float().var(unbiased=False)) if w.numel() > 1 else 0.0
    return 0.5 * math.log2(TWO_PI_E * var) if var > 0 else float("-inf")


def tracked_weights(model: nn.Module) -> dict[str, Tensor]:
    """The parameters with >= 2 dimensions, by name."""
    return {name: p for name, p in model.named_parameters() if p.ndim >= 2}


@torch.no_grad()
def weight_entropy(model: nn.Module, bins: int = 256) -> dict[str, Any]:
    """``{"hist": bits, "gauss": bits, "layers": {name: {"hist", "gauss", "numel"}}}``."""
    weights = tracked_weights(model)
    layers = {
        name: {"hist": histogram_entropy(w, bins), "gauss": gaussian_entropy(w), "numel": w.numel()}
        for name, w in weights.items()
    }
    flat = torch.cat([w.detach().float().reshape(-1) for w in weights.values()]) if weights else torch.zeros(0)
    return {"hist": histogram_entropy(flat, bins), "gauss": gaussian_entropy(flat), "layers": layers}


class WeightEntropy(Callback):
    """Logs weight entropy every ``every_n_steps`` and plots it against steps at the end of fit.

    Args:
        every_n_steps: measure every this many optimizer steps (and at step 0).
        bins: histogram bins (256).
        out_dir: where ``weight_entropy.png`` / ``.json`` go (default: the trainer's root dir).
        plot: write the PNG (needs matplotlib).
    """

    def __init__(self, every_n_steps: int = 50, bins: int = 256, out_dir: str | Path | None = None,
                 plot: bool = True) -> None:
        if every_n_steps < 1 or bins < 2:
            raise ValueError("every_n_steps must be >= 1 and bins >= 2")
        self.every_n_steps, self.bins, self.plot = every_n_steps, bins, plot
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.history: list[dict[str, Any]] = []

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: float | None) -> None:
        step = trainer.global_step
        if self.history and self.history[-1]["step"] == step:
            return
        m = weight_entropy(getattr(pl_module, "model", pl_module), self.bins)
        self.history.append({"step": step, "loss": loss, **m})
        values = {"weights/hist_entropy": m["hist"], "weights/gauss_entropy": m["gauss"]}
        values.update({f"weights/hist_entropy/{n}": v["hist"] for n, v in m["layers"].items()})
        values.update({f"weights/gauss_entropy/{n}": v["gauss"] for n, v in m["layers"].items()})
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
            if type(logger).__name__ == "WandbLogger":  # the per-layer distribution as a W&B histogram
                import wandb

                logger.experiment.log({"weights/hist_entropy_layers": wandb.Histogram(
                    [v["hist"] for v in m["layers"].values()]), "trainer/global_step": step})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._measure(trainer, pl_module, None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero or trainer.global_step % self.every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._measure(trainer, pl_module, float(loss) if loss is not None else None)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        out = self.out_dir or Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "weight_entropy.json").write_text(json.dumps(self.history, indent=1))
        if self.plot:
            plot_history(self.history, out / "weight_entropy.png")


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Weight entropy (histogram, per layer and overall; Gaussian overall) and loss vs step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("hist", "256-bin histogram entropy (thin: layers)"), ("gauss", "Gaussian differential entropy ½log₂(2πeσ²)"))
    for ax, (key, title) in zip(axes[:2], panels, strict=True):
        for name in history[0]["layers"]:
            ax.plot(steps, [h["layers"][name][key] for h in history], lw=0.6, alpha=0.45)
        ax.plot(steps, [h[key] for h in history], color="black", lw=2.2, label="all weights")
        ax.set(xlabel="step", ylabel="bits / weight", title=title)
        ax.legend()
    ax = axes[2]
    pts = [(h["step"], h["loss"]) for h in history if h["loss"] is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), color="tab:red")
    ax.set(xlabel="step", ylabel="nats / token", title="training loss")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
