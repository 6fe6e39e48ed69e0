"""The LightningModule every family shares: loss, metrics, optimiser, logging. Nothing else.

A family differs only in its ``nn.Module``, a :class:`zoo.models.LanguageModel` built by
:func:`zoo.models.build_model`: the task asks it for logits of a batch (``forward_batch``),
for the side information it gets per sequence (``side_bits_per_sequence``: the headline
``bpb`` charges it, and :data:`zoo.metrics.SIDE_INFO_FREE_BPB` is the same rate with it for
free), for auxiliary
losses its layers produced (``auxiliary_loss``, logged as ``train/aux_loss``) and for its
repeated blocks (``block_classes``, what FSDP2 shards). The training loss is a pluggable
objective (:mod:`zoo.objectives`, the ``loss:`` section); what a run watches beyond the
metrics is logged by callbacks (:mod:`zoo.monitors`, attached in :meth:`configure_callbacks`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from zoo.metrics import language_metrics, token_stats, token_stats_from_hidden, update_all
from zoo.models import build_model
from zoo.models.base import auxiliary_loss
from zoo.models.flops import train_flops_per_token
from zoo.monitors import log_prefix, monitors
from zoo.objectives import build_objective
from zoo.schema import OPTIMIZERS, SCHEDULES, OptimOptions

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
            reproducing their recorded numbers). ``sgld`` / ``psgld``: Langevin dynamics
            (:mod:`zoo.optim_sgld`) at temperature ``temperature``, ``betas[1]`` and ``eps``
            being pSGLD's RMSprop decay and stabiliser.
        loss: the training objective's ``loss:`` section, ``{kind: ce, ...}``
            (:mod:`zoo.objectives` lists the kinds, and more register there). Evaluation is plain CE.
    """

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
        self.optim = {**dataclasses.asdict(OptimOptions()), **dict(optim or {})}  # defaults: zoo.schema
        self.objective = build_objective(loss)
        self.refresh_metrics()
        self._flops_shape: tuple[int, int] | None = None  # (batch, n_ctx) of the batch being run
        self._train_flops_per_token: dict[int, float] = {}

    @property
    def side_bits_per_sequence(self) -> float:
        """Bits of side information the model receives per sequence (charged by ``bpb``)."""
        return float(getattr(self.model, "side_bits_per_sequence", 0.0))

    def refresh_metrics(self) -> None:
        """(Re)build the evaluation metrics for the model's current side information; call it
        after changing what the model's side information costs (e.g. its storage format)."""
        self.metrics = nn.ModuleDict({s: task_metrics(self.side_bits_per_sequence) for s in EVAL_STAGES})
        #: stages whose metrics hold batches not logged yet
        self._scored_stages: set[str] = set()

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` for a batch from the shared DataModule."""
        return self.model.forward_batch(batch)

    def configure_callbacks(self) -> list[L.Callback]:
        """The monitors (:mod:`zoo.monitors`) every Trainer running this task gets."""
        return monitors()

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

    # ------------------------------------------------------------------ FLOPs
    @property
    def flops_per_batch(self) -> float | None:
        """FLOPs of the batch being run, for Lightning's ``ThroughputMonitor`` (it logs FLOP/s,
        and MFU on accelerators it knows the peak of): the model's forward FLOPs per token
        (:mod:`zoo.models.flops`) times the batch's tokens, three times that in training.
        None before the first batch."""
        if self._flops_shape is None:
            return None
        batch, n_ctx = self._flops_shape
        if n_ctx not in self._train_flops_per_token:  # walking the modules once per length is enough
            self._train_flops_per_token[n_ctx] = train_flops_per_token(self.model, n_ctx)
        per_token = self._train_flops_per_token[n_ctx]
        return batch * n_ctx * (per_token if self.training else per_token / 3.0)

    def _note_batch(self, batch: Mapping[str, torch.Tensor]) -> None:
        self._flops_shape = tuple(batch["input_ids"].shape[:2])

    def on_train_batch_start(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._note_batch(batch)

    def on_validation_batch_start(self, batch: Mapping[str, torch.Tensor], batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._note_batch(batch)

    def on_test_batch_start(self, batch: Mapping[str, torch.Tensor], batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._note_batch(batch)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """The objective (plus the model's auxiliary losses); returns the loss and, for the
        monitors, the per-token ``nll`` (detached) and ``valid`` mask."""
        stats = token_stats(self(batch), batch["labels"], batch["target_bytes"], with_entropy=False)
        bs = batch["input_ids"].shape[0]
        bits = stats.nll.detach().sum() / math.log(2) + self.side_bits_per_sequence * bs  # honest, like val/bpb
        bpb = bits / stats.target_bytes.sum().clamp(min=1)
        # averaged over processes, so a DDP run logs the same curve as one process would
        self.log("train/loss", stats.loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("train/bpb", bpb, prog_bar=True, batch_size=bs, sync_dist=True)
        loss, extra = self.objective(stats, batch)
        for name, value in extra.items():
            self.log(f"train/{name}", value, batch_size=bs, sync_dist=True)
        aux = auxiliary_loss(self.model)
        if aux is not None:
            loss = loss + aux
            self.log("train/aux_loss", aux.detach(), batch_size=bs, sync_dist=True)
        return {"loss": loss, "nll": stats.nll.detach(), "valid": stats.valid}

    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor]) -> None:
        """Update ``stage``'s metrics; they are logged once, at the end of the stage
        (:meth:`_log_stages`): logging six metrics per batch cost Lightning more than the
        metrics themselves on small models.

        The model's output head is not run by the model here but chunk by chunk with the
        metrics (:meth:`zoo.models.LanguageModel.deferred_head`): the ``[B, T, V]`` logits
        never exist. A model without an :class:`~zoo.models.OutputHead` gives logits."""
        with self.model.deferred_head() as head:
            out = self(batch)
        if head is None:
            stats = token_stats(out, batch["labels"], batch["target_bytes"], with_entropy=True)
        else:
            stats = token_stats_from_hidden(out, head, batch["labels"], batch["target_bytes"], with_entropy=True)
        update_all(self.metrics[stage], stats, n_sequences=batch["input_ids"].shape[0])
        self._scored_stages.add(stage)

    def _log_stages(self, stages: list[str]) -> None:
        """Log (Lightning computes, then resets) the metrics of the ``stages`` that scored batches."""
        for stage in stages:
            if stage not in self._scored_stages:
                continue
            prefix = log_prefix(stage)
            for name, metric in self.metrics[stage].items():
                self.log(f"{prefix}/{name}", metric, prog_bar=name == "bpb" and stage == "val",
                         add_dataloader_idx=False)
        self._scored_stages.difference_update(stages)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_stages(["val"])

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Test loaders are the report's splits, named by :attr:`report_stages` in order."""
        self._eval_step(self.report_stages[dataloader_idx], batch)

    def on_test_epoch_end(self) -> None:
        self._log_stages(list(self.report_stages))

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
        groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        if name in ("sgld", "psgld"):  # Langevin dynamics (zoo.optim_sgld); psgld: RMSprop-preconditioned
            from zoo.optim_sgld import SGLD

            opt: torch.optim.Optimizer = SGLD(groups, lr=o["lr"], temperature=float(o["temperature"]),
                                              preconditioned=name == "psgld", alpha=o["betas"][1], eps=o["eps"])
        else:
            fused = {"fused": True} if o.get("fused") and name == "adamw" else {}  # one kernel for all tensors
            opt = optimizer_class(name)(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], **fused)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_schedule(o["schedule"], int(o["warmup_steps"]), total, float(o["min_lr_ratio"]))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def task_metrics(side_bits_per_sequence: float) -> nn.ModuleDict | Any:
    """The evaluation metrics (:func:`zoo.metrics.language_metrics`): ``bpb`` the honest
    headline (it selects the best checkpoint), the side-information-free rate beside it when
    the model gets side information."""
    return language_metrics(side_bits_per_sequence=side_bits_per_sequence)




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
