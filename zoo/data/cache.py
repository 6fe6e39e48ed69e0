"""The token cache on disk: sharded, checksummed, memory-mapped token arrays.

One folder per (source, tokenizer)::

    tokens/<source>-<key>/
        plan.json                   the source's units (what each shard is made of)
        shards/000042.done.json     unit 42 is finished: per split documents, tokens, bytes, hash
        shards/000042.train.bin     its training documents' tokens, each document + end-of-text
        shards/000042.train.idx     where its documents start (int64 offsets, n_documents + 1)
        train/meta.json             the split: its shards in order, totals (written at the end)
        val/  test/                 the same for the other splits
        complete.json               every split is finished

A shard is bounded by its unit (about 64 MB of text). Its data files are written under
temporary names and renamed, and ``done.json`` comes last, so a killed preparation leaves
only whole shards; it resumes at the first unit without one. Nothing in the folder holds a
time or a host name, so a resumed or multi-node build is byte-identical to one uninterrupted
build. The cache key hashes the source's fingerprint and the tokenizer: a change to either
builds a new folder.

:func:`load_split` checks at open, cheaply, every shard's size and the blake2b hash of its
first and last :data:`EDGE_BYTES` (recorded at build; caches built before that are checked by
size only) and, given the tokenizer's size, that the ids there (and the largest id recorded)
are in the vocabulary; ``verify=True`` hashes and scans every shard whole. A sample with an
out-of-vocabulary id is refused when it is read (:meth:`TokenizedSplit.check_ids`). A damaged
cache is refused with a message that says what to delete. A split whose ``meta.json`` is gone
is indexed again from its finished shards (:func:`is_complete`), and temporaries left by a
killed build are removed when a cache is built or opened (:func:`clean_stale_temporaries`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerFast

from zoo.data.sources import SPLITS, Source, Unit
from zoo.data.tokenizer import EOT, tokenizer_fingerprint
from zoo.errors import NO_SPACE, ZooError, space_note

CACHE_VERSION = 2
#: bytes at each end of a shard whose hash is checked at every open (cheap: 128 KiB a shard)
EDGE_BYTES = 64 << 10
#: a temporary of a process that is gone here is removed once idle this long (a temporary of
#: another node, whose process this host cannot see, is still being written to)
STALE_DEAD_SECONDS = 10 * 60
#: any temporary idle this long is left over, whoever made it (a live build writes continuously)
STALE_ANY_SECONDS = 6 * 3600
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


def default_cache_dir() -> Path:
    """``$ZOO_CACHE`` if set, else ``~/.cache/zoo``."""
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo")).expanduser()


def token_dtype(tokenizer: PreTrainedTokenizerFast) -> np.dtype:
    """uint16 while the vocabulary fits, else uint32."""
    return np.dtype(np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.uint32)


def source_dir(source: Source, tokenizer: PreTrainedTokenizerFast, cache_dir: Path) -> Path:
    """The folder that holds (or will hold) ``source`` tokenised with ``tokenizer``."""
    blob = json.dumps([CACHE_VERSION, source.fingerprint(), tokenizer_fingerprint(tokenizer)])
    key = hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", source.name)
    return Path(cache_dir) / "tokens" / f"{safe}-{key}"


def split_dir(source: Source, split: str, tokenizer: PreTrainedTokenizerFast, cache_dir: Path) -> Path:
    """The folder of one split (what :func:`load_split` opens)."""
    return source_dir(source, tokenizer, cache_dir) / split


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished cache: ``complete.json`` and every split's ``meta.json``
    (a deleted ``meta.json`` makes the next build index the finished shards again)."""
    folder = Path(folder)
    return (folder / "complete.json").is_file() and all((folder / s / "meta.json").is_file() for s in SPLITS)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def clean_stale_temporaries(folder: Path, now: float | None = None, dead_after: float | None = None) -> list[Path]:
    """Remove the ``.NAME.tmp-PID`` files a killed build left in a cache folder; return them.

    Stale: its process is gone on this host and it has not been written to for
    :data:`STALE_DEAD_SECONDS`, or nobody has written to it for :data:`STALE_ANY_SECONDS`.
    Only names this module writes are considered; nothing else in the folder is touched.
    ``dead_after`` replaces :data:`STALE_DEAD_SECONDS` (0: a dead process's file goes at once).
    """
    folder = Path(folder)
    now = time.time() if now is None else now
    removed = []
    for sub in (folder, folder / "shards", *(folder / s for s in SPLITS)):
        try:
            entries = list(os.scandir(sub))
        except OSError:
            continue
        for entry in entries:
            match = _TEMPORARY.match(entry.name)
            if not match or not entry.is_file(follow_symlinks=False):
                continue
            try:
                idle = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue  # renamed into place meanwhile
            dead_wait = STALE_DEAD_SECONDS if dead_after is None else dead_after
            if idle > STALE_ANY_SECONDS or (idle >= dead_wait and _process_gone(int(match.group(1)))):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename), with sorted keys."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ plan


def unit_record(unit: Unit) -> dict[str, Any]:
    return {"index": unit.index, "description": unit.description, "size": unit.size,
            "locator": list(unit.locator)}


def write_plan(folder: Path, source: Source, units: Sequence[Unit], dtype: np.dtype) -> dict[str, Any]:
    """Record the units of a build (or check that a resumed build has the same ones)."""
    plan = {"version": CACHE_VERSION, "source": source.name, "fingerprint": source.fingerprint(),
            "dtype": dtype.name, "units": [unit_record(u) for u in units]}
    path = folder / "plan.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(plan)):
            raise ZooError(f"{folder} was started with other units than this source has now (its files "
                           "changed?); delete the folder to rebuild it")
        return old
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    write_json(path, plan)
    return plan


# ------------------------------------------------------------------------------------ one shard


def shard_stem(folder: Path, index: int) -> Path:
    return folder / "shards" / f"{index:06d}"


def shard_done(folder: Path, index: int) -> bool:
    return shard_stem(folder, index).with_suffix(".done.json").is_file()


class _SplitWriter:
    """Tokens and offsets of one split of one shard, hashed as they are written."""

    def __init__(self, stem: Path, split: str, dtype: np.dtype) -> None:
        self.final = stem.with_suffix(f".{split}.bin")
        self.tmp = self.final.with_name(f".{self.final.name}.tmp-{os.getpid()}")
        self.file = open(self.tmp, "wb")
        self.dtype = dtype
        self.offsets = [0]
        self.n_bytes = 0
        self.max_id = -1
        self.hash = hashlib.blake2b(digest_size=16)

    def add(self, ids: Sequence[int], eot: int, n_bytes: int) -> None:
        tokens = np.asarray([*ids, eot], dtype=self.dtype)
        self.max_id = max(self.max_id, int(tokens.max()))
        arr = tokens.tobytes()
        self.file.write(arr)
        self.hash.update(arr)
        self.offsets.append(self.offsets[-1] + len(ids) + 1)
        self.n_bytes += n_bytes

    def close(self) -> dict[str, Any]:
        self.file.close()
        n_docs = len(self.offsets) - 1
        edges: dict[str, str | None] = {"head_blake2b": None, "tail_blake2b": None}
        if n_docs == 0:
            self.tmp.unlink()
        else:
            try:
                edges = {f"{where}_blake2b": _hash(data) for where, data in read_edges(self.tmp)}
            except FileNotFoundError:  # another process wrote this unit (the same bytes) and tidied up
                if not self.final.is_file():
                    raise
                edges = {f"{where}_blake2b": _hash(data) for where, data in read_edges(self.final)}
            idx = self.final.with_suffix(".idx")
            idx_tmp = idx.with_name(f".{idx.name}.tmp-{os.getpid()}")
            np.asarray(self.offsets, dtype=np.int64).tofile(idx_tmp)
            try:
                os.replace(idx_tmp, idx)
                os.replace(self.tmp, self.final)
            except FileNotFoundError:  # another process finished this unit and tidied up first
                if not self.final.is_file():
                    raise
        return {"documents": n_docs, "tokens": self.offsets[-1], "bytes": self.n_bytes,
                "blake2b": self.hash.hexdigest() if n_docs else None, **edges,
                "max_id": self.max_id if n_docs else None}

    def abort(self) -> None:
        try:
            self.file.close()
        except OSError:  # its buffer cannot be written (a full disk): the file goes anyway
            pass
        self.tmp.unlink(missing_ok=True)


def write_shard(source: Source, unit: Unit, tokenizer: PreTrainedTokenizerFast, folder: Path,
                batch_docs: int = 256) -> dict[str, Any]:
    """Read ``unit`` once, tokenise each document into its split's file, and mark it done.

    Returns the shard record (also written to ``<stem>.done.json``): per split the number
    of documents, tokens, UTF-8 bytes and the blake2b hash of the token file.
    """
    stem = shard_stem(folder, unit.index)
    dtype = token_dtype(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    writers = {split: _SplitWriter(stem, split, dtype) for split in SPLITS}
    pending: dict[str, list[str]] = {split: [] for split in SPLITS}

    def flush(split: str) -> None:
        texts = pending[split]
        for text, enc in zip(texts, encode(texts, add_special_tokens=False), strict=True):
            writers[split].add(enc.ids, eot, len(text.encode("utf-8", "surrogatepass")))
        texts.clear()

    try:
        for split, doc in source.split_documents(unit):
            pending[split].append(doc)
            if len(pending[split]) >= batch_docs:
                flush(split)
        for split in SPLITS:
            flush(split)
        record = {"unit": unit.index, "splits": {split: w.close() for split, w in writers.items()}}
        write_json(stem.with_suffix(".done.json"), record)
    except BaseException as e:
        for w in writers.values():
            w.abort()
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            raise ZooError(
                f"cannot write the token cache {folder}: {os.strerror(e.errno).lower()}; {space_note(folder)}. "
                "Free some space, or put the cache elsewhere (data.cache_dir=... or $ZOO_CACHE); "
                "finished shards are kept, so the same command continues"
            ) from None
        raise
    return record


# ------------------------------------------------------------------------------------ finishing


def finalize(folder: Path, plan: dict[str, Any], empty_error: ZooError | None = None,
             empty_ok: frozenset[str] = frozenset()) -> None:
    """Write each split's ``meta.json`` (its shards in unit order) and ``complete.json``."""
    records = [json.loads(shard_stem(folder, u["index"]).with_suffix(".done.json").read_text())
               for u in plan["units"]]
    totals = {}
    for split in SPLITS:
        shards = [{"unit": r["unit"], **r["splits"][split]} for r in records if r["splits"][split]["documents"]]
        n_docs = sum(s["documents"] for s in shards)
        if n_docs == 0 and split not in empty_ok:
            raise empty_error or ZooError(
                f"source '{plan['source']}' has no documents in its {split} split; "
                "give it more documents or change val_fraction/test_fraction"
            )
        meta = {"version": CACHE_VERSION, "source": plan["source"], "fingerprint": plan["fingerprint"],
                "split": split, "dtype": plan["dtype"], "n_documents": n_docs,
                "n_tokens": sum(s["tokens"] for s in shards), "n_bytes": sum(s["bytes"] for s in shards),
                "shards": shards}
        (folder / split).mkdir(exist_ok=True)
        write_json(folder / split / "meta.json", meta)
        totals[split] = {k: meta[k] for k in ("n_documents", "n_tokens", "n_bytes")}
    # every shard is done: what a dead process of this host left is garbage at once
    clean_stale_temporaries(folder, dead_after=0.0)
    write_json(folder / "complete.json", {"version": CACHE_VERSION, "splits": totals})


# ------------------------------------------------------------------------------------ reading


class ShardedTokens:
    """Read-only, array-like view of several memory-mapped token files as one stream."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.dtype = self.parts[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: slice | int) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("ShardedTokens supports contiguous slices only")
            return self._range(start, max(start, stop))
        i = int(key) + (len(self) if key < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(key)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k][i - self.starts[k]]

    def _range(self, start: int, stop: int) -> np.ndarray:
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < stop and k < len(self.parts):
            lo = start - self.starts[k]
            hi = min(stop, self.starts[k + 1]) - self.starts[k]
            pieces.append(self.parts[k][lo:hi])
            start = int(self.starts[k] + hi)
            k += 1
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate(self.parts)
        return out if dtype is None else out.astype(dtype)


@dataclass
class TokenizedSplit:
    """One split of one source: documents as slices of a (sharded) memory-mapped token stream.

    ``tokens[offsets[i]:offsets[i + 1]]`` is document ``i`` followed by its end-of-text token.
    ``path`` is the split's folder (what estimates and other derived files are keyed on).
    """

    name: str
    tokens: np.ndarray | ShardedTokens
    offsets: np.ndarray
    n_bytes: int
    path: Path
    vocab_size: int | None = None  # the tokenizer's size, when known: ids are checked against it

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def document(self, i: int) -> np.ndarray:
        """Tokens of document ``i`` without its trailing end-of-text token."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1] - 1]

    def check_ids(self, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` (a sample read from this split), if every id is in the vocabulary; else a
        one-line :class:`ZooError` that names the cache (not an IndexError in an embedding)."""
        if self.vocab_size is not None and len(tokens) and int(tokens.max()) >= self.vocab_size:
            raise _out_of_vocabulary(self.path, "a sample", int(tokens.max()), self.vocab_size)
        return tokens


def _damaged(path: Path, why: str) -> ZooError:
    return ZooError(f"token cache {path} is damaged ({why}); delete {path.parent} to rebuild it")


def _out_of_vocabulary(path: Path, where: str, token: int, vocab_size: int) -> ZooError:
    return _damaged(path, f"{where} holds token id {token}, outside the tokenizer's {vocab_size} tokens; "
                          "the cache was written by another tokenizer or is corrupt")


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_edges(path: Path) -> list[tuple[str, bytes]]:
    """``[("head", first EDGE_BYTES), ("tail", last EDGE_BYTES)]`` of a file (they overlap
    in a small one)."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(EDGE_BYTES)
        f.seek(max(0, size - EDGE_BYTES))
        tail = f.read(EDGE_BYTES)
    return [("head", head), ("tail", tail)]


def scan_file(path: Path, dtype: np.dtype, chunk: int = 1 << 22) -> tuple[str, int]:
    """The blake2b of a token file and its largest token id (-1 if empty), in one read."""
    h = hashlib.blake2b(digest_size=16)
    top = -1
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            ids = np.frombuffer(block[: len(block) - len(block) % dtype.itemsize], dtype=dtype)
            top = max(top, int(ids.max())) if len(ids) else top
    return h.hexdigest(), top


def _check_shard(path: Path, bin_file: Path, shard: dict[str, Any], dtype: np.dtype, verify: bool,
                 vocab_size: int | None) -> None:
    """The checks of one shard's token file at open (see the module docstring)."""
    if vocab_size is not None and shard.get("max_id") is not None and shard["max_id"] >= vocab_size:
        raise _out_of_vocabulary(path, bin_file.name, int(shard["max_id"]), vocab_size)
    for where, data in read_edges(bin_file):
        ids = np.frombuffer(data[: len(data) - len(data) % dtype.itemsize], dtype=dtype)
        if vocab_size is not None and len(ids) and int(ids.max()) >= vocab_size:
            raise _out_of_vocabulary(path, f"{bin_file.name} ({where})", int(ids.max()), vocab_size)
        want = shard.get(f"{where}_blake2b")
        if want is not None and _hash(data) != want:
            raise _damaged(path, f"{bin_file.name} does not match its checksum ({where})")
    if verify:
        digest, top = scan_file(bin_file, dtype)
        if vocab_size is not None and top >= vocab_size:
            raise _out_of_vocabulary(path, bin_file.name, top, vocab_size)
        if digest != shard["blake2b"]:
            raise _damaged(path, f"{bin_file.name} does not match its checksum")


def load_split(path: Path, verify: bool = False, vocab_size: int | None = None) -> TokenizedSplit:
    """Open a cached split (its folder) memory-mapped, read-only.

    Every shard's size and the hashes of its head and tail are checked against ``meta.json``;
    ``verify=True`` also checks each shard's whole blake2b hash (reads everything once). With
    ``vocab_size`` (the tokenizer's size) the token ids read are checked to be below it, and
    so are the samples later read from the split (:meth:`TokenizedSplit.check_ids`).
    """
    path = Path(path)
    clean_stale_temporaries(path.parent)
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not meta["shards"]:
            raise ZooError(f"token cache {path} holds no documents")
        dtype = np.dtype(meta["dtype"])
        parts, offsets, base = [], [np.zeros(1, np.int64)], 0
        for shard in meta["shards"]:
            stem = path.parent / "shards" / f"{shard['unit']:06d}.{meta['split']}"
            bin_file, idx_file = stem.with_suffix(stem.suffix + ".bin"), stem.with_suffix(stem.suffix + ".idx")
            if bin_file.stat().st_size != shard["tokens"] * dtype.itemsize:
                raise _damaged(path, f"{bin_file.name} has {bin_file.stat().st_size} bytes, "
                                     f"not {shard['tokens'] * dtype.itemsize}")
            _check_shard(path, bin_file, shard, dtype, verify, vocab_size)
            idx = np.fromfile(idx_file, dtype=np.int64)
            if len(idx) != shard["documents"] + 1 or idx[-1] != shard["tokens"]:
                raise _damaged(path, f"{idx_file.name} does not fit its token file")
            parts.append(np.memmap(bin_file, dtype=dtype, mode="r"))
            offsets.append(idx[1:] + base)
            base += shard["tokens"]
    except ZooError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ZooError(f"token cache {path} is unreadable ({type(e).__name__}: {e}); "
                       f"delete {path.parent} to rebuild it") from None
    tokens = parts[0] if len(parts) == 1 else ShardedTokens(parts)
    return TokenizedSplit(f"{meta['source']}/{meta['split']}", tokens, np.concatenate(offsets),
                          int(meta["n_bytes"]), path, vocab_size)


def iter_shard_files(folder: Path) -> Iterable[Path]:
    """Every file of a cache folder, sorted (to compare two builds byte for byte)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())
