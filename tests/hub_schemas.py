"""Parquet tables with the Hugging Face hub's FineWeb-edu and FineMath schemas, for offline tests
of the hub code path (``datasets.load_dataset("parquet", ...)`` is the same machinery)."""

from __future__ import annotations

import pyarrow as pa


def words(i: int) -> str:
    return f"Document {i} talks about topic {i * 7 % 13} at some length, sentence after sentence."


def fineweb_edu_table(start: int, n: int) -> pa.Table:
    """Rows with FineWeb-edu's columns and types."""
    ids = range(start, start + n)
    return pa.table(
        {
            "text": [words(i) for i in ids],
            "id": [f"<urn:uuid:{i:08x}-0000-0000-0000-000000000000>" for i in ids],
            "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.org/page/{i}" for i in ids],
            "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/segments/x.warc.gz"] * n,
            "language": ["en"] * n,
            "language_score": pa.array([0.9 + (i % 10) / 100 for i in ids], pa.float64()),
            "token_count": pa.array([17] * n, pa.int64()),
            "score": pa.array([3.0 + (i % 20) / 10 for i in ids], pa.float64()),
            "int_score": pa.array([3 + (i % 3) for i in ids], pa.int64()),
        }
    )


def finemath_table(start: int, n: int) -> pa.Table:
    """Rows with FineMath's columns and types."""
    ids = range(start, start + n)
    texts = [f"Solve $x^2 = {i}$. Then $x = \\pm\\sqrt{{{i}}}$, problem {i}." for i in ids]
    return pa.table(
        {
            "url": [f"https://math.example.org/{i}" for i in ids],
            "fetch_time": pa.array([1_700_000_000_000 + i for i in ids], pa.int64()),
            "content_mime_type": ["text/html"] * n,
            "warc_filename": ["crawl-data/CC-MAIN-2023-50/segments/y.warc.gz"] * n,
            "warc_record_offset": pa.array([1000 * i for i in ids], pa.int32()),
            "warc_record_length": pa.array([5000] * n, pa.int32()),
            "text": texts,
            "token_count": pa.array([len(t) // 4 for t in texts], pa.int32()),
            "char_count": pa.array([len(t) for t in texts], pa.int32()),
            "metadata": ['{"extraction_info": {}}'] * n,
            "score": pa.array([4.5] * n, pa.float64()),
            "int_score": pa.array([4] * n, pa.int64()),
            "crawl": ["CC-MAIN-2023-50"] * n,
            "snapshot_type": ["latest"] * n,
            "language": ["en"] * n,
            "language_score": pa.array([0.95] * n, pa.float64()),
        }
    )
