"""The one LightningDataModule every model family trains on.

It turns a list of source specs (``[{"name": "edu"}, {"name": "math", "weight": 0.3}]``)
into tokenised, cached, memory-mapped splits and serves them in either sample layout.
``prepare_data`` (one process per node) trains or loads the tokenizer and fills the token
cache; ``setup`` (every process) only opens what is cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerFast

from zoo.data import cache, prepare
from zoo.data.layouts import LeftPaddedDataset, MixtureDataset, PackedDataset
from zoo.data.sharding import EvalShardSampler, GlobalBatchSampler, dist_info
from zoo.data.sources import SPLITS, Source, build_source
from zoo.data.streaming import (
    HeldOutSlice,
    PrefetchedStreamLoader,
    StreamingSamples,
    training_documents,
)
from zoo.data.tokenizer import (
    EOT,
    PAD,
    load_tokenizer,
    sample_texts,
    save_tokenizer,
    token_byte_lengths,
    train_bpe,
)
from zoo.errors import ZooError
from zoo.schema import DEFAULT_VOCAB_SIZE, LAYOUTS

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata calls a deprecated torch API


def _round_robin(streams: Sequence[Iterable[str]]) -> Iterator[str]:
    """One document of each stream in turn, so a capped sample covers all of them."""
    iters = [iter(s) for s in streams]
    while iters:
        for it in list(iters):
            try:
                yield next(it)
            except StopIteration:
                iters.remove(it)


def scored_bytes(loader: Any, tokenizer: PreTrainedTokenizerFast, max_batches: int | None = None) -> bytes:
    """The bytes the batches of ``loader`` score: each sample's labels turned back into bytes,
    samples joined by newlines."""
    from zoo.data.tokenizer import token_bytes

    table = token_bytes(tokenizer)
    rows = []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        for labels in batch["labels"].tolist():
            rows.append(b"".join(table[t] for t in labels if t >= 0))
    return b"\n".join(rows)


class TextDataModule(L.LightningDataModule):
    """Shared data for every family: sources → tokenizer → cached splits → batches.

    Args:
        sources: source specs, each ``{"name": ..., "weight": w, **options}`` (see
            :func:`zoo.data.sources.list_sources`). Weights mix the training split only;
            validation and test use every document of every source.
        layout: ``"packed"`` or ``"left_padded"`` (see :mod:`zoo.data.layouts`).
        n_ctx: tokens per sample the model reads.
        batch_size: training samples per step and device; ``eval_batch_size`` for val/test.
        tokenizer: ``{"path": file-or-folder}`` to use an existing tokenizer, or
            ``{"vocab_size": 8192, "train_bytes": 50_000_000}`` to train a byte-level BPE
            on (at most that many bytes of) the training split.
        cache_dir: where tokenizers and tokenised splits are cached (default ``~/.cache/zoo``).
        num_workers: dataloader worker processes.
        num_proc: processes that prepare (tokenise) the corpus; ``None``: every CPU.
        streaming: train on the sources' streams, tokenised on the fly (:mod:`zoo.data.streaming`);
            val and test are then the first ``heldout_documents`` documents of each source.
        prepare_command: the command that prepares this data beforehand (named in errors).
        seed: seed of the mixture draw and of the training shuffle.
    """

    def __init__(
        self,
        sources: Sequence[Mapping[str, Any]],
        layout: str = "packed",
        n_ctx: int = 256,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        tokenizer: Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        num_proc: int | None = None,
        streaming: bool = False,
        heldout_documents: int = 50_000,
        seed: int = 1234,
        prepare_command: str = "python -m zoo.data prepare data=... (the same data options)",
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ZooError(f"unknown data layout '{layout}'; available: {', '.join(LAYOUTS)}")
        if not sources:
            raise ZooError("data.sources is empty; give at least one source, e.g. [{name: edu}]")
        for name, value in (("n_ctx", n_ctx), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ZooError(f"data.{name} must be a positive integer, got {value!r}")
        specs = [dict(s) for s in sources]
        self.weights = [float(s.pop("weight", 1.0)) for s in specs]
        self.sources = [build_source(s) for s in specs]
        self.layout, self.n_ctx = layout, n_ctx
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.tokenizer_cfg = dict(tokenizer or {})
        unknown = set(self.tokenizer_cfg) - {"path", "vocab_size", "train_bytes"}
        if unknown:
            raise ZooError(
                f"unknown tokenizer option(s) {sorted(unknown)}; allowed: path, vocab_size, train_bytes"
            )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else cache.default_cache_dir()
        self.num_workers = num_workers
        if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
            raise ZooError(f"data.num_proc must be a positive integer or null (every CPU), got {num_proc!r}")
        self.num_proc = prepare.default_num_proc() if num_proc is None else num_proc
        self.prepare_command = prepare_command
        if not isinstance(streaming, bool):
            raise ZooError(f"data.streaming must be true or false, got {streaming!r}")
        if isinstance(heldout_documents, bool) or not isinstance(heldout_documents, int) or heldout_documents < 2:
            raise ZooError(f"data.heldout_documents must be an integer >= 2, got {heldout_documents!r}")
        self.streaming, self.heldout_documents = streaming, heldout_documents
        #: what val and test are cut from: the sources, or (streaming) their held-out slices
        self.eval_sources: list[Source] = (
            [HeldOutSlice(s, heldout_documents) for s in self.sources] if streaming else self.sources
        )
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed = seed
        self._tokenizer: PreTrainedTokenizerFast | None = None
        self._datasets: dict[str, Dataset] = {}

    # ---------------------------------------------------------------- tokenizer
    def _tokenizer_file(self) -> Path:
        vocab = int(self.tokenizer_cfg.get("vocab_size", DEFAULT_VOCAB_SIZE))
        train_bytes = int(self.tokenizer_cfg.get("train_bytes", 50_000_000))
        blob = json.dumps([[s.fingerprint() for s in self.sources], vocab, train_bytes])
        key = hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()
        return self.cache_dir / "tokenizers" / f"bpe{vocab}-{key}" / "tokenizer.json"

    def _load_or_train_tokenizer(self, train: bool) -> PreTrainedTokenizerFast:
        if self.tokenizer_cfg.get("path"):
            tok = load_tokenizer(self.tokenizer_cfg["path"])
            asked = self.tokenizer_cfg.get("vocab_size")
            if asked is not None and int(asked) != len(tok):
                # not an error: recipes set a size for the tokenizer they would train
                log.info("data.tokenizer.path %s has %d tokens; data.tokenizer.vocab_size=%s applies only "
                         "when a tokenizer is trained, so it is not used", self.tokenizer_cfg["path"], len(tok), asked)
            return tok
        path = self._tokenizer_file()
        if path.is_file():
            return load_tokenizer(path)
        if not train:
            raise ZooError(f"tokenizer {path} is missing; run prepare_data() first")
        vocab = int(self.tokenizer_cfg.get("vocab_size", 8192))
        train_bytes = int(self.tokenizer_cfg.get("train_bytes", 50_000_000))
        log.info("training a %d-token byte-level BPE on up to %d bytes of the training split", vocab, train_bytes)
        tok = train_bpe(sample_texts(self._training_texts(), train_bytes), vocab_size=vocab)
        save_tokenizer(tok, path)
        return tok

    def _training_texts(self) -> Iterator[str]:
        """Training documents of every source, round-robin (what the tokenizer samples)."""
        if self.streaming:
            return _round_robin([training_documents(s, self.heldout_documents) for s in self.sources])
        return _round_robin([s.documents("train") for s in self.sources])

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The tokenizer (trained and cached on first use)."""
        if self._tokenizer is None:
            self._tokenizer = self._load_or_train_tokenizer(train=True)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    # ---------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Train/load the tokenizer and tokenise every source into the cache (one pass each,
        on ``num_proc`` processes; a finished cache is found at once)."""
        tok = self.tokenizer
        for source in self.eval_sources if self.streaming else self.sources:
            prepare.inline_guard(source, tok, self.cache_dir, self.num_proc, self.prepare_command)
            prepare.prepare_source(source, tok, self.cache_dir, num_proc=self.num_proc)

    def split_path(self, source: Source, split: str) -> Path:
        """The cached split's folder (prepared first if needed)."""
        return prepare.split_tokens(source, split, self.tokenizer, self.cache_dir, self.num_proc)

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        tok = self._load_or_train_tokenizer(train=False) if self._tokenizer is None else self._tokenizer
        self._tokenizer = tok
        lut = token_byte_lengths(tok)
        pad, eot = tok.convert_tokens_to_ids(PAD), tok.convert_tokens_to_ids(EOT)
        for split in SPLITS:
            if split == "train" and self.streaming:
                rank, world = self._rank_world()
                self._datasets[split] = StreamingSamples(
                    self.sources, self.weights, self.heldout_documents, tok, self.n_ctx, self.layout, lut, pad,
                    rank=rank, world_size=world, seed=self.seed,
                )
                continue
            parts = []
            for source in self.eval_sources:
                data = cache.load_split(prepare.split_tokens(source, split, tok, self.cache_dir, self.num_proc),
                                        vocab_size=len(tok))
                if self.layout == "packed":
                    parts.append(PackedDataset(data, self.n_ctx, lut, pad, drop_last=split == "train"))
                else:
                    parts.append(LeftPaddedDataset(data, self.n_ctx, lut, pad, eot))
            if split == "train" and len(parts) > 1:
                ds: Dataset = MixtureDataset(parts, self.weights, self.seed)
            elif len(parts) > 1:
                ds = ConcatDataset(parts)
            else:
                ds = parts[0]
            if len(ds) == 0:
                raise ZooError(
                    f"the {split} split has no samples of {self.n_ctx + 1} tokens; "
                    "use more data or a smaller data.n_ctx"
                )
            self._datasets[split] = ds

    def dataset(self, split: str) -> Dataset:
        """The map-style dataset of a split (after :meth:`setup`)."""
        if split not in SPLITS:
            raise ZooError(f"unknown split '{split}'; available: {', '.join(SPLITS)}")
        self.setup()
        return self._datasets[split]

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return dist_info()

    def _loader(self, split: str, shuffle: bool, max_samples: int | None = None) -> DataLoader:
        ds = self.dataset(split)
        rank, world = self._rank_world()
        if isinstance(ds, StreamingSamples):  # shards itself by rank and worker
            if not shuffle:
                raise ZooError("data.streaming=true: the training stream has no fixed evaluation sample; "
                               "evaluate on val or test")
            ds.rank, ds.world_size = rank, world
            return PrefetchedStreamLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers,
                                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)
        if max_samples is not None and max_samples < len(ds):  # a seeded, fixed subset
            keep = np.random.default_rng(self.seed).choice(len(ds), size=max_samples, replace=False)
            ds = Subset(ds, np.sort(keep).tolist())
        # StatefulDataLoader remembers its position in the epoch; Lightning stores it in every
        # checkpoint, so a resumed run continues mid-epoch with the very next batch.
        if shuffle:
            return StatefulDataLoader(
                ds, batch_sampler=GlobalBatchSampler(len(ds), self.batch_size, self.seed, rank, world),
                num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
            )
        return StatefulDataLoader(
            ds, batch_size=self.eval_batch_size, sampler=EvalShardSampler(len(ds), rank, world),
            num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def eval_dataloader(self, split: str, max_samples: int | None = None) -> DataLoader:
        """An unshuffled loader over any split, optionally a fixed subset of ``max_samples``."""
        return self._loader(split, shuffle=False, max_samples=max_samples)

    # ---------------------------------------------------------------- raw text
    def split_text(self, split: str, max_bytes: int | None = None) -> bytes:
        """The split's documents as UTF-8, joined by newlines (for classical compressors)."""
        out, n = [], 0
        for source in self.eval_sources:
            for doc in source.documents(split):
                b = doc.encode("utf-8")
                out.append(b)
                n += len(b) + 1
                if max_bytes is not None and n >= max_bytes:
                    return b"\n".join(out)[:max_bytes]
        return b"\n".join(out)

    def scored_text(self, loader: Any, max_batches: int | None = None) -> bytes:
        """The bytes the batches of ``loader`` score (:func:`scored_bytes`), for classical
        compressors on the same text.

        Needed for left-padded layouts, which score only the first ``n_ctx`` tokens of each
        document; a packed layout scores (nearly) the whole split: :meth:`split_text`.
        """
        return scored_bytes(loader, self.tokenizer, max_batches)

    def split_bytes(self, split: str) -> int:
        """UTF-8 bytes of a split's documents (as tokenised)."""
        return sum(cache.load_split(self.split_path(s, split)).n_bytes for s in self.eval_sources)

    def describe(self) -> str:
        """A one-line summary per split: documents, tokens, bytes, bytes per token."""
        lines = []
        for split in SPLITS:
            if split == "train" and self.streaming:
                lines.append(f"train: streamed from {', '.join(s.name for s in self.sources)} after the first "
                             f"{self.heldout_documents:,} documents of each (tokenised on the fly)")
                continue
            docs = toks = nbytes = 0
            for s in self.eval_sources:
                d = cache.load_split(self.split_path(s, split))
                docs, toks, nbytes = docs + len(d), toks + d.n_tokens, nbytes + d.n_bytes
            lines.append(
                f"{split:5s}: {docs:>9,d} docs {toks:>12,d} tokens {nbytes:>13,d} bytes "
                f"({nbytes / max(toks, 1):.2f} bytes/token)"
            )
        return "\n".join(lines)
