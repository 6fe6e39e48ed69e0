"""Tokenised splits cached on disk as memory-mapped token arrays.

A split is tokenised once and stored as one flat token file in which every document is
followed by the end-of-text token, plus the offsets where documents start. The cache key is
a hash of the source's fingerprint, the split and the tokenizer, so a second run (or another
model family on the same data) starts in seconds, and a change to any of them rebuilds.
Files are written to a temporary folder and renamed into place, so a killed build leaves no
half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from zoo.data.sources import Source
from zoo.data.tokenizer import EOT, tokenizer_fingerprint
from zoo.errors import ZooError

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$ZOO_CACHE`` if set, else ``~/.cache/zoo``."""
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo")).expanduser()


@dataclass
class TokenizedSplit:
    """One split of one source: documents as slices of a memory-mapped token array.

    ``tokens[offsets[i]:offsets[i + 1]]`` is document ``i`` followed by its end-of-text token.
    """

    name: str
    tokens: np.ndarray
    offsets: np.ndarray
    n_bytes: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def document(self, i: int) -> np.ndarray:
        """Tokens of document ``i`` without its trailing end-of-text token."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1] - 1]


def _key(source: Source, split: str, tokenizer: PreTrainedTokenizerFast) -> str:
    blob = json.dumps([CACHE_VERSION, source.fingerprint(), split, tokenizer_fingerprint(tokenizer)])
    return hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()


def split_path(source: Source, split: str, tokenizer: PreTrainedTokenizerFast, cache_dir: Path) -> Path:
    """Folder that holds (or will hold) the cached split."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in source.name)
    return Path(cache_dir) / "tokens" / f"{safe}-{split}-{_key(source, split, tokenizer)}"


def build_split(
    source: Source,
    split: str,
    tokenizer: PreTrainedTokenizerFast,
    cache_dir: Path,
    batch_docs: int = 512,
) -> Path:
    """Tokenise ``source``'s split into the cache unless it is there already; return the folder."""
    final = split_path(source, split, tokenizer, cache_dir)
    if (final / "meta.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.uint32
    eot = tokenizer.convert_tokens_to_ids(EOT)
    offsets = [0]
    n_bytes = 0
    try:
        with open(tmp / "tokens.bin", "wb") as f:
            batch: list[str] = []

            def flush() -> None:
                nonlocal n_bytes
                for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                    arr = np.asarray([*ids, eot], dtype=dtype)
                    f.write(arr.tobytes())
                    offsets.append(offsets[-1] + len(arr))
                n_bytes += sum(len(t.encode("utf-8")) for t in batch)
                batch.clear()

            desc = f"tokenising {source.name}/{split}"
            for doc in tqdm(source.documents(split), desc=desc, unit=" docs", mininterval=1.0):
                batch.append(doc)
                if len(batch) >= batch_docs:
                    flush()
            if batch:
                flush()
        if len(offsets) == 1:
            raise ZooError(
                f"source '{source.name}' has no documents in its {split} split; "
                "give it more documents or change val_fraction/test_fraction"
            )
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        meta = {
            "version": CACHE_VERSION,
            "source": source.name,
            "fingerprint": source.fingerprint(),
            "split": split,
            "dtype": np.dtype(dtype).name,
            "n_documents": len(offsets) - 1,
            "n_tokens": offsets[-1],
            "n_bytes": n_bytes,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same split first: keep theirs
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_split(path: Path) -> TokenizedSplit:
    """Open a cached split memory-mapped (read-only)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        tokens = np.memmap(path / "tokens.bin", dtype=meta["dtype"], mode="r")
        offsets = np.load(path / "offsets.npy")
    except (OSError, ValueError, KeyError) as e:
        raise ZooError(f"token cache {path} is unreadable ({e}); delete the folder to rebuild it") from e
    if offsets[-1] != len(tokens):
        raise ZooError(f"token cache {path} is truncated; delete the folder to rebuild it")
    return TokenizedSplit(f"{meta['source']}/{meta['split']}", tokens, offsets, int(meta["n_bytes"]))
