"""The second-order estimator: a small causal regressor that predicts the chain-rule estimates.

Exact chain-rule estimates (:mod:`zoo.entropy.estimate`) cost one forward pass of the EACD
per token. As in the paper, a small causal stack (the zoo's shared blocks,
:func:`zoo.models.blocks.build_stack`, a Llama or mixer stack) with a ``Linear(d, 1)`` head
is trained with MSE to predict them from the text, so estimates for a whole corpus cost one
forward pass per sequence.

The regressor reads the document's tokens ``x_1 .. x_L`` left-padded (the targets of a
left-padded sample) and predicts ``h_j`` at position ``j`` from ``x_1 .. x_j``: the estimate
of token ``j`` depends on the token itself, not only on its past. Its fit is reported on
held-out documents as R² and mean absolute error (nats and bits), beside the baseline that
predicts the training mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.models.blocks import build_stack

LN2 = math.log(2.0)
DEFAULT_STACK = {"kind": "llama", "d_model": 64, "n_layers": 2, "n_heads": 4}


class EntropyRegressor(nn.Module):
    """Token embedding → causal stack → ``Linear(d, 1)``: one estimate (nats) per position.

    Args:
        vocab_size, n_ctx: the tokenizer's size and the longest sequence.
        stack: a :func:`build_stack` spec; keys not given come from the default (Llama,
            d=64 × 2 layers, 4 heads).
    """

    def __init__(self, vocab_size: int, n_ctx: int, stack: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        spec = {**DEFAULT_STACK, **dict(stack or {})}  # given keys over the default Llama stack
        if spec["kind"] != "llama" and "n_heads" not in (stack or {}):
            spec.pop("n_heads")
        self.spec, self.vocab_size, self.n_ctx = spec, vocab_size, n_ctx
        self.embed = nn.Embedding(vocab_size, int(spec["d_model"]))
        self.stack = build_stack(spec, n_ctx)
        nn.init.normal_(self.embed.weight, std=self.stack.embedding_std)
        self.head = nn.Linear(int(spec["d_model"]), 1)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """``[B, T]`` tokens (pads marked 0 in ``mask``) → ``[B, T]`` estimates in nats."""
        return self.head(self.stack(self.embed(tokens), mask)).squeeze(-1)


def regression_rows(docs: Sequence[np.ndarray], estimates: Sequence[np.ndarray], n_ctx: int,
                    pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded ``tokens`` ``[N, n_ctx]``, ``mask`` and ``targets`` (NaN at pads/unknown)."""
    N = len(docs)
    tokens = np.full((N, n_ctx), pad_id, dtype=np.int64)
    mask = np.zeros((N, n_ctx), dtype=np.int64)
    targets = np.full((N, n_ctx), np.nan, dtype=np.float32)
    for r, (d, h) in enumerate(zip(docs, estimates, strict=True)):
        L = min(len(d), len(h), n_ctx)
        if L:
            tokens[r, n_ctx - L:] = d[:L]
            mask[r, n_ctx - L:] = 1
            targets[r, n_ctx - L:] = h[:L]
    return torch.from_numpy(tokens), torch.from_numpy(mask), torch.from_numpy(targets)


def fit_report(pred: np.ndarray, target: np.ndarray, train_mean: float) -> dict[str, float]:
    """R², MAE (nats and bits), RMSE, and the MAE of always predicting the training mean."""
    resid = pred - target
    ss_res = float((resid**2).sum())
    ss_tot = float(((target - target.mean()) ** 2).sum())
    mae = float(np.abs(resid).mean())
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "mae_nats": mae, "mae_bits": mae / LN2, "rmse_nats": math.sqrt(ss_res / len(target)),
        "baseline_mae_nats": float(np.abs(target - train_mean).mean()),
        "mean_target_bits": float(target.mean() / LN2), "mean_pred_bits": float(pred.mean() / LN2),
        "tokens": int(len(target)),
    }


@torch.no_grad()
def predict(model: EntropyRegressor, tokens: Tensor, mask: Tensor, batch_size: int = 256) -> Tensor:
    """Estimates ``[N, T]`` (nats), one forward pass per row."""
    model.eval()
    return torch.cat([model(tokens[i:i + batch_size], mask[i:i + batch_size])
                      for i in range(0, len(tokens), batch_size)])


def train_regressor(
    docs: Sequence[np.ndarray], estimates: Sequence[np.ndarray], vocab_size: int, n_ctx: int, pad_id: int,
    stack: Mapping[str, Any] | None = None, steps: int = 500, batch_size: int = 32, lr: float = 2e-3,
    held_out: float = 0.1, seed: int = 0,
) -> tuple[EntropyRegressor, dict[str, Any]]:
    """Train on all but the last ``held_out`` fraction of documents (MSE on tokens with an
    estimate); return the model and its fit on the held-out documents (:func:`fit_report`)."""
    torch.manual_seed(seed)
    tokens, mask, targets = regression_rows(docs, estimates, n_ctx, pad_id)
    n_test = max(1, int(round(len(docs) * held_out)))
    if len(docs) - n_test < 1:
        raise ValueError("need at least 2 documents to hold some out")
    tr, te = slice(0, len(docs) - n_test), slice(len(docs) - n_test, len(docs))
    known_tr = torch.isfinite(targets[tr])
    train_mean = float(targets[tr][known_tr].mean())
    model = EntropyRegressor(vocab_size, n_ctx, stack)
    with torch.no_grad():
        model.head.bias.fill_(train_mean)  # start at the mean: MSE falls from the variance
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    n_train = tr.stop
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n_train, (min(batch_size, n_train),), generator=g)
        y = targets[idx]
        known = torch.isfinite(y)
        pred = model(tokens[idx], mask[idx])
        loss = F.mse_loss(pred[known], y[known])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    pred = predict(model, tokens[te], mask[te])
    known = torch.isfinite(targets[te])
    report = fit_report(pred[known].double().numpy(), targets[te][known].double().numpy(), train_mean)
    report.update(train_documents=n_train, held_out_documents=n_test, steps=steps)
    return model, report
