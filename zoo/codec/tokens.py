"""Any byte string as the token ids of a byte-level BPE tokenizer, and back, losslessly.

A byte-level BPE has one token for each of the 256 byte values, and every token stands for a
fixed byte string (its vocabulary entry, read through GPT-2's byte-to-character table). So any
bytes have a token sequence, and the sequence's bytes are the input again:

* the text ``<|endoftext|>`` is the end-of-text token, which stands for exactly those 13
  bytes: a file of documents joined by it (the usual corpus layout) is coded as the model
  reads a packed split, each document tokenised on its own and its end predicted;
* valid UTF-8 runs between them go through the tokenizer as text (its merges give the short
  sequence the model was trained on); any other special-token string (``<|pad|>``) is plain
  text there;
* bytes that are not UTF-8 (a lone ``0xff``, a cut multi-byte character) become their
  single-byte tokens;
* a run whose tokens would not give its bytes back (a tokenizer with a normaliser) falls back
  to single-byte tokens as well: the result is always exact, at worst less compact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from zoo.data.tokenizer import EOT, is_byte_level, token_bytes
from zoo.errors import ZooError

#: characters ``bytes.decode("utf-8", "surrogateescape")`` puts where a byte is not UTF-8
_NOT_UTF8 = re.compile(r"([\udc80-\udcff]+)")


class TokenBytes:
    """The lossless map between bytes and a byte-level BPE tokenizer's ids.

    Args:
        tokenizer: a ``transformers`` fast tokenizer over a byte-level BPE (every zoo model's).

    Raises:
        ZooError: for a tokenizer that is not byte-level or lacks one of the 256 byte tokens.
    """

    def __init__(self, tokenizer: object) -> None:
        if not is_byte_level(tokenizer):
            raise ZooError("compression needs a byte-level BPE tokenizer (every zoo model has one); "
                           "this one cannot spell arbitrary bytes")
        pieces = token_bytes(tokenizer)
        self.eot = tokenizer.convert_tokens_to_ids(EOT)
        pieces[self.eot] = EOT.encode()
        self.pieces = pieces
        single = {p[0]: i for i, p in enumerate(pieces) if len(p) == 1}
        missing = [b for b in range(256) if b not in single]
        if missing:
            raise ZooError(f"the tokenizer has no token for byte {missing[0]:#04x} ({len(missing)} bytes missing); "
                           "it cannot spell arbitrary bytes")
        self.byte_ids = np.array([single[b] for b in range(256)], dtype=np.int64)
        self._backend = tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str())
        self._backend.encode_special_tokens = True  # "<|endoftext|>" in the data is text

    def encode(self, data: bytes) -> np.ndarray:
        """Token ids ``[N]`` (int64) whose bytes are exactly ``data``."""
        out: list[np.ndarray] = []
        for i, doc in enumerate(self.documents(data)):
            if i:
                out.append(np.array([self.eot], dtype=np.int64))
            out.append(doc)
        return np.concatenate(out)

    def documents(self, data: bytes) -> list[np.ndarray]:
        """The token ids of each document of ``data`` (the parts between ``<|endoftext|>``;
        one for data without it)."""
        return [self.encode_document(doc) for doc in bytes(data).split(EOT.encode())]

    def encode_document(self, data: bytes) -> np.ndarray:
        """Token ids of bytes read as one document (``<|endoftext|>`` in it is plain text)."""
        runs = _NOT_UTF8.split(data.decode("utf-8", "surrogateescape"))
        text = [(i, run) for i, run in enumerate(runs) if i % 2 == 0 and run]  # odd: not UTF-8
        ids_of = dict(zip((i for i, _ in text),
                          (e.ids for e in self._backend.encode_batch([r for _, r in text], add_special_tokens=False)),
                          strict=True))
        out: list[np.ndarray] = []
        for i, run in enumerate(runs):
            if not run:
                continue
            raw = run.encode("utf-8", "surrogateescape")
            ids = ids_of.get(i)
            if ids is None or b"".join(self.pieces[t] for t in ids) != raw:
                out.append(self.byte_ids[np.frombuffer(raw, dtype=np.uint8)])
            else:
                out.append(np.asarray(ids, dtype=np.int64))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The bytes that token ids stand for."""
        pieces = self.pieces
        return b"".join([pieces[int(t)] for t in ids])
