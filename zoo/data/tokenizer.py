"""Tokenizers: train a byte-level BPE on a training split, or load an existing one.

The zoo measures compression in bits per byte, so every tokenizer must say how many UTF-8
bytes each token stands for. For byte-level BPE this is exact: every character of a token's
vocabulary string stands for one byte (GPT-2's byte-to-unicode alphabet), so
:func:`token_byte_lengths` reads the lengths straight off the vocabulary. Special tokens
stand for no bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from zoo.errors import ZooError
from zoo.schema import DEFAULT_VOCAB_SIZE

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOT, PAD)


def train_bpe(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (no prefix space, no normalisation: lossless).

    ``vocab_size`` includes the 256 byte tokens and the special tokens ``<|endoftext|>``
    (id 0) and ``<|pad|>`` (id 1).
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ZooError(
            f"tokenizer vocab_size={vocab_size} is too small: byte-level BPE needs at least "
            f"{256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer with our specials.

    Built from the tokenizer object (not vocab/merges files: transformers 5 silently builds
    an empty tokenizer from those).
    """
    vocab = tok.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tok.add_special_tokens(missing)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token=PAD)
    hf.padding_side = "left"
    if not hf("a b").input_ids:
        raise ZooError("the tokenizer encodes text to nothing; it is empty or broken")
    return hf


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a ``tokenizer.json`` file, or a folder that holds one."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ZooError(f"tokenizer not found: {p} (give a tokenizer.json file or a folder with one)")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises plain Exception subclasses on bad JSON
        raise ZooError(f"cannot read tokenizer {p}: {e}") from e
    return wrap(tok)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | os.PathLike) -> Path:
    """Write the tokenizer as one ``tokenizer.json`` (atomically) and return its path."""
    p = Path(path)
    if p.suffix != ".json":
        p = p / "tokenizer.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    tokenizer.backend_tokenizer.save(str(tmp))
    os.replace(tmp, p)
    return p


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A short hash of the tokenizer's full definition (vocab, merges, specials)."""
    blob = tokenizer.backend_tokenizer.to_str().encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def is_byte_level(tokenizer: PreTrainedTokenizerFast) -> bool:
    """Whether the tokenizer's pre-tokenizer is byte-level (so byte lengths are exact)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    kinds = [pre.get("type")] + [p.get("type") for p in pre.get("pretokenizers", [])]
    return "ByteLevel" in kinds


def token_byte_lengths(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """UTF-8 bytes that each token id stands for (int16 array of length ``len(tokenizer)``).

    Exact for byte-level BPE. For other tokenizers it decodes each token alone, which can
    miscount tokens that are parts of a multi-byte character; a warning says so.
    """
    n = len(tokenizer)
    lengths = np.zeros(n, dtype=np.int16)
    specials = set(tokenizer.all_special_ids)
    if is_byte_level(tokenizer):
        for token, idx in tokenizer.get_vocab().items():
            if idx not in specials:
                lengths[idx] = len(token)
    else:
        log.warning(
            "tokenizer is not byte-level: byte counts per token are estimated by decoding "
            "each token alone, so bits per byte may be slightly off"
        )
        for idx in range(n):
            if idx not in specials:
                lengths[idx] = len(tokenizer.decode([idx]).encode("utf-8"))
    return lengths


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level pre-tokenizer's map from the printable character standing for a byte
    back to that byte (printable Latin-1 bytes stand for themselves; the other 68 bytes are
    shifted to code points 256 and up, in order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


def token_bytes(tokenizer: PreTrainedTokenizerFast) -> list[bytes]:
    """The exact bytes each token id stands for (special tokens: ``b""``), byte-level BPE only.
    Joining the bytes of consecutive tokens rebuilds the text even where a token boundary
    splits a multi-byte character (decoding tokens alone would not)."""
    if not is_byte_level(tokenizer):
        raise ValueError("token_bytes needs a byte-level tokenizer")
    alphabet = _byte_level_alphabet()
    out = [b""] * len(tokenizer)
    specials = set(tokenizer.all_special_ids)
    for token, idx in tokenizer.get_vocab().items():
        if idx not in specials:
            out[idx] = bytes(alphabet[c] for c in token)
    return out


def sample_texts(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Yield texts until about ``max_bytes`` of UTF-8 have been yielded (tokenizer training cap)."""
    seen = 0
    for t in texts:
        yield t
        seen += len(t.encode("utf-8"))
        if seen >= max_bytes:
            return
