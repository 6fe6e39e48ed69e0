"""Batches that carry per-token entropy estimates, and a fixed document budget.

:class:`EntropyDataModule` is the zoo's :class:`~zoo.data.datamodule.TextDataModule` plus a
recipe's ``entropy:`` section:

* ``estimates``: the ``out=`` folder of ``python -m zoo.entropy estimate``. Every split whose
  token cache has estimates there gets an ``entropy`` key in its samples: float32 nats aligned
  with ``labels`` (NaN where a target has no estimate or is not scored). Entropy-aware losses
  (``loss.kind``, :mod:`zoo.objectives`) read it.
* ``train_documents``: train on the first ``N`` documents of the training split only (the
  paper's data-limited regime: a fixed document budget, many epochs); val and test are whole.

Both layouts are supported; a budget needs a single source.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from zoo.data.datamodule import TextDataModule
from zoo.data.layouts import IGNORE_INDEX, LeftPaddedDataset, MixtureDataset, PackedDataset
from zoo.entropy.estimate import ESTIMATES_FILE, estimates_path
from zoo.errors import ZooError

ENTROPY_OPTIONS = ("estimates", "train_documents")


class WithEntropy(Dataset):
    """Adds ``entropy`` (nats, aligned with ``labels``) to a packed or left-padded dataset."""

    def __init__(self, base: PackedDataset | LeftPaddedDataset, estimates: np.ndarray) -> None:
        if len(estimates) != base.split.n_tokens:
            raise ZooError(f"estimates of {len(estimates)} tokens do not fit {base.split.name} "
                           f"({base.split.n_tokens} tokens): they were computed on other data")
        self.base, self.estimates = base, estimates

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        sample = self.base[i]
        n = self.base.n_ctx
        h = np.full(n, np.nan, dtype=np.float32)
        if isinstance(self.base, PackedDataset):  # targets are tokens start+1 .. start+n_ctx
            part = np.asarray(self.estimates[i * n + 1:i * n + n + 1], dtype=np.float32)
            h[:len(part)] = part
        else:  # the document's first tokens, right-aligned after the pads
            start = int(self.base.split.offsets[i])
            L = min(n, int(self.base.split.offsets[i + 1]) - start - 1)
            if L:
                h[n - L:] = self.estimates[start:start + L]
        entropy = torch.from_numpy(h)
        sample["entropy"] = torch.where(sample["labels"] != IGNORE_INDEX, entropy, torch.nan)
        return sample


def _map_parts(ds: Dataset, fn) -> Dataset:
    """Apply ``fn`` to each packed/left-padded part of a (mixture or concatenated) dataset."""
    if isinstance(ds, PackedDataset | LeftPaddedDataset):
        return fn(ds)
    if isinstance(ds, MixtureDataset):
        ds.parts = [_map_parts(p, fn) for p in ds.parts]
        return ds
    if isinstance(ds, ConcatDataset):
        ds.datasets = [_map_parts(p, fn) for p in ds.datasets]
        return ds
    return ds


def document_budget(ds: Dataset, n_documents: int) -> Dataset:
    """The samples of the first ``n_documents`` documents of a single-source split."""
    if not isinstance(ds, PackedDataset | LeftPaddedDataset | WithEntropy):
        raise ZooError("entropy.train_documents needs a single data source")
    base = ds.base if isinstance(ds, WithEntropy) else ds
    n_documents = min(n_documents, len(base.split))
    if isinstance(base, LeftPaddedDataset):
        return Subset(ds, range(n_documents))
    n_tokens = int(base.split.offsets[n_documents])
    return Subset(ds, range(max(n_tokens - 1, 0) // base.n_ctx))


class EntropyDataModule(TextDataModule):
    """:class:`TextDataModule` with estimates in the batches and a training-document budget.

    Args:
        entropy: ``{estimates: DIR or null, train_documents: N or null}`` (module docstring);
            every other argument is :class:`TextDataModule`'s.
    """

    def __init__(self, *args: Any, entropy: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = dict(entropy or {})
        bad = set(cfg) - set(ENTROPY_OPTIONS)
        if bad:
            raise ZooError(f"unknown entropy option(s) {sorted(bad)}; allowed: {', '.join(ENTROPY_OPTIONS)}")
        self.estimates_dir = Path(cfg["estimates"]).expanduser() if cfg.get("estimates") else None
        if self.estimates_dir is not None and not self.estimates_dir.is_dir():
            raise ZooError(f"entropy.estimates={cfg['estimates']}: no such folder "
                           "(write one with python -m zoo.entropy estimate ... out=DIR)")
        self.train_documents = cfg.get("train_documents")
        if self.train_documents is not None and (not isinstance(self.train_documents, int) or self.train_documents < 1):
            raise ZooError(f"entropy.train_documents must be a positive integer, got {self.train_documents!r}")
        #: splits whose samples carry estimates
        self.splits_with_entropy: list[str] = []

    def _attach(self, split: str, part: PackedDataset | LeftPaddedDataset) -> Dataset:
        if self.estimates_dir is None:
            return part
        folder = estimates_path(self.estimates_dir, part.split.path)
        if not (folder / ESTIMATES_FILE).is_file():
            return part
        if split not in self.splits_with_entropy:
            self.splits_with_entropy.append(split)
        return WithEntropy(part, np.memmap(folder / ESTIMATES_FILE, dtype=np.float32, mode="r"))

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        super().setup(stage)
        for split, ds in self._datasets.items():
            ds = _map_parts(ds, lambda part, s=split: self._attach(s, part))
            if split == "train" and self.train_documents is not None:
                ds = document_budget(ds, self.train_documents)
            self._datasets[split] = ds
