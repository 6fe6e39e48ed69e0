"""Models and the chain-rule estimator against a source of exactly known entropy.

The synthetic ``markov`` source (order 2, 4 letters, 24 letters per document; one letter =
one token = one byte with a merge-free byte-level tokenizer), the same as
``tests/test_entropy.py``. Trains a tiny causal Llama and two tiny EACDs (a free float32 vector
of 8 numbers, and 2 numbers in fp8 = 16 bits) and prints, after ``--steps`` steps:

* the causal model's val cross-entropy in bits/token beside the exact entropy rate ``H`` and
  the oracle's mean surprisal on the same tokens;
* each EACD's chain-rule estimate, averaged over positions with a full order-2 context, and
  its correlation with the oracle surprisal per token.

    python benchmarks/entropy_markov.py [--steps 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import lightning as L
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_entropy import BYTES, EACD, LLAMA, LN2, MARKOV, N_CTX, fit, ids, val_docs, val_nll_bits  # noqa: E402

from zoo.data.datamodule import TextDataModule  # noqa: E402
from zoo.entropy.estimate import chain_rule_estimates, task_model_fn  # noqa: E402
from zoo.lit.language_model import LanguageModelTask  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    dm = TextDataModule([MARKOV], layout="left_padded", n_ctx=N_CTX, batch_size=32, eval_batch_size=64,
                        tokenizer=BYTES, cache_dir=Path(tempfile.mkdtemp()))
    dm.prepare_data()
    dm.setup()
    src = dm.sources[0]
    H = src.entropy_rate
    pad, eot = ids(dm)
    docs = val_docs(dm, 120)
    oracle = np.concatenate([src.chain.surprisals(dm.tokenizer.decode(d.tolist()))[2:] for d in docs])
    optim = {"lr": 1e-2, "warmup_steps": 10, "schedule": "constant"}
    rows = []
    L.seed_everything(0)
    causal = LanguageModelTask(LLAMA, vocab_size=dm.vocab_size, n_ctx=N_CTX, optim=optim)
    fit(causal, dm, args.steps)
    model, orc = val_nll_bits(causal.eval(), dm)
    rows.append(("causal Llama d=32 x 2: val CE", model.mean(), orc.mean(), float("nan")))
    for name, cfg in (("EACD, vector 8 x fp32 (256 bits)", {**EACD, "compression": 4, "vector_format": "fp32"}),
                      ("EACD, vector 2 x fp8 (16 bits)", EACD)):
        L.seed_everything(1)
        task = LanguageModelTask(cfg, vocab_size=dm.vocab_size, n_ctx=N_CTX, optim=optim)
        fit(task, dm, args.steps)
        est = chain_rule_estimates(task_model_fn(task), docs, N_CTX, pad, eot, batch_size=256)
        inner = np.concatenate([h[2:] for h in est]) / LN2
        rows.append((f"{name}: mean chain-rule estimate", inner.mean(), oracle.mean(),
                     float(np.corrcoef(inner, oracle)[0, 1])))
    print(f"markov source: order 2, 4 letters, exact entropy rate H = {H:.4f} bits/token; {args.steps} steps each\n")
    print("| model | bits/token | − H | oracle mean surprisal (same tokens) | r with oracle surprisal |")
    print("|---|---:|---:|---:|---:|")
    for name, v, o, r in rows:
        print(f"| {name} | {v:.4f} | {v - H:+.4f} | {o:.4f} | {'' if np.isnan(r) else f'{r:.3f}'} |")


if __name__ == "__main__":
    main()
