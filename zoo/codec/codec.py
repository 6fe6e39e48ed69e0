"""A language model as a lossless compressor: its next-token distributions drive a range coder.

The input's bytes become token ids (:mod:`zoo.codec.tokens`); the ids are cut into segments of
``n_ctx`` tokens, the windows the model was trained and evaluated on. Each segment is predicted
from its own tokens only (plus the one token before it, and the stored side information of an
encoder-augmented decoder), so segments are independent, and many of them run as one batch:

* the segments are laid out in ``rows`` *lanes* of consecutive segments; each batch holds the
  next segment of every lane. A segment's first input is the last token of the segment before
  it in its lane (as in ``zoo.evaluate``'s packed windows); the first segment of each lane
  starts from ``<|endoftext|>`` instead, so lanes need nothing from each other;
* every next-token distribution goes to ``constriction``'s range coder as a categorical model
  (``perfect=False``: quantised to fixed-point frequencies, every token at least one count),
  one call per position for the whole batch; all of the file's symbols share one stream.

Exactness: the decoder must see bit-identical probabilities. It runs THE SAME computation as the
encoder: the same batches of the same shapes, in the same order, on the same kind of device,
with the same torch build and thread count, then the same softmax and the same quantisation.
Two numeric paths do that:

* ``cached`` (families with an incremental decoder, e.g. every Llama stack): both sides feed
  one position at a time through the key/value cache, so decoding costs about what encoding does;
* ``window`` (any family): both sides run the model over the whole window, the decoder once per
  position with the not-yet-decoded positions filled with pads. A causal model's output at
  position ``t`` does not depend on what comes after (masked weights are exactly zero), so
  the encoder needs one pass; the decoder needs ``n_ctx``.

Anything that lets one token's output depend on other tokens of the batch (a mixture of
experts' capacity limit) is switched off first (:meth:`zoo.models.LanguageModel.decouple_rows`).
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from zoo.codec.container import CodecError, Container
from zoo.codec.tokens import TokenBytes
from zoo.data.layouts import IGNORE_INDEX
from zoo.data.tokenizer import EOT, PAD, tokenizer_fingerprint
from zoo.errors import ZooError

#: numeric paths (module docstring); ``auto`` takes ``cached`` where the family has one
PATHS = ("auto", "cached", "window")
#: segments per batch unless told otherwise
DEFAULT_ROWS = 32


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's weights as loaded (names, dtypes, shapes and values, in name order):
    the identity a compressed file records of the model that wrote it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def numeric_environment(device: torch.device) -> dict[str, Any]:
    """What has to be the same on the decoding side for bit-identical probabilities."""
    env: dict[str, Any] = {"torch": torch.__version__, "device": device.type,
                           "threads": torch.get_num_threads()}
    if device.type == "cpu":
        env["cpu"] = torch.backends.cpu.get_cpu_capability()
    else:
        env["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return env


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Inside: torch runs with ``n`` intra-op threads (the encoder's count, on the decoder)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Segment:
    """``length`` tokens from ``start`` of the input; ``first_in_lane``: starts from EOT."""

    start: int
    length: int
    first_in_lane: bool


def batches(n_tokens: int, n_ctx: int, rows: int) -> list[list[Segment]]:
    """The batches both sides run: segment ``i`` of every lane, for ``i = 0, 1, ...``.

    ``n_tokens`` are cut into segments of ``n_ctx`` (the last may be shorter), laid out in at
    most ``rows`` lanes of consecutive segments (the first lanes one segment longer)."""
    n_seg = -(-n_tokens // n_ctx)
    if n_seg == 0:
        return []
    lanes = min(rows, n_seg)
    q, r = divmod(n_seg, lanes)
    first = np.cumsum([0] + [q + (j < r) for j in range(lanes)])
    out: list[list[Segment]] = []
    for i in range(q + (r > 0)):
        batch = []
        for j in range(lanes):
            k = first[j] + i
            if k < first[j + 1]:
                start = int(k) * n_ctx
                batch.append(Segment(start, min(n_ctx, n_tokens - start), i == 0))
        out.append(batch)
    return out


class ModelCodec:
    """Compress and decompress bytes with one loaded model.

    Args:
        model: a zoo :class:`~zoo.models.LanguageModel` (evaluation mode is set here).
        tokenizer: the tokenizer it was trained with.
        n_ctx: tokens per segment (the model's context).
        rows: segments per batch (the decoder uses the file's own value).
        path: ``auto``, ``cached`` or ``window`` (module docstring).
        device: where the model runs (``cpu``, ``cuda``, ...).
        weights: the weight storage mode applied (recorded in the file; see
            :meth:`from_pretrained`).
        model_sha256: the identity recorded in files; default: :func:`weights_sha256`.
        progress: show progress bars.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, n_ctx: int, *, rows: int = DEFAULT_ROWS,
                 path: str = "auto", device: str | torch.device = "cpu", weights: str = "fp32",
                 model_sha256: str | None = None, progress: bool = True) -> None:
        if path not in PATHS:
            raise CodecError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
        if not isinstance(rows, int) or rows < 1:
            raise CodecError(f"rows must be a positive integer; got {rows!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model.decouple_rows()
        self.tokenizer, self.n_ctx, self.rows, self.path = tokenizer, int(n_ctx), rows, path
        self.weights, self.progress = weights, progress
        self.bytes_tokens = TokenBytes(tokenizer)
        self.eot = tokenizer.convert_tokens_to_ids(EOT)
        self.pad = tokenizer.convert_tokens_to_ids(PAD)
        self.model_sha256 = model_sha256 or weights_sha256(model)
        self.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        fmt = model.side_format()
        self.side_format = fmt
        self.vocab_size = len(tokenizer)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, weights: str = "fp32", vector_format: str | None = None,
                        **kwargs: Any) -> ModelCodec:
        """A codec for a published model name, an exported folder or a ``.ckpt``.

        ``weights``: a storage mode of :mod:`zoo.quantize` (``fp32``, ``bf16``, ``fp16``,
        ``int8``, ``nf4``, ``fp4``) applied to the weights first; ``vector_format``: the format
        an EACD's vector is stored in (default: the model's own)."""
        from zoo.codec.loading import load_for_coding

        model, tokenizer, n_ctx, sha = load_for_coding(name_or_path, weights, vector_format)
        return cls(model, tokenizer, n_ctx, weights=weights, model_sha256=sha, **kwargs)

    # ------------------------------------------------------------------ header
    def _header(self, data: bytes, n_tokens: int, path: str, side_bytes: int) -> dict[str, Any]:
        fmt = self.side_format
        return {
            "model": {"sha256": self.model_sha256, "weights": self.weights},
            "tokenizer": self.tokenizer_fingerprint,
            "numerics": {**numeric_environment(self.device), "path": path, "rows": self.rows,
                         "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch.")},
            "n_ctx": self.n_ctx, "bytes": len(data), "tokens": int(n_tokens),
            "crc32": zlib.crc32(data),
            "side": None if fmt is None else {"format": fmt.name, "bytes_per_segment": self._side_row_bytes()},
            "side_bytes": side_bytes,
        }

    def _side_row_bytes(self) -> int:
        return self.side_format.bytes_per_vector(int(self.model.d_c)) if self.side_format else 0

    def check(self, header: dict[str, Any], where: str = "input") -> None:
        """Refuse (one :class:`CodecError` line) a file this codec would decode wrongly."""
        wrote = header.get("model", {})
        if wrote.get("sha256") != self.model_sha256:
            raise CodecError(f"{where} was compressed with another model (weights sha256 "
                             f"{str(wrote.get('sha256'))[:12]}..., this one is {self.model_sha256[:12]}...); "
                             "decompress it with the model that wrote it")
        if header.get("tokenizer") != self.tokenizer_fingerprint:
            raise CodecError(f"{where} was compressed with another tokenizer ({header.get('tokenizer')}, "
                             f"this model's is {self.tokenizer_fingerprint})")
        if wrote.get("weights") != self.weights:
            raise CodecError(f"{where} was compressed with weights={wrote.get('weights')}; load the model with "
                             f"the same storage mode (this codec has weights={self.weights})")
        fmt = header.get("side")
        mine = None if self.side_format is None else self.side_format.name
        if (fmt or {}).get("format") != mine:
            raise CodecError(f"{where} stores side information as {(fmt or {}).get('format')}, this model "
                             f"as {mine}; set vector_format={(fmt or {}).get('format')}")
        if header.get("n_ctx") != self.n_ctx:
            raise CodecError(f"{where} has segments of {header.get('n_ctx')} tokens, this model's n_ctx is {self.n_ctx}")
        env = dict(header.get("numerics", {}))
        here = numeric_environment(self.device)
        for key in ("torch", "device", "cpu", "gpu"):
            if env.get(key) != here.get(key):
                raise CodecError(
                    f"{where} was compressed with {key}={env.get(key)} and this machine has {key}={here.get(key)}; "
                    "a file decodes only on the same numeric path (same torch build, device kind and CPU kernels)")

    # ------------------------------------------------------------------ the two directions
    def compress(self, data: bytes) -> bytes:
        """The compressed file for ``data`` (any bytes)."""
        import constriction

        data = bytes(data)
        ids = self.bytes_tokens.encode(data)
        encoder = constriction.stream.queue.RangeEncoder()
        side_parts: list[bytes] = []
        path = self.resolved_path()
        with torch.inference_mode(), self._bar("compress", len(ids)) as bar:
            for batch in batches(len(ids), self.n_ctx, self.rows):
                inputs, labels, lengths = self._known_batch(ids, batch)
                side, packed = self._side(inputs, labels, lengths)
                side_parts.append(packed)
                decoder = self._incremental(side, len(batch), path)
                logits = None if decoder is not None else self.model.predict(inputs, side)
                for t in range(int(lengths.max())):
                    step = decoder.step(inputs[:, t]) if decoder is not None else logits[:, t]
                    active = (lengths > t).nonzero()[0]
                    encoder.encode(labels[active, t].numpy().astype(np.int32), _family(),
                                   _probabilities(step, active))
                bar.update(int(lengths.sum()))
        side = b"".join(side_parts)
        header = self._header(data, len(ids), path, len(side))
        return Container(header, side, encoder.get_compressed()).to_bytes()

    def decompress(self, blob: bytes, where: str = "input") -> bytes:
        """The original bytes of a file :meth:`compress` wrote (a :class:`CodecError` if this
        codec cannot decode it exactly, or the result fails the file's CRC)."""
        import constriction

        box = Container.from_bytes(bytes(blob), where)
        header = box.header
        self.check(header, where)
        numerics = header["numerics"]
        n_tokens, path, rows = int(header["tokens"]), numerics["path"], int(numerics["rows"])
        row_bytes = self._side_row_bytes()
        plan = batches(n_tokens, self.n_ctx, rows)
        if len(box.side) != row_bytes * sum(len(b) for b in plan):
            raise CodecError(f"{where}: its side information does not fit its header")
        decoder_stream = constriction.stream.queue.RangeDecoder(box.words)
        ids = np.zeros(n_tokens, dtype=np.int64)
        offset = 0
        with torch_threads(int(numerics["threads"])), torch.inference_mode(), \
                self._bar("decompress", n_tokens) as bar:
            for batch in plan:
                B = len(batch)
                lengths = np.array([s.length for s in batch])
                inputs = torch.full((B, self.n_ctx), self.pad, dtype=torch.long)
                inputs[:, 0] = torch.tensor([self._context(ids, s) for s in batch])
                inputs = inputs.to(self.device)
                side = None
                if row_bytes:
                    side = self.side_format.unpack(box.side[offset : offset + B * row_bytes], int(self.model.d_c))
                    side = side.to(self.device)
                    offset += B * row_bytes
                decoder = self._incremental(side, B, path)
                if path == "cached" and decoder is None:
                    raise CodecError(f"{where} was written on the cached path, which this model does not have")
                for t in range(int(lengths.max())):
                    if decoder is not None:
                        step = decoder.step(inputs[:, t])
                    else:
                        step = self.model.predict(inputs, side)[:, t]
                    active = (lengths > t).nonzero()[0]
                    symbols = np.asarray(decoder_stream.decode(_family(), _probabilities(step, active)))
                    if (symbols < 0).any() or (symbols >= self.vocab_size).any():
                        raise CodecError(f"{where} does not decode with this model (a token out of range)")
                    for row, sym in zip(active, symbols, strict=True):
                        ids[batch[row].start + t] = sym
                    if t + 1 < self.n_ctx:
                        inputs[torch.as_tensor(active, device=self.device), t + 1] = torch.as_tensor(
                            symbols.astype(np.int64), device=self.device)
                bar.update(int(lengths.sum()))
        data = self.bytes_tokens.decode(ids)
        if len(data) != header["bytes"] or zlib.crc32(data) != header["crc32"]:
            raise CodecError(f"{where} decoded to bytes that fail its CRC-32: the numeric path differs from the "
                             "encoder's (another thread count, BLAS or kernel); nothing was written")
        return data

    def resolved_path(self) -> str:
        """The numeric path :meth:`compress` takes: ``path``, with ``auto`` resolved to
        ``cached`` when the family has an incremental decoder, else ``window``."""
        if self.path != "auto":
            return self.path
        side = None
        if self.side_format is not None:
            side = torch.zeros(1, int(self.model.d_c), device=self.device)
        with torch.inference_mode():
            return "cached" if self.model.incremental_decoder(side, 1) is not None else "window"

    # ------------------------------------------------------------------ pieces
    def _context(self, ids: np.ndarray, segment: Segment) -> int:
        return self.eot if segment.first_in_lane else int(ids[segment.start - 1])

    def _known_batch(self, ids: np.ndarray, batch: list[Segment]) -> tuple[Tensor, Tensor, np.ndarray]:
        """Inputs ``[B, n_ctx]`` (on the device), labels ``[B, n_ctx]`` (CPU, pad past the end)
        and lengths of a batch whose tokens are known (the encoder's)."""
        B, T = len(batch), self.n_ctx
        labels = torch.full((B, T), self.pad, dtype=torch.long)
        for r, s in enumerate(batch):
            labels[r, : s.length] = torch.from_numpy(ids[s.start : s.start + s.length])
        inputs = torch.cat([torch.tensor([[self._context(ids, s)] for s in batch]), labels[:, :-1]], dim=1)
        return inputs.to(self.device), labels, np.array([s.length for s in batch])

    def _side(self, inputs: Tensor, labels: Tensor, lengths: np.ndarray) -> tuple[Tensor | None, bytes]:
        """The batch's side information as the decoder will read it back, and its bytes."""
        if self.side_format is None:
            return None, b""
        past_end = torch.arange(labels.shape[1])[None, :] >= torch.as_tensor(lengths)[:, None]
        masked = labels.masked_fill(past_end, IGNORE_INDEX)
        vector = self.model.side_information({"input_ids": inputs, "labels": masked.to(self.device)})
        packed = self.side_format.pack(vector)
        return self.side_format.unpack(packed, vector.shape[-1]).to(self.device), packed

    def _incremental(self, side: Tensor | None, batch_size: int, path: str) -> Any:
        if path == "window":
            return None
        decoder = self.model.incremental_decoder(side, batch_size)
        if decoder is None and path == "cached":
            raise CodecError(f"path=cached: model family {getattr(self.model, 'family', '?')} has no incremental "
                             "decoder; use path=window or path=auto")
        return decoder

    def _bar(self, what: str, total: int) -> Any:
        return tqdm(total=total, desc=what, unit="tok", unit_scale=True, disable=not self.progress or None,
                    leave=False)


def _family() -> Any:
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


def _probabilities(logits: Tensor, rows: np.ndarray) -> np.ndarray:
    """float32 next-token probabilities ``[len(rows), V]`` of the chosen rows: the same
    computation on both sides (a softmax in float32 on the CPU, row by row)."""
    picked = logits.float().cpu()[torch.as_tensor(rows)].contiguous()
    return torch.softmax(picked, dim=-1).numpy()


def check_rows(rows: Any) -> int:
    """``rows=`` as a positive integer (a :class:`ZooError` otherwise)."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ZooError(f"rows must be a positive integer (segments per batch); got {rows!r}")
    return rows
