"""The compressed file: what it holds, and the checks that refuse a file instead of decoding
garbage.

Layout (integers little-endian)::

    b"ZOOLM"  version (1 byte)  header length (4 bytes)  header (UTF-8 JSON)
    side information (bytes)  range-coder words (4 bytes each)  CRC-32 of all of the above

The header says what decodes the file: the model (the sha256 of its weights as loaded), the
tokenizer (its fingerprint), the numeric path (torch version, device kind and CPU kernels,
thread count, weight and vector formats, how the tokens were cut and batched) and the input
(its length in bytes and tokens, and the CRC-32 of its bytes, checked after decoding).
The closing CRC-32 covers the whole file, so a flipped or missing byte is refused before any
decoding starts.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.errors import ZooError

MAGIC = b"ZOOLM"
VERSION = 1
_PREFIX = struct.Struct("<5sBI")


class CodecError(ZooError):
    """A file that cannot or must not be decoded (not ours, corrupted, another model), or a
    bad compression request: one line for the user, exit status 2 on the command line."""


@dataclass
class Container:
    """A compressed file's parts: the ``header`` (plain JSON data), the stored side
    information (``side``, bytes) and the range coder's ``words`` (uint32)."""

    header: dict[str, Any]
    side: bytes
    words: np.ndarray

    def to_bytes(self) -> bytes:
        """The file's bytes."""
        header = json.dumps(self.header, separators=(",", ":"), sort_keys=True).encode()
        body = (_PREFIX.pack(MAGIC, VERSION, len(header)) + header + self.side
                + np.asarray(self.words, dtype="<u4").tobytes())
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, blob: bytes, where: str = "input") -> Container:
        """Parse and check a file (:class:`CodecError` if it is not a zoo file or is damaged)."""
        if len(blob) < _PREFIX.size + 4 or blob[: len(MAGIC)] != MAGIC:
            raise CodecError(f"{where} is not a file written by zoo.compress (no ZOOLM signature)")
        magic, version, n_header = _PREFIX.unpack_from(blob)
        if version != VERSION:
            raise CodecError(f"{where} is a version-{version} zoo file; this zoo reads version {VERSION}")
        body, (crc,) = blob[:-4], struct.unpack("<I", blob[-4:])
        if zlib.crc32(body) != crc:
            raise CodecError(f"{where} is corrupted (its CRC-32 does not match): refusing to decode it")
        start = _PREFIX.size
        try:
            header = json.loads(body[start : start + n_header])
            side_bytes = int(header["side_bytes"])
        except (ValueError, KeyError, TypeError) as e:
            raise CodecError(f"{where} has an unreadable header ({e})") from None
        rest = body[start + n_header :]
        if side_bytes > len(rest) or (len(rest) - side_bytes) % 4:
            raise CodecError(f"{where} is truncated or malformed (payload of {len(rest)} bytes)")
        words = np.frombuffer(rest[side_bytes:], dtype="<u4").astype(np.uint32)
        return cls(header, rest[:side_bytes], words)

    @property
    def overhead_bytes(self) -> int:
        """Bytes that are not coded data or side information: signature, header, CRC."""
        header = json.dumps(self.header, separators=(",", ":"), sort_keys=True).encode()
        return _PREFIX.size + len(header) + 4
