"""Map-style datasets that cut cached token splits into training samples.

Two layouts:

* **packed** — the split's documents, each followed by end-of-text, read as one stream and
  cut into windows of ``n_ctx + 1`` tokens (stride ``n_ctx``), so every token after the
  first is a target exactly once. Training drops the last partial window; evaluation keeps
  it, padded, so the whole split is scored. For causal baselines.
* **left_padded** — one document per sample: end-of-text, then its first ``n_ctx`` tokens,
  padded on the LEFT to ``n_ctx + 1``. The last position always holds the document's last
  kept token, which is where encoder-augmented models read their summary vector.

Every sample is a dict of int64 tensors of length ``n_ctx``: ``input_ids``, ``labels``
(the next token, -100 where there is nothing to predict), ``attention_mask`` and
``target_bytes`` (UTF-8 bytes each target stands for; 0 where ignored), so every model
family gets the same batch and bits per byte need no tokenizer at training time.

The datasets are map-style on purpose: Lightning gives them a ``DistributedSampler`` under
DDP and the ``DataLoader`` splits indices between workers, so ranks and workers see disjoint
samples and the order is fixed by the seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.cache import TokenizedSplit

#: the label of a position that is not scored (nothing to predict there, a pad, a side
#: token): the ``ignore_index`` of cross-entropy, defined here once for the whole package
IGNORE_INDEX = -100


def sample_from_window(window: np.ndarray, target_valid: np.ndarray, input_valid: np.ndarray, byte_lut: np.ndarray) -> dict:
    x = torch.from_numpy(window[:-1].astype(np.int64))
    y = torch.from_numpy(window[1:].astype(np.int64))
    valid = torch.from_numpy(target_valid)
    labels = torch.where(valid, y, IGNORE_INDEX)
    target_bytes = torch.from_numpy(byte_lut[window[1:]].astype(np.int64)) * valid
    return {
        "input_ids": x,
        "labels": labels,
        "attention_mask": torch.from_numpy(input_valid.astype(np.int64)),
        "target_bytes": target_bytes,
    }


class PackedDataset(Dataset):
    """Fixed-length windows over the concatenated documents of a split."""

    def __init__(self, split: TokenizedSplit, n_ctx: int, byte_lut: np.ndarray, pad_id: int, drop_last: bool) -> None:
        self.split, self.n_ctx, self.byte_lut, self.pad_id = split, n_ctx, byte_lut, pad_id
        n_targets = max(split.n_tokens - 1, 0)
        self._len = n_targets // n_ctx if drop_last else -(-n_targets // n_ctx)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self._len:
            raise IndexError(i)
        start = i * self.n_ctx
        window = self.split.check_ids(np.asarray(self.split.tokens[start : start + self.n_ctx + 1]))
        n = len(window)
        if n < self.n_ctx + 1:  # last partial window of an evaluation split: pad on the right
            window = np.concatenate([window, np.full(self.n_ctx + 1 - n, self.pad_id, window.dtype)])
        target_valid = np.arange(self.n_ctx) < n - 1
        input_valid = np.arange(self.n_ctx) < n
        return sample_from_window(window, target_valid, input_valid, self.byte_lut)


class LeftPaddedDataset(Dataset):
    """One document per sample, truncated to ``n_ctx`` tokens and left-padded."""

    def __init__(self, split: TokenizedSplit, n_ctx: int, byte_lut: np.ndarray, pad_id: int, eot_id: int) -> None:
        self.split, self.n_ctx, self.byte_lut = split, n_ctx, byte_lut
        self.pad_id, self.eot_id = pad_id, eot_id

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        doc = self.split.check_ids(np.asarray(self.split.document(i)[: self.n_ctx]))
        n_pad = self.n_ctx - len(doc)
        window = np.concatenate(
            [np.full(n_pad, self.pad_id, doc.dtype), np.asarray([self.eot_id], doc.dtype), doc]
        )
        positions = np.arange(self.n_ctx)
        return sample_from_window(window, positions >= n_pad, positions >= n_pad, self.byte_lut)


class MixtureDataset(Dataset):
    """Samples drawn from several datasets in fixed proportions, reproducibly.

    An epoch has as many samples as all parts together. Which part each index comes from
    is drawn once from ``weights`` with ``seed``; within a part, samples follow a seeded
    permutation and start over when the part runs out (small parts are repeated, large
    ones are subsampled within an epoch).
    """

    def __init__(self, parts: list[Dataset], weights: list[float], seed: int) -> None:
        if len(parts) != len(weights) or not parts:
            raise ValueError("need one weight per dataset")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum, got {weights}")
        rng = np.random.default_rng(seed)
        self.parts = parts
        total = sum(len(p) for p in parts)
        self.which = rng.choice(len(parts), size=total, p=w / w.sum())
        self.perms = [rng.permutation(len(p)) for p in parts]
        self.within = np.zeros(total, dtype=np.int64)
        for k in range(len(parts)):
            idx = np.flatnonzero(self.which == k)
            self.within[idx] = self.perms[k][np.arange(len(idx)) % len(parts[k])]

    def __len__(self) -> int:
        return len(self.which)

    def __getitem__(self, i: int) -> dict:
        return self.parts[self.which[i]][int(self.within[i])]
