"""The FLOP formula of zoo.models.flops (the MFU's numerator of benchmarks/throughput.py) against PyTorch's own
count of a real training step, per family; nothing here is timed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from zoo.models import build_model
from zoo.models.base import auxiliary_loss
from zoo.models.flops import mixing_flops, train_flops_per_token

VOCAB, N_CTX, BATCH = 64, 16, 2


def counted_and_formula(cfg: dict) -> tuple[float, float, float]:
    """(FLOPs per token counted by FlopCounterMode over forward + backward, the formula's,
    the formula's attention term)."""
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB, N_CTX)
    ids = torch.randint(0, VOCAB, (BATCH, N_CTX))
    counter = FlopCounterMode(display=False)
    with counter:
        logits = model.forward_batch({"input_ids": ids, "labels": ids})
        loss = F.cross_entropy(logits.flatten(0, 1), ids.flatten())
        aux = auxiliary_loss(model)
        (loss + aux if aux is not None else loss).backward()
    attention = 3 * mixing_flops(model, N_CTX) if cfg["family"] != "mixer" else 0.0
    return counter.get_total_flops() / (BATCH * N_CTX), train_flops_per_token(model, N_CTX), attention


def test_mixer_formula_equals_the_counted_flops() -> None:
    counted, formula, _ = counted_and_formula({"family": "mixer", "d_model": 32, "n_layers": 2})
    assert counted == pytest.approx(formula, rel=1e-6)


@pytest.mark.parametrize("family", ["llama", "moe"])
def test_llama_formula_is_the_counted_matmuls_plus_attention(family) -> None:
    cfg = {"family": "llama", "d_model": 32, "n_layers": 2, "n_heads": 2}
    if family == "moe":  # no capacity limit: every token gets exactly k experts, as the formula counts
        cfg["moe"] = {"n_experts": 4, "k": 2, "d_ff": 48, "capacity_factor": None, "jitter": 0.01, "aux_loss_coef": 0.01}
    counted, formula, attention = counted_and_formula(cfg)
    # the CPU's fused attention kernel is invisible to FlopCounterMode; where it is counted,
    # the formula must match the count as it is
    assert counted == pytest.approx(formula - attention, rel=1e-6) or counted == pytest.approx(formula, rel=1e-6)


def test_eacd_formula_counts_both_stacks() -> None:
    stack = {"kind": "mixer", "d_model": 32, "n_layers": 2}
    cfg = {"family": "eacd", "compression": 4, "injection": "embedding", "encoder": stack, "decoder": dict(stack)}
    counted, formula, _ = counted_and_formula(cfg)
    # the encoder's vector (down: once per sequence) is counted per token by the formula
    assert counted == pytest.approx(formula, rel=2e-2)


def test_logged_steps_throughput_logs_what_the_stock_monitor_logs(tmp_path, monkeypatch) -> None:
    """zoo's ThroughputMonitor reads the clock only at logging steps (no CUDA sync per step) and
    logs the same rates as Lightning's, here with a clock that advances one second per step."""
    import csv

    import lightning as L
    from lightning.pytorch.callbacks import Callback, ThroughputMonitor
    from lightning.pytorch.callbacks import throughput_monitor as tm
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from zoo.callbacks import LoggedStepsThroughput

    clock = {"t": 0.0}
    monkeypatch.setattr(tm.time, "perf_counter", lambda: clock["t"])

    class Tick(Callback):
        def on_train_batch_end(self, *args) -> None:
            clock["t"] += 1.0

    class Tiny(L.LightningModule):
        flops_per_batch = 100.0

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.w(batch["input_ids"].float()).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = [{"input_ids": torch.zeros(4, dtype=torch.long)} for _ in range(64)]

    def run(monitor, name: str) -> dict[int, float]:
        clock["t"] = 0.0
        trainer = L.Trainer(max_steps=40, log_every_n_steps=5, logger=CSVLogger(tmp_path, name=name),
                            callbacks=[Tick(), monitor], enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.fit(Tiny(), DataLoader(data, batch_size=2))
        with open(next((tmp_path / name).glob("*/metrics.csv"))) as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/device/items_per_sec")]
        return {int(r["step"]): (float(r["train/device/items_per_sec"]), float(r["train/device/flops_per_sec"]))
                for r in rows}

    kwargs = {"batch_size_fn": lambda b: b["input_ids"].shape[0], "length_fn": lambda b: b["input_ids"].numel()}
    stock = run(ThroughputMonitor(window_size=21, **kwargs), "stock")
    ours = run(LoggedStepsThroughput(steps=20, log_every_n_steps=5, **kwargs), "ours")
    assert ours and set(ours) <= set(stock)
    for step, value in ours.items():
        assert value == pytest.approx(stock[step])
        assert value == pytest.approx((8.0, 100.0))  # 2 samples x 4 tokens, 100 FLOPs per one-second step


def test_task_flops_per_batch_is_the_formula_times_the_batch_tokens() -> None:
    """What Lightning's ThroughputMonitor reads from the task: training FLOPs of the batch in
    training, a third of them (the forward) in evaluation, None before any batch."""
    from zoo.lit.language_model import LanguageModelTask

    task = LanguageModelTask({"family": "llama", "d_model": 32, "n_layers": 2, "n_heads": 2}, VOCAB, N_CTX)
    assert task.flops_per_batch is None
    task.on_train_batch_start({"input_ids": torch.zeros(3, N_CTX, dtype=torch.long)}, 0)
    expected = train_flops_per_token(task.model, N_CTX) * 3 * N_CTX
    assert task.flops_per_batch == pytest.approx(expected)
    task.eval()
    task.on_validation_batch_start({"input_ids": torch.zeros(3, N_CTX // 2, dtype=torch.long)}, 0)
    assert task.flops_per_batch == pytest.approx(train_flops_per_token(task.model, N_CTX // 2) * 3 * N_CTX // 2 / 3)
