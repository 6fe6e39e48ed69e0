"""The :class:`Source` interface: a corpus of documents and the split each one belongs to.

Every source splits the same way, by a hash of the document text (:func:`split_of`), so
every run on every machine sees the same train / val / test split and exact duplicates can
never straddle two splits. A source also cuts its input into :class:`Unit` s (a file, a byte
range of a file, a range of parquet row groups, a hub shard): pieces that can be read on
their own, in order, so preparation (:mod:`zoo.data.prepare`) can read each once, in
parallel, and resume at the last finished one.
"""

from __future__ import annotations

import abc
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from zoo.data.sources.options import check_fraction, check_string
from zoo.errors import ZooError, unknown
from zoo.schema import SPLITS

#: Options every source accepts, with their defaults.
COMMON_OPTIONS: dict[str, Any] = {"val_fraction": 0.05, "test_fraction": 0.05, "split_salt": "zoo"}

#: Target size of one unit of input (bytes of text), so token shards stay bounded.
UNIT_BYTES = 64 * 2**20

CORPUS_HINT = "pip install 'zoo[corpus]'"


@dataclass(frozen=True)
class Unit:
    """A piece of a source's input that can be read on its own.

    ``index`` orders the units: the source's documents are the documents of unit 0, then of
    unit 1, and so on. ``locator`` is what the source needs to read it back (JSON-able),
    ``size`` an estimate of its bytes of text (0 when unknown; for progress and ETAs).
    """

    index: int
    description: str
    size: int = 0
    locator: tuple = field(default=())


def split_of(text: str, val_fraction: float, test_fraction: float, salt: str = "zoo") -> str:
    """Return the split of a document, decided by a hash of its text.

    blake2b of ``salt + text`` is mapped to a number ``u`` uniform in [0, 1);
    ``u < test_fraction`` gives ``'test'``, ``u < test_fraction + val_fraction`` gives ``'val'``,
    anything else ``'train'``. It depends on nothing but its arguments, so it is the same on
    every machine and in every run; changing ``salt`` draws a fresh, independent split.
    """
    digest = hashlib.blake2b((salt + text).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


_HSPACE_RUN = re.compile(r"[^\S\n]{2,}|\t")  # 2+ horizontal spaces in a row, or a tab
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str, *, collapse_spaces: bool = False) -> str:
    """Normalise a document's whitespace and return it (empty if nothing is left).

    Always: unify line endings, drop trailing whitespace on lines, squeeze three or more
    newlines into one blank line (paragraph breaks survive), strip the ends. With
    ``collapse_spaces`` (prose), runs of spaces/tabs become one space and lines lose leading
    whitespace; without it (math, code, arbitrary files) indentation is kept.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if collapse_spaces:
        text = _HSPACE_RUN.sub(" ", text)
        text = "\n".join(line.strip() for line in text.split("\n"))
    else:
        text = "\n".join(line.rstrip() for line in text.split("\n"))
    if "\n\n\n" in text:  # the guard is much faster than letting the regex scan
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def _unique(texts: Iterable[str], min_chars: int) -> tuple[str, ...]:
    """Keep the first copy of each text that has at least ``min_chars`` characters, in order."""
    seen: set[str] = set()
    kept = []
    for text in texts:
        if len(text) >= min_chars and text not in seen:
            seen.add(text)
            kept.append(text)
    return tuple(kept)


# --------------------------------------------------------------------------------------------
# the Source interface


class Source(abc.ABC):
    """A corpus of documents split deterministically into train / val / test.

    Subclasses list their own options (with defaults) in :attr:`OPTIONS` and yield every cleaned
    document in a fixed order from :meth:`_all_documents`; this class does the splitting and
    sharding. Subclasses that hold their whole corpus in memory set :attr:`IN_MEMORY` so the
    split lists are computed once.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {}
    IN_MEMORY: ClassVar[bool] = False
    #: splits that may be empty (a held-out slice has no training documents)
    EMPTY_OK: ClassVar[frozenset[str]] = frozenset()

    name: str

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = dict(options)
        self.val_fraction = check_fraction(name, options, "val_fraction")
        self.test_fraction = check_fraction(name, options, "test_fraction")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ZooError(
                f"source '{name}': val_fraction + test_fraction must be below 1 "
                f"(got {self.val_fraction} + {self.test_fraction}); nothing would be left to train on"
            )
        self.split_salt = check_string(name, options, "split_salt")
        # 0 and 0.0 must give the same fingerprint
        self.options.update(val_fraction=self.val_fraction, test_fraction=self.test_fraction)
        self._split_cache: dict[str, list[str]] | None = None

    # -- for subclasses

    @abc.abstractmethod
    def _all_documents(self) -> Iterator[str]:
        """Every cleaned document of the corpus, before splitting, in a deterministic order."""

    @abc.abstractmethod
    def _content_key(self) -> dict[str, Any]:
        """What identifies the content beyond the options (package version, file stats, ...)."""

    # -- public

    def fingerprint(self) -> str:
        """A stable string that changes whenever the content or an option changes.

        It is canonical JSON (sorted keys) of the source name, every option and the content key
        (package version, or each file's path, size and mtime); hash it for a file name.
        """
        key = {"source": self.name, "options": self.options, "content": self._content_key()}
        return json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))

    def documents(self, split: str, shard: tuple[int, int] | None = None) -> Iterator[str]:
        """Yield the cleaned documents of ``split`` in a deterministic order.

        ``shard=(index, count)`` keeps every ``count``-th document of the split starting at
        ``index``, so the ``count`` shards are disjoint and together make up the split (one per
        dataloader worker or rank). A bad split name or shard raises :class:`ZooError` at once.
        """
        if split not in SPLITS:
            raise unknown("split", str(split), SPLITS)
        index, count = _check_shard(shard)
        if self.IN_MEMORY:
            return iter(self._splits()[split][index::count])
        return self._stream_split(split, index, count)

    def stream(self) -> Iterator[str]:
        """Every cleaned document in order, before splitting (what streaming mode reads)."""
        return self._all_documents()

    def units(self) -> list[Unit]:
        """The pieces of input, in order (one unit, the whole corpus, unless a kind cuts it)."""
        return [Unit(0, self.name)]

    def unit_documents(self, unit: Unit) -> Iterator[str]:
        """The cleaned documents of one unit, in order, before splitting."""
        return self._all_documents()

    def split_documents(self, unit: Unit) -> Iterator[tuple[str, str]]:
        """``(split, document)`` for every document of ``unit``: one read serves every split."""
        for doc in self.unit_documents(unit):
            yield self._split(doc), doc

    def text_bytes(self, split: str) -> int:
        """Total UTF-8 size of the split's documents in bytes (reads the whole split)."""
        return sum(len(doc.encode("utf-8", "surrogatepass")) for doc in self.documents(split))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, options={self.options!r})"

    # -- internals

    def _split(self, text: str) -> str:
        return split_of(text, self.val_fraction, self.test_fraction, self.split_salt)

    def _stream_split(self, split: str, index: int, count: int) -> Iterator[str]:
        position = 0
        for doc in self._all_documents():
            if self._split(doc) == split:
                if position % count == index:
                    yield doc
                position += 1

    def _splits(self) -> dict[str, list[str]]:
        if self._split_cache is None:
            splits: dict[str, list[str]] = {split: [] for split in SPLITS}
            for doc in self._all_documents():
                splits[self._split(doc)].append(doc)
            self._split_cache = splits
        return self._split_cache


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """Validate ``shard`` and return ``(index, count)``; ``None`` means the whole split."""
    if shard is None:
        return 0, 1
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise ZooError(f"shard must be a pair (index, count), got {shard!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
        raise ZooError(f"shard must be a pair of integers (index, count), got {shard!r}")
    if count < 1 or not 0 <= index < count:
        raise ZooError(
            f"shard (index, count) needs count >= 1 and 0 <= index < count, got {shard!r}"
        )
    return index, count
