"""Local ``.txt``, ``.jsonl`` and ``.parquet`` files as a source (``name: files``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zoo.data.sources.base import UNIT_BYTES, Source, Unit, clean_text
from zoo.data.sources.options import check_count, check_string, check_string_list
from zoo.data.sources.readers import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    file_stats,
    jsonl_ranges,
    parquet_units,
    read_jsonl,
    read_parquet,
    read_txt,
    resolve_paths,
    suffix_of,
)
from zoo.data.sources.registry import register_source
from zoo.errors import ZooError, unknown

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")


@register_source("files")
class FilesSource(Source):
    """Local ``.txt``, ``.jsonl`` and ``.parquet`` files, named by path, glob or directory.

    ``.txt``: one document per file (``txt_split='file'``) or per blank-line-separated paragraph
    (``txt_split='paragraph'``). ``.jsonl``: one JSON object per line, text in ``text_column``.
    ``.parquet``: the string column ``text_column``, streamed by record batch. Files are read
    in sorted order; line endings are normalised and ends stripped, nothing else.

    Units: a ``.txt`` file; about 64 MB of a ``.jsonl`` file (a byte range, cut at lines);
    runs of parquet row groups of about 64 MB of text.

    ``max_document_bytes`` (default 8 MiB) bounds one document (a ``txt_split=file`` file, a
    paragraph, a JSON line, a parquet value): a longer one is refused in one line after at
    most that many bytes are read, instead of tokenising it for minutes in gigabytes of memory.
    """

    OPTIONS = {"paths": None, "txt_split": "file", "text_column": "text", "min_chars": 1, "unit_bytes": UNIT_BYTES,
               "max_document_bytes": DEFAULT_MAX_DOCUMENT_BYTES}
    TXT_SPLITS = ("file", "paragraph")

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        if options["paths"] is None or options["paths"] == "???":
            raise ZooError(
                f"source '{name}' needs paths=: a file, directory or glob, or a list of them "
                f"({', '.join(FILE_SUFFIXES)}), e.g. data.sources.0.paths='corpus/*.jsonl'"
            )
        self.files = resolve_paths(
            name, "paths", check_string_list(name, options, "paths"), FILE_SUFFIXES
        )
        self.txt_split = options["txt_split"]
        if self.txt_split not in self.TXT_SPLITS:
            raise unknown(f"txt_split for source '{name}'", str(self.txt_split), self.TXT_SPLITS)
        self.text_column = check_string(name, options, "text_column")
        self.min_chars = check_count(name, options, "min_chars", minimum=1)
        self.unit_bytes = check_count(name, options, "unit_bytes", minimum=1)
        self.max_document_bytes = check_count(name, options, "max_document_bytes", minimum=1)
        # a bound, not a change of content (a longer document is an error, never cut): it is
        # left out of the fingerprint, so caches built before the option existed stay valid
        self.options.pop("max_document_bytes")

    def units(self) -> list[Unit]:
        units: list[Unit] = []
        for path in self.files:
            kind = suffix_of(path, FILE_SUFFIXES)
            if kind == ".txt":
                pieces = [(path.name, path.stat().st_size, ("txt", str(path)))]
            elif kind == ".jsonl":
                pieces = [(f"{path.name} bytes {a}-{b}", b - a, ("jsonl", str(path), a, b))
                          for a, b in jsonl_ranges(path, self.unit_bytes)]
            else:
                pieces = [(f"{path.name} row groups {a}-{b - 1}", size, ("parquet", str(path), a, b))
                          for a, b, size, _ in parquet_units(path, self.text_column, self.unit_bytes)]
            units += [Unit(len(units) + k, d, s, loc) for k, (d, s, loc) in enumerate(pieces)]
        return units

    def _raw(self, locator: tuple) -> Iterator[str]:
        kind, path = locator[0], Path(locator[1])
        if kind == "txt":
            return read_txt(path, self.txt_split, self.max_document_bytes)
        if kind == "jsonl":
            return read_jsonl(path, self.text_column, locator[2], locator[3], self.max_document_bytes)
        return read_parquet(path, self.text_column, row_groups=(locator[2], locator[3]), limit=self.max_document_bytes)

    def unit_documents(self, unit: Unit) -> Iterator[str]:
        for text in self._raw(unit.locator):
            text = clean_text(text)
            if len(text) >= self.min_chars:
                yield text

    def _all_documents(self) -> Iterator[str]:
        found = 0
        for unit in self.units():
            for text in self.unit_documents(unit):
                found += 1
                yield text
        if not found:
            raise self.empty_error()

    def empty_error(self) -> ZooError:
        """The error for a corpus with no document long enough."""
        shown = ", ".join(str(p) for p in self.files[:5]) + (" ..." if len(self.files) > 5 else "")
        return ZooError(
            f"source '{self.name}': empty corpus: no document with at least "
            f"{self.min_chars} character(s) in {shown}"
        )

    def _content_key(self) -> dict[str, Any]:
        return {"files": file_stats(self.files)}
