"""Optimizer state memory: torch AdamW vs bitsandbytes AdamW8bit (``optim.name=adamw8bit``).

Builds each model, takes ``--steps`` optimizer steps on the same random token batches with
each optimizer (same seed, same parameter groups as zoo.fit: no decay on norms, biases,
embeddings) and prints the bytes the optimizer state occupies and the loss after the last
step, side by side.

    python benchmarks/optimizer_memory.py --models llama_tiny llama_small mixer_tiny --steps 20
"""

from __future__ import annotations

import argparse

import torch
import yaml

from zoo.lit.language_model import optimizer_class
from zoo.models import build_model, count_parameters
from zoo.recipes import recipes_dir


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (moments, quantisation maps, scales)."""
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def run(model_name: str, optimizer: str, steps: int, vocab: int, n_ctx: int, batch: int) -> tuple[int, int, float]:
    cfg = yaml.safe_load((recipes_dir() / "model" / f"{model_name}.yaml").read_text())
    torch.manual_seed(0)
    model = build_model(cfg, vocab, n_ctx)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "norm" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "norm" not in n)]
    opt = optimizer_class(optimizer)([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                     lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(1)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        tokens = torch.randint(2, vocab, (batch, n_ctx + 1), generator=gen)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    n_params = count_parameters(model)
    return n_params, state_bytes(opt), loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["llama_tiny", "llama_small", "mixer_tiny"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--n-ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    print(f"{'model':14s} {'params':>11s} {'AdamW state':>12s} {'AdamW8bit':>12s} {'ratio':>6s} "
          f"{'loss AdamW':>10s} {'loss 8bit':>10s}")
    for name in args.models:
        n, full, loss_full = run(name, "adamw", args.steps, args.vocab, args.n_ctx, args.batch)
        _, small, loss_small = run(name, "adamw8bit", args.steps, args.vocab, args.n_ctx, args.batch)
        print(f"{name:14s} {n:>11,d} {full / 2**20:>9.2f} MiB {small / 2**20:>9.2f} MiB {small / full:>6.2f} "
              f"{loss_full:>10.4f} {loss_small:>10.4f}")


if __name__ == "__main__":
    main()
