"""Quantization-aware training where the vector matters: EACDs on a source of known entropy.

On the embedded text corpora a CPU-sized EACD trained for a few hundred steps barely reads
its vector (``benchmarks/qat.py`` measures the gain: ~0.01 BPB), so no storage format can hurt
it. The synthetic ``markov`` source (order 2, 4 letters, 24 letters per document, one letter =
one token = one byte) is different: an oracle vector of 8 numbers carries real information
about each random document, and the decoder learns to use it within a few hundred steps.

For the same EACD (Llama encoder d=32 -> 8 numbers, Llama decoder d=32 x 2, vector as a
token) trained without noise, with ``U(-2^-4, 2^-4)`` noise on the vector (``after_down``) and
with the noise before ``down`` (``before_down``), this prints the val bits per token (= bits
per byte) WITHOUT the vector's cost, the vector stored in each format, and what the vector is
worth (another document's vector instead of its own). The source's exact entropy rate is the
floor a causal model could reach; the EACD goes below it only thanks to its free vector.

    python benchmarks/qat_markov.py [--steps 400] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch

from zoo.data.datamodule import TextDataModule
from zoo.lit.language_model import LanguageModelTask
from zoo.metrics import token_stats
from zoo.quantize import VECTOR_FORMATS

N_CTX = 24
MARKOV = {"name": "markov", "alphabet": 4, "order": 2, "length": N_CTX, "n_documents": 4000, "seed": 3,
          "val_fraction": 0.1, "test_fraction": 0.05}
BYTES = {"vocab_size": 258, "train_bytes": 20_000}  # a byte-level BPE with no merges
STACK = {"kind": "llama", "d_model": 32, "n_heads": 2}
VARIANTS = {"no noise": {"noise_q": 0.0}, "noise after down": {"noise_q": 2.0**-4, "noise_at": "after_down"},
            "noise before down": {"noise_q": 2.0**-4, "noise_at": "before_down"}}
FORMATS = ["fp32", "bf16", "fp16", "int8", "fp8_e4m3", "fp8_e5m2"]


@torch.no_grad()
def bits_per_token(model: torch.nn.Module, loader, shuffle_vectors: bool = False) -> float:
    """Mean val NLL in bits per scored token, vector for free (optionally another row's)."""
    bits = tokens = 0.0
    for b in loader:
        v = model.vector(b["input_ids"], b["attention_mask"], b["labels"])
        logits = model.decode(b["input_ids"], b["attention_mask"], v.roll(1, 0) if shuffle_vectors else v)
        s = token_stats(logits, b["labels"], b["target_bytes"], with_entropy=False)
        bits += float(s.nll.sum()) / math.log(2)
        tokens += float((b["labels"] != -100).sum())
    return bits / tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    dm = TextDataModule([MARKOV], layout="left_padded", n_ctx=N_CTX, batch_size=32, eval_batch_size=128,
                        tokenizer=BYTES, cache_dir=Path(tempfile.mkdtemp()))
    dm.prepare_data()
    dm.setup()
    H = dm.sources[0].entropy_rate
    loader = dm.eval_dataloader("val")
    results: dict[str, dict[str, list[float]]] = {}
    for name, noise in VARIANTS.items():
        for seed in args.seeds:
            L.seed_everything(seed)
            cfg = {"family": "eacd", "compression": 4, "injection": "token", "encoder": {**STACK, "n_layers": 1},
                   "decoder": {**STACK, "n_layers": 2}, **noise}
            task = LanguageModelTask(cfg, vocab_size=dm.vocab_size, n_ctx=N_CTX,
                                     optim={"lr": 1e-2, "warmup_steps": 10, "schedule": "constant"})
            L.Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, gradient_clip_val=1.0).fit(task, datamodule=dm)
            model = task.model.eval()
            row = results.setdefault(name, {})
            for fmt in FORMATS:
                model.set_vector_format(fmt)
                row.setdefault(fmt, []).append(bits_per_token(model, loader))
            model.set_vector_format("fp32")
            row.setdefault("other", []).append(bits_per_token(model, loader, shuffle_vectors=True))
            v = torch.cat([model.vector(b["input_ids"], b["attention_mask"], b["labels"]) for b in loader])
            row.setdefault("rms", []).append(v.pow(2).mean().sqrt().item())

    def cell(values: list[float], ref: list[float] | None = None) -> str:
        mean = float(np.mean(values))
        return f"{mean:.4f}" if ref is None else f"{mean:.4f} ({mean - float(np.mean(ref)):+.4f})"

    print(f"markov source: order 2, 4 letters, {N_CTX} letters per document; exact entropy rate "
          f"H = {H:.4f} bits/letter; {args.steps} steps; seeds {args.seeds}; vector: 8 numbers\n")
    print("| vector stored as (bits) | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---:|" * len(VARIANTS))
    for fmt in FORMATS:
        bits = VECTOR_FORMATS[fmt].bits_per_vector(8)
        print(f"| {fmt} ({bits}) | " + " | ".join(
            cell(results[n][fmt], None if fmt == "fp32" else results[n]["fp32"]) for n in VARIANTS) + " |")
    print("| another document's vector | " + " | ".join(cell(results[n]["other"], results[n]["fp32"])
                                                       for n in VARIANTS) + " |")
    print("| vector RMS | " + " | ".join(f"{np.mean(results[n]['rms']):.3f}" for n in VARIANTS) + " |")


if __name__ == "__main__":
    main()
