"""The loss/metric path over ``[N, V]`` logits: full float32 log-softmax vs the chunked Function.

Side by side in one run, for ``N`` rows and each vocabulary size and logits dtype:

* **train**: forward + backward of the per-row NLL (``loss = nll.mean()``). *old* is the
  path ``zoo.metrics.token_stats`` took before ``zoo.metrics.chunked``: ``F.log_softmax`` of
  the float32 logits over all rows, then a gather (autograd keeps the ``[N, V]`` float32
  log-probabilities; its backward writes two more ``[N, V]`` float32 tensors). *new* is
  :func:`zoo.metrics.chunked.chunked_nll`.
* **eval**: NLL and entropy without gradient. *old* is the previous evaluation pass
  (``_chunked_eval``: a float32 log-softmax per chunk of rows, then gather and entropy); *new*
  is ``chunked_nll(..., with_entropy=True)`` under ``torch.no_grad``.

Times are the median of ``--repeats`` runs, old and new interleaved so a change in the
machine's load hits both alike. Peak memory is the peak of the bytes of tensors allocated
during one call (forward and backward; the logits' gradient included, which both paths
write), counted by :class:`zoo.allocations.TensorAllocations` in a separate untimed call.
Takes about a minute at the defaults on a 2-core CPU.

Writes ``benchmarks/results/loss_path.{md,json}`` and prints the table.

    python benchmarks/loss_path.py [--rows 2048] [--vocabs 4096 8192] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from throughput import machine  # the sibling script benchmarks/throughput.py
from torch import Tensor

from zoo.allocations import TensorAllocations
from zoo.metrics.chunked import chunked_nll, default_chunk_size

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def old_train(logits: Tensor, labels: Tensor) -> Tensor:
    """The previous training path: one float32 log-softmax over all rows, then a gather."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -logp.gather(1, labels[:, None]).squeeze(1)


@torch.no_grad()
def old_eval(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The previous evaluation pass (``zoo.metrics.language._chunked_eval``), frozen here."""
    n, chunk = logits.shape[0], default_chunk_size(logits)
    picked = torch.empty(n, dtype=torch.float32)
    entropy = torch.empty(n, dtype=torch.float32)
    floor = torch.finfo(torch.float32).min
    for start in range(0, n, chunk):
        stop = start + chunk
        logp = F.log_softmax(logits[start:stop].float(), dim=-1)
        torch.gather(logp, 1, labels[start:stop, None], out=picked[start:stop, None])
        safe = logp.clamp_min_(floor)
        torch.sum(safe.exp().mul_(safe), -1, out=entropy[start:stop])
    return picked.neg_(), entropy.neg_()


def new_train(logits: Tensor, labels: Tensor) -> Tensor:
    """The chunked Function (what ``token_stats`` runs now)."""
    return chunked_nll(logits, labels)[0]


@torch.no_grad()
def new_eval(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """NLL and entropy from the chunked Function's one pass."""
    nll, entropy = chunked_nll(logits, labels, with_entropy=True)
    return nll, entropy


def train_step(nll_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], None]:
    """Forward and backward of ``nll_fn(logits).mean()`` on a fresh leaf over the logits."""

    def step(logits: Tensor, labels: Tensor) -> None:
        leaf = logits.detach().requires_grad_(True)
        nll_fn(leaf, labels).mean().backward()

    return step


PATHS = {
    "train": (train_step(old_train), train_step(new_train)),
    "eval": (old_eval, new_eval),
}


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of the tensors one call allocates (a separate, untimed call)."""
    with TensorAllocations() as mem:
        fn()
    return mem.peak


def measure(rows: int, vocab: int, dtype: torch.dtype, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds and peak bytes of old and new, per path, for one shape and dtype."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    out = {}
    for path, (old, new) in PATHS.items():
        calls = {"old": lambda f=old: f(logits, labels), "new": lambda f=new: f(logits, labels)}
        for call in calls.values():  # warm-up
            call()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                times[name].append(seconds(call))
        out[path] = {f"{name}_s": statistics.median(t) for name, t in times.items()}
        out[path].update({f"{name}_peak_bytes": peak_bytes(call) for name, call in calls.items()})
    return out


def table(results: list[dict]) -> str:
    """The Markdown table of all measurements, one row per path, shape and dtype."""
    lines = ["| path | N x V | logits | old ms | new ms | new / old | old peak MiB | new peak MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        old, new = r["old_s"] * 1e3, r["new_s"] * 1e3
        lines.append(f"| {r['path']} | {r['rows']} x {r['vocab']} | {r['dtype']} | {old:.1f} | {new:.1f} | "
                     f"{new / old:.2f} | {r['old_peak_bytes'] / 2**20:.0f} | {r['new_peak_bytes'] / 2**20:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2048, help="rows N of the logits (batch x time)")
    ap.add_argument("--vocabs", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=9, help="timed runs of each (median)")
    ap.add_argument("--out", type=Path, default=RESULTS / "loss_path", help="writes OUT.md and OUT.json")
    args = ap.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M")
    results = []
    for vocab in args.vocabs:
        for dtype in args.dtypes:
            for path, values in measure(args.rows, vocab, DTYPES[dtype], args.repeats).items():
                results.append({"path": path, "rows": args.rows, "vocab": vocab, "dtype": dtype, **values})
    command = "python benchmarks/loss_path.py " + " ".join(sys.argv[1:])
    header = (f"`{command.strip()}` on {machine('cpu')}, {started}; median of {args.repeats} interleaved runs; "
              f"load average at the end {os.getloadavg()[0]:.2f}. Peak: bytes of the tensors one call allocates "
              "(forward and backward, the logits' gradient included; `zoo.allocations.TensorAllocations`).")
    text = f"{header}\n\n{table(results)}\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    meta = {"command": command.strip(), "machine": machine("cpu"), "date": started, "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
