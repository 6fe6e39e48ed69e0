"""Classical compressors as baselines for bits per byte.

A language model is a compressor: with arithmetic coding its BPB is (to within a few bits per
file) the size of the compressed text (``zoo.compress`` writes that file). Setting a model's
BPB beside ``gzip -9``, ``bzip2 -9``, ``xz -9``, ``zstd -22`` and PPMd on the same bytes shows
how much structure it captures beyond repeated strings (gzip, LZ77 with a 32 KiB window),
block-sorting context (bzip2), long-range matches with context-modelled literals (xz, LZMA2;
zstd at its strongest level) and an order-8 context-mixing model of bytes (PPMd var. H, the
strongest classical text compressor here).

Sizes include each format's own header and checksum, as the file the command-line tool
writes would; for the megabytes of text that are compared here that overhead (tens of bytes)
is negligible. gzip is written with ``mtime=0`` so results are reproducible.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable, Iterable

import pyppmd
import zstandard

from zoo.errors import ZooError, did_you_mean
from zoo.schema import COMPRESSORS

"""Names accepted by :func:`compressed_bits_per_byte`, in the order tables list them."""


class CompressionError(ZooError, ValueError):
    """A bad request to a compressor (unknown method, no data).

    A :class:`~zoo.errors.ZooError` so the command line prints it cleanly, and a
    ``ValueError`` because it is one.
    """


_COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    # gzip -9: DEFLATE at its highest level.
    "gzip": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    # bzip2 -9: 900 kB blocks.
    "bz2": lambda data: bz2.compress(data, compresslevel=9),
    # xz -9: LZMA2 preset 9 (64 MiB dictionary), .xz container, without the "extreme" flag.
    "xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=9),
    # zstd --ultra -22: its strongest level, frame with content size and no checksum.
    "zstd": lambda data: zstandard.ZstdCompressor(level=22).compress(data),
    # PPMd variant H (7-Zip's), order 8, 256 MiB model: raw stream, no container.
    "ppmd": lambda data: pyppmd.compress(data, max_order=8, mem_size=256 << 20, variant="H"),
}


#: how tables name each method (its command line)
COMPRESSOR_LABELS = {"gzip": "gzip -9", "bz2": "bz2 -9", "xz": "xz -9", "zstd": "zstd -22", "ppmd": "PPMd -o8"}


def _check_method(method: str) -> None:
    if method not in _COMPRESS:
        raise CompressionError(
            f"unknown compression method {method!r}{did_you_mean(str(method), COMPRESSORS)}; "
            f"allowed: {', '.join(COMPRESSORS)}"
        )


def compressed_bits_per_byte(data: bytes, method: str) -> float:
    """Compressed size of ``data`` in bits per input byte: ``8 * len(compressed) / len(data)``.

    Args:
        data: the bytes to compress (for text, its UTF-8 encoding, the same bytes BPB counts).
        method: one of :data:`COMPRESSORS` (``gzip``, ``bz2``, ``xz``, each at level 9;
            ``zstd`` at 22; ``ppmd`` order 8).

    Raises:
        CompressionError (a ValueError): unknown ``method``, or empty ``data`` (a rate per
            byte of nothing is undefined).
    """
    _check_method(method)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"data must be bytes (encode text as UTF-8 first), got {type(data).__name__}"
        )
    data = bytes(data)
    if not data:
        raise CompressionError("cannot compute bits per byte of empty data")
    return 8.0 * len(_COMPRESS[method](data)) / len(data)


def compression_table(data: bytes, methods: Iterable[str] = COMPRESSORS) -> dict[str, float]:
    """Bits per byte of ``data`` under each of ``methods``, keyed by method name.

    All method names are checked before anything is compressed, so a typo fails fast rather
    than after minutes of xz on a large corpus.
    """
    methods = tuple(methods)
    for method in methods:
        _check_method(method)
    return {method: compressed_bits_per_byte(data, method) for method in methods}
