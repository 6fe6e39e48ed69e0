"""Callbacks that watch what a model does inside a run and log it; every Trainer that runs a
:class:`zoo.lit.language_model.LanguageModelTask` gets them (its ``configure_callbacks``).

They look at the live model at the start of each stage, so a model swapped in after the task
was built (``zoo.evaluate`` loads one into a fresh task) is the one they watch, and each is a
no-op for models without the layers or batches it watches.

* :class:`RouterMonitor` — per mixture-of-experts layer (:class:`zoo.models.moe.MoEFeedForward`):
  expert load and router entropy in bits (:mod:`zoo.metrics.router`), logged as
  ``train/router_*`` at every logging step (that batch), ``val/router_*`` per validation and
  ``final/<split>/router_*`` in a test/report run.
* :class:`EntropyGapMonitor` — when batches carry per-token entropy estimates (``entropy``,
  :mod:`zoo.entropy.data`), the mean gap ``CE_i - H_i`` in nats, logged as ``train/entropy_gap``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from zoo.metrics.entropy_gap import EntropyGap
from zoo.metrics.router import router_metrics, router_values, update_router_metrics
from zoo.models.moe import moe_layers


def log_prefix(stage: str) -> str:
    """``val`` -> ``val``; ``report_test`` -> ``final/test`` (the task's stage names)."""
    return stage.replace("report_", "final/") if stage.startswith("report_") else stage


def _batch_size(batch: Mapping[str, Tensor]) -> int:
    return int(batch["input_ids"].shape[0])


def _logs_this_step(trainer: L.Trainer) -> bool:
    """Whether the Trainer writes this training step's logged values (every
    ``log_every_n_steps``): values logged at other steps are dropped, so computing them
    (a reduction across processes under DDP) would be wasted work."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


class RouterMonitor(Callback):
    """Router metrics of the live model's MoE layers (module docstring)."""

    def __init__(self) -> None:
        self.layers: list[nn.Module] = []
        self.metrics: dict[str, nn.ModuleList] = {}

    def _attach(self, pl_module: L.LightningModule, stages: list[str]) -> None:
        self.layers = moe_layers(pl_module)
        self.metrics = {
            s: router_metrics([m.n_experts for m in self.layers]).to(pl_module.device) for s in stages
        } if self.layers else {}

    def _log(self, pl_module: L.LightningModule, stages: list[str]) -> None:
        """Log (then reset) the metrics of ``stages``; compute() has already reduced over ranks."""
        for stage in stages:
            metrics = self.metrics.get(stage)
            if metrics is None:
                continue
            pl_module.log_dict(router_values(metrics, log_prefix(stage)), add_dataloader_idx=False, rank_zero_only=True)
            for m in metrics:
                m.reset()

    # training: every step logs that batch's routing (all processes' tokens)
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._attach(pl_module, ["fit"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        metrics = self.metrics.get("fit")
        if metrics is None or not _logs_this_step(trainer):
            return
        for m in metrics:
            m.reset()
        update_router_metrics(metrics, self.layers)
        pl_module.log_dict(router_values(metrics, "train"), batch_size=_batch_size(batch))

    # validation: accumulated over the whole validation run
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._attach(pl_module, ["val"])

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if "val" in self.metrics:
            update_router_metrics(self.metrics["val"], self.layers)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, ["val"])

    # test / the final report: one stage per test dataloader
    def _test_stages(self, pl_module: L.LightningModule) -> list[str]:
        return list(getattr(pl_module, "report_stages", ["report_test"]))

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._attach(pl_module, self._test_stages(pl_module))

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        stage = self._test_stages(pl_module)[dataloader_idx]
        if stage in self.metrics:
            update_router_metrics(self.metrics[stage], self.layers)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, self._test_stages(pl_module))


class EntropyGapMonitor(Callback):
    """``train/entropy_gap``: this batch's mean ``CE_i - H_i`` (nats) over tokens with an
    estimate, when the batch carries ``entropy``. Reads the per-token ``nll`` and ``valid``
    the training step returns."""

    def __init__(self) -> None:
        self.gap = EntropyGap()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if "entropy" not in batch or not isinstance(outputs, Mapping) or "nll" not in outputs:
            return
        self.gap = self.gap.to(pl_module.device)
        self.gap.reset()
        self.gap.update(outputs["nll"], batch["entropy"], outputs["valid"])
        value = (self.gap.gap_sum / self.gap.tokens).float()  # this process's batch, as logged before
        pl_module.log("train/entropy_gap", value, batch_size=_batch_size(batch))


def monitors() -> list[Callback]:
    """The monitors every task's Trainer runs."""
    return [RouterMonitor(), EntropyGapMonitor()]


__all__ = ["EntropyGapMonitor", "RouterMonitor", "log_prefix", "monitors"]
