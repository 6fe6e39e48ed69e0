"""Readers for local text files: ``.txt``, ``.jsonl`` and ``.parquet``.

Paths are resolved from files, directories and globs; each reader streams (a jsonl byte
range, parquet row groups in record batches), so no file is ever held in memory whole, and
every error names the file and where in it. A document longer than ``max_document_bytes``
(default :data:`DEFAULT_MAX_DOCUMENT_BYTES`) is refused as soon as that many bytes of it are
read, so one huge line never lands in memory whole (nor in the tokenizer, whose memory grows
far faster than the text).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zoo.errors import ZooError, did_you_mean

#: the longest document the file readers accept (UTF-8 bytes); option ``max_document_bytes``
DEFAULT_MAX_DOCUMENT_BYTES = 8 << 20
#: lines are read in pieces of at most this many bytes when skipping to a range's start
_CHUNK = 1 << 20


def too_long(path: Path, where: str, limit: int) -> ZooError:
    """The one-line error for a document over ``limit`` bytes, naming the option."""
    return ZooError(
        f"{path}{where}: longer than max_document_bytes={limit} ({limit / 2**20:.3g} MiB); split the text into "
        "smaller documents (txt_split=paragraph, one JSON line per document) or raise the source's "
        "max_document_bytes"
    )


def resolve_paths(
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
                found = sorted(p for p in path.rglob("*") if p.is_file() and suffix_of(p, suffixes))
                if not found:
                    raise ZooError(
                        f"source '{source}': {key}: directory '{match}' holds no {allowed} file"
                    )
                files.extend(found)
            elif suffix_of(path, suffixes):
                files.append(path)
            else:
                raise ZooError(
                    f"source '{source}': {key}: unsupported file type '{match}'; allowed: {allowed}"
                )
    return list(dict.fromkeys(files))


def suffix_of(path: Path, suffixes: tuple[str, ...]) -> str | None:
    name = path.name.lower()
    return next((s for s in suffixes if name.endswith(s)), None)


def file_stats(files: list[Path]) -> list[list[Any]]:
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


def _skip_line(f: Any) -> int:
    """Read past the rest of the current line in bounded pieces; return the bytes skipped."""
    skipped = 0
    while piece := f.readline(_CHUNK):
        skipped += len(piece)
        if piece.endswith(b"\n"):
            break
    return skipped


def _lines(path: Path, start: int = 0, end: int | None = None,
           limit: int | None = None) -> Iterator[tuple[int | None, int, bytes]]:
    """Yield ``(line_number, byte_offset, raw_line)`` for the lines that start in
    ``[start, end)``, streaming. Line numbers are known only when reading from the start
    (``None`` otherwise). A line longer than ``limit`` bytes is a :class:`ZooError` raised
    after reading at most ``limit + 2`` bytes of it."""
    with open(path, "rb") as f:
        offset = start
        if start > 0:  # begin at the first line that starts at or after `start`
            f.seek(start - 1)
            offset = start - 1 + _skip_line(f)
        number = 1 if start == 0 else None
        while True:
            if end is not None and offset >= end:
                return
            line = f.readline(-1 if limit is None else limit + 2)
            if not line:
                return
            if limit is not None and len(line) - line.endswith(b"\n") > limit:
                where = f"line {number}" if number is not None else f"line at byte offset {offset}"
                raise too_long(path, f", {where}", limit)
            yield number, offset, line
            offset += len(line)
            if number is not None:
                number += 1


def read_txt(path: Path, mode: str, limit: int | None = None) -> Iterator[str]:
    """One document per file, or (``mode='paragraph'``) one per blank-line-separated block;
    a document over ``limit`` bytes is a :class:`ZooError` (a file is refused by its size,
    before it is read)."""
    if mode == "file":
        if limit is not None and path.stat().st_size > limit:
            raise too_long(path, " (txt_split=file: the whole file is one document)", limit)
        yield _decode(path.read_bytes(), path, 0)
        return
    paragraph: list[str] = []
    size = 0
    for number, offset, raw in _lines(path, limit=limit):
        line = _decode(raw, path, offset)
        if line.strip():
            paragraph.append(line)
            size += len(raw)
            if limit is not None and size > limit:
                raise too_long(path, f", the paragraph that ends at line {number}", limit)
        elif paragraph:
            yield "".join(paragraph)
            paragraph, size = [], 0
    if paragraph:
        yield "".join(paragraph)


def read_jsonl(path: Path, column: str, start: int = 0, end: int | None = None,
               limit: int | None = None) -> Iterator[str]:
    """The ``column`` of each JSON object line starting in the byte range ``[start, end)``;
    blank lines and null values are skipped; a line over ``limit`` bytes is a :class:`ZooError`."""
    for number, offset, raw in _lines(path, start, end, limit):
        where = f"line {number}" if number is not None else f"line at byte offset {offset}"
        line = _decode(raw, path, offset, f", {where}")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ZooError(f"{path}, {where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ZooError(
                f"{path}, {where}: expected a JSON object, got {type(record).__name__}"
            )
        if column not in record:
            raise ZooError(
                f"{path}, {where}: no text column '{column}'{did_you_mean(column, record)}; "
                f"columns present: {', '.join(record) or '(none)'}; set text_column="
            )
        value = record[column]
        if value is None:
            continue
        if not isinstance(value, str):
            raise ZooError(
                f"{path}, {where}: column '{column}' holds {type(value).__name__}, not text"
            )
        yield value


def _open_parquet(path: Path, column: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` whose string ``column`` exists (else a ZooError)."""
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
    return parquet


def read_parquet(
    path: Path, column: str, row_groups: tuple[int, int] | None = None, max_rows: int | None = None,
    batch_size: int = 1024, limit: int | None = None,
) -> Iterator[str]:
    """The string ``column`` of a parquet file (row groups ``[a, b)`` of it, at most
    ``max_rows`` rows), read in record batches, never whole; a value over ``limit`` UTF-8
    bytes is a :class:`ZooError`."""
    import pyarrow as pa

    parquet = _open_parquet(path, column)
    groups = None if row_groups is None else list(range(*row_groups))
    left = max_rows
    try:
        for batch in parquet.iter_batches(batch_size=batch_size, row_groups=groups, columns=[column]):
            values = batch.column(0).to_pylist()
            if left is not None:
                values, left = values[:left], left - len(values)
            for value in values:
                if value is None:
                    continue
                if limit is not None and len(value) > limit // 4 and len(value.encode("utf-8", "surrogatepass")) > limit:
                    raise too_long(path, f", column '{column}'", limit)
                yield value
            if left is not None and left <= 0:
                return
    except (pa.ArrowException, OSError) as e:
        raise ZooError(f"{path}: error while reading parquet (corrupt file?): {e}") from None
    except UnicodeDecodeError as e:
        raise ZooError(
            f"{path}: column '{column}' holds text that is not valid UTF-8 ({e})"
        ) from None


def parquet_units(path: Path, column: str, target: int, max_rows: int | None = None) -> list[tuple[int, int, int, int]]:
    """Cut a parquet file into runs of row groups of at most ``target`` bytes of ``column``
    (a single larger row group is a run of its own).

    Returns ``(first_group, end_group, bytes, rows_so_far)`` per run, read from the file's
    footer only; with ``max_rows``, the runs cover just the first ``max_rows`` rows.
    """
    meta = _open_parquet(path, column).metadata
    j = meta.schema.names.index(column) if column in meta.schema.names else 0
    runs, first, size, rows = [], 0, 0, 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        group_size = group.column(j).total_uncompressed_size
        if size and size + group_size > target:  # close the run before it outgrows the target
            runs.append((first, g, size, rows))
            first, size = g, 0
        size += group_size
        rows += group.num_rows
        if max_rows is not None and rows >= max_rows:
            break
    if size:
        runs.append((first, g + 1, size, rows))
    return runs


def jsonl_ranges(path: Path, target: int) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of about ``target`` bytes that together cover the file
    (a line belongs to the range it starts in)."""
    size = path.stat().st_size
    return [(start, min(start + target, size)) for start in range(0, max(size, 1), target)]
