"""Lossless compression with a zoo model: ``python -m zoo.compress`` / ``python -m zoo.decompress``.

:class:`ModelCodec` turns a model's next-token distributions into a range-coded file
(:mod:`zoo.codec.codec`), any bytes in (:mod:`zoo.codec.tokens`), a self-checking container
out (:mod:`zoo.codec.container`). :func:`compress` and :func:`decompress` are the one-call API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.codec.codec import (
    DEFAULT_ROWS,
    PATHS,
    SEGMENTATIONS,
    ModelCodec,
    Segment,
    batches,
    document_segments,
    window_segments,
)
from zoo.codec.container import CodecError, Container
from zoo.codec.loading import weights_sha256

__all__ = ["DEFAULT_ROWS", "PATHS", "SEGMENTATIONS", "CodecError", "Container", "ModelCodec", "Segment",
           "batches", "compress", "decompress", "document_segments", "weights_sha256", "window_segments"]


def compress(model: str | Path, data: bytes, **options: Any) -> bytes:
    """``data`` compressed with ``model`` (a published name, a model folder or a ``.ckpt``);
    ``options``: :meth:`ModelCodec.from_pretrained`'s (``rows``, ``path``, ``weights``,
    ``vector_format``, ``device``, ``progress``)."""
    return ModelCodec.from_pretrained(model, **options).compress(data)


def decompress(model: str | Path, blob: bytes, **options: Any) -> bytes:
    """The bytes ``blob`` was compressed from. The weight mode and vector format are read
    from the file; ``model`` must be the model that wrote it."""
    header = Container.from_bytes(bytes(blob)).header
    options.setdefault("weights", header["model"]["weights"])
    options.setdefault("segments", header.get("segments"))
    if header.get("side"):
        options.setdefault("vector_format", header["side"]["format"])
    return ModelCodec.from_pretrained(model, **options).decompress(blob)
