"""The LightningModule every family shares: loss, metrics, optimiser, logging. Nothing else.

A family differs only in its ``nn.Module`` (built by :func:`zoo.models.build_model`), which
maps a batch's ``input_ids`` and ``attention_mask`` to next-token logits. Two optional model
attributes are honoured: ``needs_targets`` (the model also gets ``targets=batch["labels"]``:
the EACD's oracle encoder reads them) and ``side_bits_per_sequence`` (bits of side
information the model gets for free per sequence). When the latter is > 0, the headline
``bpb`` (``val/bpb``, which picks the best checkpoint, and ``final/<split>/bpb``) CHARGES those
bits, and ``bpb_free_vector`` is the same without them. Families that need more subclass and
override :meth:`LanguageModelTask.forward`, not the steps.

Mixture-of-experts layers (:class:`zoo.models.moe.MoEFeedForward`, in any family) are found
by type: their load-balancing losses (:func:`zoo.models.moe.auxiliary_loss`, each already
weighted by its ``aux_loss_coef``) are added to the training loss and logged as
``train/aux_loss``, and their routing feeds the router metrics (:mod:`zoo.metrics.router`:
per-layer expert load and router entropy in bits), logged as ``train/router_*`` every step
(that batch), ``val/router_*`` per validation and ``final/<split>/router_*`` in the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from zoo.metrics import language_metrics, token_stats, update_all
from zoo.metrics.entropy import EntropyGap, entropy_aware_loss, loss_options
from zoo.metrics.router import router_metrics, router_values, update_router_metrics
from zoo.models import build_model
from zoo.models.moe import auxiliary_loss, moe_layers

#: names of the evaluation stages that keep their own metric state
EVAL_STAGES = ("val", "report_train", "report_val", "report_test")


class LanguageModelTask(L.LightningModule):
    """Trains any zoo language model on next-token cross-entropy and reports bits per byte.

    Args:
        model: the ``model:`` config section (``family`` plus its sizes).
        vocab_size: tokenizer size; ``n_ctx``: tokens per sample.
        optim: ``name`` (``adamw``, or ``adamw8bit``: bitsandbytes' AdamW with 8-bit
            moments), ``lr``, ``weight_decay``, ``betas``, ``eps``, ``warmup_steps``,
            ``schedule`` (``cosine``, ``linear`` or ``constant``), ``min_lr_ratio`` and
            ``fused`` (``adamw`` only: torch's fused AdamW kernel, on CPU and CUDA; several
            times faster than the per-tensor loop torch uses on CPU by default, with
            rounding-level differences in the weights, so off by default to keep runs
            reproducing their recorded numbers).
        loss: the training loss, ``{kind: ce | entropy_l1 | entropy_clip, alpha: 2.5}``
            (:mod:`zoo.metrics.entropy`): entropy-aware kinds read per-token estimates from
            the batch's ``entropy`` (nats, aligned with ``labels``). Evaluation is plain CE.
    """

    #: bits of side information the model receives per sequence (the EACD's vector); taken
    #: from the model's own ``side_bits_per_sequence`` when it has one
    side_bits_per_sequence: float = 0.0
    #: metric stage of each test dataloader (the final report scores train, val, test)
    report_stages: list[str] = ["report_test"]

    def __init__(
        self,
        model: Mapping[str, Any],
        vocab_size: int,
        n_ctx: int,
        optim: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model, vocab_size, n_ctx)
        #: the model's mixture-of-experts layers (empty for dense models), and their router
        #: metrics per stage ("fit": training, and the evaluation stages), one set per layer
        self.moe_layers = moe_layers(self.model)
        self.router_metrics = nn.ModuleDict({
            s: router_metrics([m.n_experts for m in self.moe_layers]) for s in ("fit", *EVAL_STAGES)
        }) if self.moe_layers else None
        self.optim = {
            "lr": 1e-3,
            "weight_decay": 0.1,
            "betas": (0.9, 0.95),
            "eps": 1e-8,
            "warmup_steps": 100,
            "schedule": "cosine",
            "min_lr_ratio": 0.1,
            **dict(optim or {}),
        }
        self.loss_cfg = loss_options(loss)
        self.train_entropy_gap = EntropyGap()
        self.refresh_metrics()

    def refresh_metrics(self) -> None:
        """(Re)build the evaluation metrics for the model's current side information; call it
        after changing what the model's vector costs (e.g. its storage format)."""
        self.side_bits_per_sequence = float(getattr(self.model, "side_bits_per_sequence", 0.0))
        self.metrics = nn.ModuleDict({s: task_metrics(self.side_bits_per_sequence) for s in EVAL_STAGES})

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` for a batch from the shared DataModule."""
        if getattr(self.model, "needs_targets", False):
            return self.model(batch["input_ids"], attention_mask=batch.get("attention_mask"), targets=batch["labels"])
        return self.model(batch["input_ids"], attention_mask=batch.get("attention_mask"))

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (``trainer.strategy=fsdp2``): ``fully_shard`` every
        block the model family declares in ``block_classes``, then the whole model."""
        mesh = getattr(self, "device_mesh", None)
        if mesh is None:
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(self.model, FSDPModule):  # already sharded (fit, then test)
            return
        dp_mesh = mesh["data_parallel"]
        blocks = tuple(getattr(self.model, "block_classes", ()))
        for module in self.model.modules():
            if blocks and isinstance(module, blocks):
                fully_shard(module, mesh=dp_mesh)
        fully_shard(self.model, mesh=dp_mesh)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        stats = token_stats(self(batch), batch["labels"], batch["target_bytes"], with_entropy=False)
        bs = batch["input_ids"].shape[0]
        bits = stats.nll.detach().sum() / math.log(2) + self.side_bits_per_sequence * bs  # honest, like val/bpb
        bpb = bits / stats.target_bytes.sum().clamp(min=1)
        # averaged over processes, so a DDP run logs the same curve as one process would
        self.log("train/loss", stats.loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("train/bpb", bpb, prog_bar=True, batch_size=bs, sync_dist=True)
        loss = stats.loss
        if "entropy" in batch:  # per-token entropy estimates came with the data
            self.train_entropy_gap(stats.nll, batch["entropy"], stats.valid)
            self.log("train/entropy_gap", self.train_entropy_gap, batch_size=bs)
        if self.loss_cfg["kind"] != "ce":
            if "entropy" not in batch:
                raise RuntimeError(f"loss.kind={self.loss_cfg['kind']} needs per-token estimates in the batch "
                                   "('entropy'): train with entropy.estimates=DIR (python -m zoo.entropy estimate)")
            loss = entropy_aware_loss(stats.nll, stats.valid, batch["entropy"], **self.loss_cfg)
            self.log("train/objective", loss.detach(), batch_size=bs, sync_dist=True)
        if self.moe_layers:
            aux = auxiliary_loss(self.model)
            loss = loss + aux
            self.log("train/aux_loss", aux.detach(), batch_size=bs, sync_dist=True)
            metrics = self.router_metrics["fit"]
            for m in metrics:  # this batch's routing (all processes' tokens)
                m.reset()
            update_router_metrics(metrics, self.moe_layers)
            self.log_dict(router_values(metrics, "train"), batch_size=bs)
        return loss

    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor]) -> None:
        stats = token_stats(self(batch), batch["labels"], batch["target_bytes"], with_entropy=True)
        m = self.metrics[stage]
        update_all(m, stats, n_sequences=batch["input_ids"].shape[0])
        if self.moe_layers:
            update_router_metrics(self.router_metrics[stage], self.moe_layers)
        prefix = "val" if stage == "val" else stage.replace("report_", "final/")
        for name, metric in m.items():
            self.log(f"{prefix}/{name}", metric, prog_bar=name == "bpb" and stage == "val",
                     add_dataloader_idx=False, batch_size=batch["input_ids"].shape[0])

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Test loaders are the report's splits, named by :attr:`report_stages` in order."""
        self._eval_step(self.report_stages[dataloader_idx], batch)

    def _log_router(self, stages: list[str]) -> None:
        """Log (then reset) the router metrics of ``stages``; their values are already global."""
        if not self.moe_layers:
            return
        for stage in stages:
            prefix = "val" if stage == "val" else stage.replace("report_", "final/")
            metrics = self.router_metrics[stage]
            self.log_dict(router_values(metrics, prefix), add_dataloader_idx=False, rank_zero_only=True)
            for m in metrics:
                m.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_router(["val"])

    def on_test_epoch_end(self) -> None:
        self._log_router(list(self.report_stages))

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict:
        """AdamW (no decay on norms, biases and embeddings) with warmup then decay per step."""
        o = self.optim
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "embed" in name or "norm" in name else decay).append(p)
        name = o.get("name", "adamw")
        fused = {"fused": True} if o.get("fused") and name == "adamw" else {}  # one kernel for all tensors
        opt = optimizer_class(name)(
            [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], **fused,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_schedule(o["schedule"], int(o["warmup_steps"]), total, float(o["min_lr_ratio"]))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def task_metrics(side_bits_per_sequence: float) -> MetricCollection:
    """The evaluation metrics, with ``bpb`` the honest headline.

    :func:`zoo.metrics.language_metrics` keeps ``bpb`` plain and names the charged value
    ``bpb_with_side_info``; for the task the headline must be the honest number (it selects
    the best checkpoint), so with side information ``bpb`` charges it and ``bpb_free_vector``
    is the plain value.
    """
    metrics = language_metrics(extra_bits_per_sequence=side_bits_per_sequence)
    if not side_bits_per_sequence:
        return metrics
    named = dict(metrics.items(keep_base=True))
    named["bpb_free_vector"] = named.pop("bpb")
    named["bpb"] = named.pop("bpb_with_side_info")
    return MetricCollection(named, compute_groups=False)


OPTIMIZERS = ("adamw", "adamw8bit")


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """``adamw``: torch's AdamW. ``adamw8bit``: bitsandbytes' AdamW8bit, which keeps both
    moments of every tensor with >= 4096 elements in 8 bits (block-wise quantised), a quarter
    of AdamW's state memory for those tensors; it runs on CPU and CUDA."""
    if name == "adamw":
        return torch.optim.AdamW
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit
    from zoo.errors import unknown

    raise unknown("optim.name", name, OPTIMIZERS)


SCHEDULES = ("cosine", "linear", "constant")


def lr_schedule(kind: str, warmup: int, total: int, min_ratio: float):
    """Multiplier of the base learning rate at each step: linear warmup, then ``kind`` decay."""
    if kind not in SCHEDULES:
        from zoo.errors import unknown

        raise unknown("optim.schedule", kind, SCHEDULES)
    warmup = min(warmup, max(total - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * shape

    return factor
