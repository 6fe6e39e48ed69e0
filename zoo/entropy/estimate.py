"""Per-token entropy estimates by the chain rule, from a trained model on left-padded input.

For a document ``x_1 .. x_L`` let ``S(j)`` be the model's total cross-entropy (nats) of the
prefix ``x_1 .. x_j`` scored as one left-padded sample (end-of-text, then the prefix; the
layout :class:`zoo.data.layouts.LeftPaddedDataset` trains on). The chain rule
``H(x_j | x_<j) = H(x_1..x_j) - H(x_1..x_{j-1})`` gives the per-token estimate

    h_j = S(j) - S(j - 1),      S(0) = 0,

so ``sum_j h_j = S(L)`` exactly (the estimates telescope to the sequence's code length).
With an encoder-augmented decoder (:mod:`zoo.models.eacd`) ``S`` is the decoder's CE given
the oracle vector of that very prefix, and ``h_j`` is the paper's estimate: "shift the window
right by one pad (prepend a pad, drop the last token), sum again, subtract". Estimates can be
negative. With a plain causal model ``h_j`` is just the NLL of ``x_j``.

Cost. The naive form (:func:`naive_estimates`) runs two forward passes per token, ``2L``
per document. :func:`chain_rule_estimates` needs each prefix only once (``S(j)`` is shared by
``h_j`` and ``h_{j+1}``), and packs the prefixes of many documents, sorted by length, as the
rows of one batch, cropping the batch's left padding to its longest prefix (a left-padded
row and its cropped copy compute the same losses; positions are counted from the first real
token). A document of ``L`` tokens costs ``L`` rows, ``batch_size`` rows per forward pass.

:func:`estimate_split` runs it over a tokenised split and writes the estimates
memory-mapped, aligned token for token with the split's token cache
(:mod:`zoo.data.cache`), resumably. Documents are truncated to the model's ``n_ctx`` (as
in training); tokens past it and the end-of-text tokens hold NaN.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from zoo.data.layouts import IGNORE_INDEX
from zoo.errors import ZooError

LN2 = math.log(2.0)
#: name of the estimate file in each split's folder: float32 nats, one per cached token
ESTIMATES_FILE = "entropy.f32"

#: ``model_fn(batch) -> logits [B, T, V]``; batch has input_ids, attention_mask, labels
ModelFn = Callable[[dict[str, Tensor]], Tensor]


def prefix_batch(prefixes: Sequence[np.ndarray], width: int, pad_id: int, eot_id: int) -> dict[str, Tensor]:
    """Left-padded samples of the given token prefixes, ``width`` positions each.

    Row ``r`` is ``[pad ...] eot x_1 .. x_j`` cut into inputs (all but the last) and labels
    (all but the first; ``-100`` at pads), exactly as :class:`LeftPaddedDataset` builds a
    document of ``j`` tokens with ``n_ctx = width``.
    """
    B = len(prefixes)
    window = np.full((B, width + 1), pad_id, dtype=np.int64)
    valid = np.zeros((B, width), dtype=bool)
    for r, p in enumerate(prefixes):
        j = len(p)
        if j > width:
            raise ValueError(f"a prefix of {j} tokens does not fit {width} positions")
        window[r, width - j] = eot_id
        if j:
            window[r, width + 1 - j:] = p
        valid[r, width - j:] = True
    x, y = torch.from_numpy(window[:, :-1]), torch.from_numpy(window[:, 1:])
    v = torch.from_numpy(valid)
    return {"input_ids": x, "labels": torch.where(v, y, IGNORE_INDEX), "attention_mask": v.long()}


@torch.no_grad()
def sequence_nll(model_fn: ModelFn, batch: dict[str, Tensor]) -> Tensor:
    """Total NLL in nats of each row's scored tokens, ``[B]`` float64."""
    logits = model_fn(batch)
    labels = batch["labels"].to(logits.device)
    logp = F.log_softmax(logits.float(), dim=-1)
    valid = labels != IGNORE_INDEX
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, -picked, torch.zeros_like(picked)).sum(-1).double().cpu()


def chain_rule_estimates(
    model_fn: ModelFn,
    docs: Sequence[np.ndarray],
    n_ctx: int,
    pad_id: int,
    eot_id: int,
    batch_size: int = 64,
    crop: bool = True,
    device: torch.device | str = "cpu",
) -> list[np.ndarray]:
    """Per-token estimates ``h_j = S(j) - S(j-1)`` (nats) of every document, batched.

    Every prefix ``x_1..x_j`` (``j = 1..min(L, n_ctx)``) of every document is one row; rows
    are sorted by length and run ``batch_size`` at a time, each batch cropped to its longest
    prefix when ``crop``. Returns one float64 array per document (``min(L, n_ctx)`` values).
    """
    docs = [np.asarray(d[:n_ctx], dtype=np.int64) for d in docs]
    rows = [(i, j) for i, d in enumerate(docs) for j in range(1, len(d) + 1)]
    rows.sort(key=lambda r: r[1])
    S = [np.zeros(len(d) + 1) for d in docs]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = chunk[-1][1] if crop else n_ctx
        batch = prefix_batch([docs[i][:j] for i, j in chunk], width, pad_id, eot_id)
        nll = sequence_nll(model_fn, {k: v.to(device) for k, v in batch.items()})
        for (i, j), s in zip(chunk, nll.tolist(), strict=True):
            S[i][j] = s
    return [np.diff(s) for s in S]


def naive_estimates(
    model_fn: ModelFn, doc: np.ndarray, n_ctx: int, pad_id: int, eot_id: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """The reference implementation: for every token two forward passes of one full-width
    row, the window ending at the token and the window shifted right by one pad."""
    doc = np.asarray(doc[:n_ctx], dtype=np.int64)
    out = np.zeros(len(doc))
    for j in range(1, len(doc) + 1):
        full = prefix_batch([doc[:j]], n_ctx, pad_id, eot_id)
        shifted = prefix_batch([doc[:j - 1]], n_ctx, pad_id, eot_id)
        s_full = sequence_nll(model_fn, {k: v.to(device) for k, v in full.items()})[0]
        s_shift = sequence_nll(model_fn, {k: v.to(device) for k, v in shifted.items()})[0]
        out[j - 1] = float(s_full - s_shift)
    return out


def task_model_fn(task: Any) -> ModelFn:
    """A ``model_fn`` from a :class:`zoo.lit.language_model.LanguageModelTask` (eval mode)."""
    task.eval()
    return lambda batch: task(batch)


# --------------------------------------------------------------------------------------------
# a whole split, memory-mapped and resumable


def summarize(estimates: np.ndarray, token_bytes: np.ndarray) -> dict[str, Any]:
    """Summary statistics of the finite estimates (nats in, bits out)."""
    keep = np.isfinite(estimates)
    h = estimates[keep].astype(np.float64) / LN2
    if not len(h):
        return {"tokens": 0}
    nbytes = int(token_bytes[keep].sum())
    q = np.percentile(h, [1, 5, 25, 50, 75, 95, 99])
    counts, edges = np.histogram(h, bins=20)
    return {
        "tokens": int(len(h)), "bytes": nbytes,
        "mean_bits_per_token": float(h.mean()), "std_bits_per_token": float(h.std()),
        "bits_per_byte": float(h.sum() / max(nbytes, 1)),
        "fraction_negative": float((h < 0).mean()),
        "percentiles_bits": dict(zip(("p1", "p5", "p25", "p50", "p75", "p95", "p99"), map(float, q), strict=True)),
        "histogram_bits": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def estimates_path(out_dir: str | Path, token_cache: str | Path) -> Path:
    """Folder of a split's estimates: ``out_dir/<token cache folder>-<split>``, so the
    estimates are tied to the exact source, split and tokenizer they were computed on."""
    path = Path(token_cache)
    return Path(out_dir) / f"{path.parent.name}-{path.name}"


def open_estimates(folder: str | Path) -> np.memmap:
    """The float32 estimates (nats) of a finished or partial run, memory-mapped read-only."""
    return np.memmap(Path(folder) / ESTIMATES_FILE, dtype=np.float32, mode="r")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def estimate_split(
    model_fn: ModelFn,
    token_cache: str | Path,
    out_dir: str | Path,
    n_ctx: int,
    pad_id: int,
    eot_id: int,
    byte_lut: np.ndarray,
    batch_size: int = 64,
    max_documents: int | None = None,
    docs_per_chunk: int = 8,
    identity: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Estimate every document of one cached split and write ``out_dir/<cache name>/``.

    Files: ``entropy.f32`` (float32 nats per cached token, NaN where not estimated: past
    ``n_ctx``, end-of-text tokens, documents not reached yet), ``progress.json`` (documents
    done; a rerun with the same ``identity`` continues from there) and, at the end,
    ``summary.json`` (:func:`summarize`). Returns the summary.
    """
    from zoo.data.cache import load_split

    split = load_split(Path(token_cache))
    folder = estimates_path(out_dir, token_cache)
    folder.mkdir(parents=True, exist_ok=True)
    n_docs = len(split) if max_documents is None else min(max_documents, len(split))
    # what the estimates depend on; a rerun that matches continues (also with a larger budget)
    ident = {"token_cache": str(Path(token_cache).resolve()), "n_ctx": n_ctx, **(identity or {})}
    progress_file, data_file = folder / "progress.json", folder / ESTIMATES_FILE
    done = 0
    if progress_file.is_file() and data_file.is_file():
        state = json.loads(progress_file.read_text())
        if state.get("identity") != ident:
            raise ZooError(f"{folder} holds estimates of another model or setting; give another out= or delete it")
        done = int(state["done"])
        est = np.memmap(data_file, dtype=np.float32, mode="r+")
    else:
        est = np.memmap(data_file, dtype=np.float32, mode="w+", shape=(split.n_tokens,))
        est[:] = np.nan
        est.flush()
        _write_json(progress_file, {"identity": ident, "done": 0})
    bar = tqdm(total=n_docs, initial=done, desc=f"entropy {split.name}", unit=" docs", disable=not progress,
               mininterval=1.0)
    while done < n_docs:
        idx = list(range(done, min(done + docs_per_chunk, n_docs)))
        docs = [np.asarray(split.document(i)) for i in idx]
        for i, h in zip(idx, chain_rule_estimates(model_fn, docs, n_ctx, pad_id, eot_id, batch_size, device=device),
                        strict=True):
            start = int(split.offsets[i])
            est[start:start + len(h)] = h.astype(np.float32)
        est.flush()
        done = idx[-1] + 1
        _write_json(progress_file, {"identity": ident, "done": done})
        bar.update(len(idx))
    bar.close()
    summary = summarize(np.asarray(est), byte_lut[np.asarray(split.tokens)])
    summary.update(split=split.name, documents=n_docs, n_ctx=n_ctx, folder=str(folder))
    _write_json(folder / "summary.json", summary)
    return summary
