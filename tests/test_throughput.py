"""The FLOP formula of benchmarks/throughput.py (the MFU's numerator) against PyTorch's own
count of a real training step, per family; nothing here is timed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from zoo.models import build_model
from zoo.models.moe import auxiliary_loss

SPEC = importlib.util.spec_from_file_location(
    "throughput", Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
)
throughput = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(throughput)

VOCAB, N_CTX, BATCH = 64, 16, 2


def counted_and_formula(cfg: dict) -> tuple[float, float, float]:
    """(FLOPs per token counted by FlopCounterMode over forward + backward, the formula's,
    the formula's attention term)."""
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB, N_CTX)
    ids = torch.randint(0, VOCAB, (BATCH, N_CTX))
    kwargs = {"targets": ids} if getattr(model, "needs_targets", False) else {}
    counter = FlopCounterMode(display=False)
    with counter:
        loss = F.cross_entropy(model(ids, **kwargs).flatten(0, 1), ids.flatten())
        aux = auxiliary_loss(model)
        (loss + aux if aux is not None else loss).backward()
    attention = 3 * throughput.mixing_flops(model, N_CTX) if cfg["family"] != "mixer" else 0.0
    return counter.get_total_flops() / (BATCH * N_CTX), throughput.train_flops_per_token(model, N_CTX), attention


def test_mixer_formula_equals_the_counted_flops() -> None:
    counted, formula, _ = counted_and_formula({"family": "mixer", "d_model": 32, "n_layers": 2})
    assert counted == pytest.approx(formula, rel=1e-6)


@pytest.mark.parametrize("family", ["llama", "moe"])
def test_llama_formula_is_the_counted_matmuls_plus_attention(family) -> None:
    cfg = throughput.model_config(family, 128)
    cfg.update(d_model=32, n_layers=2, n_heads=2)
    if family == "moe":  # no capacity limit: every token gets exactly k experts, as the formula counts
        cfg["moe"] = {**cfg["moe"], "d_ff": 48, "capacity_factor": None}
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
