"""Progress as log lines (zoo.progress) when the output is a file: a real Trainer, a real pty."""

from __future__ import annotations

import logging
import os

import lightning as L
import torch
from torch.utils.data import DataLoader

from zoo.progress import LineProgress, progress_callbacks


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.w(batch["input_ids"].float()).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/bpb", self.w(batch["input_ids"].float()).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_line_progress_logs_steps_eta_and_validation(tmp_path, caplog) -> None:
    data = [{"input_ids": torch.ones(4, dtype=torch.long)} for _ in range(16)]
    trainer = L.Trainer(max_steps=10, val_check_interval=5, limit_val_batches=2, logger=False,
                        callbacks=[LineProgress(every_s=0)], enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="zoo.progress"):
        trainer.fit(Tiny(), DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
    lines = [r.getMessage() for r in caplog.records if r.name == "zoo.progress"]
    steps = [line for line in lines if line.startswith("step ") and "/10" in line]
    assert len(steps) == 10  # every_s=0: one line a step
    assert steps[0].startswith("step 1/10 (10%) · train/loss ") and "tok/s" in steps[0] and "eta " in steps[0]
    assert steps[-1].startswith("step 10/10 (100%)") and "eta" not in steps[-1]
    assert "validating at step 5 (2 batches)" in lines
    assert any(line.startswith("step 5 · val/bpb ") for line in lines)


def test_line_progress_is_quiet_between_its_intervals(tmp_path, caplog) -> None:
    data = [{"input_ids": torch.ones(4, dtype=torch.long)} for _ in range(16)]
    trainer = L.Trainer(max_steps=6, logger=False, callbacks=[LineProgress(every_s=3600)], limit_val_batches=0,
                        enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="zoo.progress"):
        trainer.fit(Tiny(), DataLoader(data, batch_size=2))
    lines = [r.getMessage() for r in caplog.records if r.name == "zoo.progress"]
    assert len(lines) == 1 and lines[0].startswith("step 6/6 (100%)")  # the last step always logs


def test_progress_callbacks_choose_by_terminal(tmp_path) -> None:
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as terminal, open(tmp_path / "log", "w") as file:
        assert progress_callbacks(None, terminal) == []  # a terminal keeps Lightning's live bar
        assert [type(c) for c in progress_callbacks(None, file)] == [LineProgress]
        assert progress_callbacks(False, file) == []  # trainer.enable_progress_bar=false: nothing
    os.close(primary)


def test_rate_and_eta_follow_the_recent_steps(tmp_path, caplog, monkeypatch) -> None:
    """Steps 1-5 take 1 s, then 10 s each: the ETA reads the last lines' pace, not the average."""
    import zoo.progress

    clock = {"t": 0.0}
    monkeypatch.setattr(zoo.progress.time, "monotonic", lambda: clock["t"])

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            clock["t"] += 1.0 if trainer.global_step <= 5 else 10.0

    data = [{"input_ids": torch.ones(4, dtype=torch.long)} for _ in range(16)]
    trainer = L.Trainer(max_steps=10, logger=False, callbacks=[Tick(), LineProgress(every_s=0, window=2)],
                        limit_val_batches=0, enable_checkpointing=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="zoo.progress"):
        trainer.fit(Tiny(), DataLoader(data, batch_size=2))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("step 9/10"))
    assert "eta 0:00:10" in line and "elapsed 0:00:45" in line  # the average pace would say 0:00:05
