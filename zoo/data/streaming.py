"""Streaming mode (``data.streaming=true``): train on the stream, tokenised on the fly.

For corpora larger than the disk, and to start training at once. Per source:

* the first ``heldout_documents`` documents of the stream are held out (as the paper held
  out the first 50k): :class:`HeldOutSlice` splits them into val and test by a hash of the
  text, and they are tokenised into the ordinary token cache once, so evaluation is fixed
  and repeatable;
* every later document is training data, read by :class:`StreamingSamples`, an
  ``IterableDataset`` in which process ``r`` of ``W`` and dataloader worker ``w`` of ``K``
  take the documents ``j`` with ``j % (W·K) == r·K + w``: ranks and workers never share a
  document, and together they cover the stream once per epoch. Documents are tokenised in
  small batches and packed into windows of ``n_ctx + 1`` tokens (``packed``) or cut to one
  sample each (``left_padded``), the same samples the cached path makes.

Its position (per source: documents taken, tokens not yet emitted; the number of samples
drawn) is what ``state_dict`` returns, and the ``StatefulDataLoader`` stores it in every
checkpoint, so a killed run resumed with ``resume=auto`` continues the stream where the
checkpoint was written and ends with the weights of an uninterrupted run. An epoch ends when
the first source runs out.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerFast

from zoo.data.layouts import sample_from_window
from zoo.data.sources import COMMON_OPTIONS, Source, Unit, split_of
from zoo.data.tokenizer import EOT
from zoo.schema import LAYOUTS


class HeldOutSlice(Source):
    """The first ``n`` documents of ``source``, split half and half into val and test.

    A source of its own (cached like any other); its train split is empty on purpose.
    """

    EMPTY_OK = frozenset({"train"})

    def __init__(self, source: Source, n: int) -> None:
        self.inner, self.n = source, n
        super().__init__(f"{source.name}-heldout", {**COMMON_OPTIONS, "split_salt": source.split_salt,
                                                      "heldout_documents": n})

    def _split(self, text: str) -> str:
        return "test" if split_of(text, 0.0, 0.5, self.split_salt) == "test" else "val"

    def units(self) -> list[Unit]:  # size: a guess of 4 KB a document (for time estimates)
        return [Unit(0, f"first {self.n:,} documents of {self.inner.name}", 4096 * self.n)]

    def _all_documents(self) -> Iterator[str]:
        return itertools.islice(self.inner.stream(), self.n)

    def _content_key(self) -> dict[str, Any]:
        return {"of": self.inner.fingerprint()}


def training_documents(source: Source, heldout: int) -> Iterator[str]:
    """The documents of ``source`` after its held-out slice, in stream order."""
    return itertools.islice(source.stream(), heldout, None)


class StreamingSamples(IterableDataset):
    """Training samples from the sources' streams (module docstring).

    Args:
        sources: the sources; ``weights`` mix them (one draw per sample, seeded).
        heldout: documents at the start of each stream that are not trained on.
        tokenizer, n_ctx, layout, byte_lut, pad_id: as for the cached datasets.
        rank, world_size: this process and how many there are.
        seed: seed of the mixture draws.
        docs_per_batch: documents tokenised at a time.
    """

    def __init__(self, sources: Sequence[Source], weights: Sequence[float], heldout: int,
                 tokenizer: PreTrainedTokenizerFast, n_ctx: int, layout: str, byte_lut: np.ndarray, pad_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, docs_per_batch: int = 32) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}")
        self.sources, self.heldout = list(sources), heldout
        w = np.asarray(weights, dtype=np.float64)
        self.cum_weights = np.cumsum(w / w.sum())
        self.tokenizer, self.n_ctx, self.layout = tokenizer, n_ctx, layout
        self.byte_lut, self.pad_id = byte_lut, pad_id
        self.eot_id = tokenizer.convert_tokens_to_ids(EOT)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.docs_per_batch = docs_per_batch
        self._state = self._fresh_state()
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state
    def _fresh_state(self) -> dict[str, Any]:
        return {"samples": 0, "sources": [{"documents": 0, "buffer": torch.zeros(0, dtype=torch.int64)}
                                          for _ in self.sources]}

    def state_dict(self) -> dict[str, Any]:
        """Where this worker is in the stream (stored in checkpoints by the dataloader)."""
        s = self._state
        return {"samples": s["samples"], "sources": [{"documents": p["documents"], "buffer": p["buffer"].clone()}
                                                     for p in s["sources"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next ``iter()``."""
        self._restored = state

    # ------------------------------------------------------------------ iteration
    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers

    def _encoded(self, k: int, slot: int, slots: int, skip: int) -> Iterator[list[list[int]]]:
        """Token ids of this slot's documents of source ``k``, in batches, after ``skip`` of them."""
        mine = itertools.islice(training_documents(self.sources[k], self.heldout), slot, None, slots)
        mine = itertools.islice(mine, skip, None)
        backend = self.tokenizer.backend_tokenizer
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        while batch := list(itertools.islice(mine, self.docs_per_batch)):
            yield [e.ids for e in encode(batch, add_special_tokens=False)]

    def _draw(self, slot: int, i: int) -> int:
        if len(self.sources) == 1:
            return 0
        u = np.random.default_rng([self.seed, slot, i]).random()
        return int(np.searchsorted(self.cum_weights, u, side="right").clip(max=len(self.sources) - 1))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        slot, slots = self._slot()
        state = self._restored or self._fresh_state()
        self._restored = None
        self._state = state = {"samples": state["samples"],
                               "sources": [{"documents": p["documents"], "buffer": p["buffer"].clone()}
                                           for p in state["sources"]]}
        streams = [self._encoded(k, slot, slots, p["documents"]) for k, p in enumerate(state["sources"])]
        need = self.n_ctx + 1
        while True:
            k = self._draw(slot, state["samples"])
            part = state["sources"][k]
            if self.layout == "packed":
                while len(part["buffer"]) < need:
                    batch = next(streams[k], None)
                    if batch is None:
                        return  # this source ran out: the epoch ends
                    flat = [t for ids in batch for t in (*ids, self.eot_id)]
                    part["buffer"] = torch.cat([part["buffer"], torch.tensor(flat, dtype=torch.int64)])
                    part["documents"] += len(batch)
                window, part["buffer"] = part["buffer"][:need], part["buffer"][need - 1:]
                sample = sample_from_window(window.numpy(), np.ones(self.n_ctx, bool), np.ones(self.n_ctx, bool),
                                            self.byte_lut)
            else:
                if not len(part["buffer"]):
                    batch = next(streams[k], None)
                    if batch is None:
                        return
                    # one document per sample: keep its first n_ctx tokens, length-prefixed
                    flat = [t for ids in batch for t in (min(len(ids), self.n_ctx), *ids[: self.n_ctx])]
                    part["buffer"] = torch.tensor(flat, dtype=torch.int64)
                    part["documents"] += len(batch)
                n = int(part["buffer"][0])
                doc, part["buffer"] = part["buffer"][1 : n + 1].numpy(), part["buffer"][n + 1 :]
                n_pad = self.n_ctx - n
                window = np.concatenate([np.full(n_pad, self.pad_id, np.int64), [self.eot_id], doc])
                positions = np.arange(self.n_ctx)
                sample = sample_from_window(window, positions >= n_pad, positions >= n_pad, self.byte_lut)
            state["samples"] += 1
            yield sample


class PrefetchedStreamLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` whose state leaves out the one batch Lightning holds ahead.

    Lightning's training loop fetches one batch in advance from a loader without a length
    (to know when the epoch ends), so when it checkpoints after step ``k`` the loader has
    already produced batch ``k + 1``. Saving the loader's own state would skip that batch on
    resume; this loader returns the state from before the batch it produced last (or, once the
    stream is exhausted, its final state, since then no batch is held).
    """

    _held_state: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        self._held_state = None

        def batches() -> Iterator[Any]:
            while True:
                before = super(PrefetchedStreamLoader, self).state_dict()
                try:
                    batch = next(iterator)
                except StopIteration:
                    self._held_state = None
                    return
                self._held_state = before
                yield batch

        return batches()

    def state_dict(self) -> dict[str, Any]:
        return self._held_state if self._held_state is not None else super().state_dict()
