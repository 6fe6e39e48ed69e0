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
  (``perfect=False``: quantised to 24-bit fixed-point frequencies, every token at least one
  count, so no token costs more than about 24 bits), one call per position for the whole
  batch; all of the file's symbols share one stream.

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
from zoo.codec.loading import load_for_coding, weights_sha256
from zoo.codec.tokens import TokenBytes
from zoo.data.layouts import IGNORE_INDEX
from zoo.data.tokenizer import EOT, PAD, tokenizer_fingerprint
from zoo.errors import ZooError

#: numeric paths (module docstring); ``auto`` takes ``cached`` where the family has one
PATHS = ("auto", "cached", "window")
#: segments per batch unless told otherwise
DEFAULT_ROWS = 64
#: constriction's range coder works in 24-bit fixed point and gives every token at least one
#: count, so no token costs more than about 24 bits, however unlikely the model finds it
COST_CAP_BITS = 24.0


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


#: how the tokens are cut into segments: across documents (as a packed split is read), or
#: inside each document (as a left-padded split is read: each document starts afresh)
SEGMENTATIONS = ("windows", "documents")


@dataclass(frozen=True)
class Segment:
    """``length`` tokens from ``start`` of the token array; ``fresh``: it starts a document
    (predicted from ``<|endoftext|>``, not from the token before it)."""

    start: int
    length: int
    fresh: bool = False


def window_segments(n_tokens: int, n_ctx: int) -> list[Segment]:
    """``n_tokens`` cut into segments of ``n_ctx`` (the last may be shorter)."""
    return [Segment(s, min(n_ctx, n_tokens - s), s == 0) for s in range(0, n_tokens, n_ctx)]


def document_segments(lengths: list[int], n_ctx: int) -> list[Segment]:
    """Each document (``lengths`` tokens each, stored one after another) cut into segments of
    ``n_ctx``; a document's first segment is fresh. Empty documents have none."""
    out, start = [], 0
    for n in lengths:
        out += [Segment(start + s, min(n_ctx, n - s), s == 0) for s in range(0, n, n_ctx)]
        start += n
    return out


def batches(segments: list[Segment], rows: int) -> list[list[Segment]]:
    """The batches both sides run: segment ``i`` of every lane, for ``i = 0, 1, ...``.

    The segments are laid out in at most ``rows`` lanes of consecutive segments (the first
    lanes one segment longer). A lane's first segment is made fresh, so lanes need nothing
    from each other."""
    if not segments:
        return []
    lanes = min(rows, len(segments))
    q, r = divmod(len(segments), lanes)
    first = np.cumsum([0] + [q + (j < r) for j in range(lanes)])
    out: list[list[Segment]] = []
    for i in range(q + (r > 0)):
        batch = []
        for j in range(lanes):
            k = int(first[j]) + i
            if k < first[j + 1]:
                seg = segments[k]
                batch.append(Segment(seg.start, seg.length, seg.fresh or i == 0))
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
        segments: ``windows`` (across documents, as a packed split is read) or ``documents``
            (each document afresh, as a left-padded split is read; the document lengths are
            coded in the file); default: as the model was trained (``from_pretrained``).
        device: where the model runs (``cpu``, ``cuda``, ...).
        weights: the weight storage mode applied (recorded in the file; see
            :meth:`from_pretrained`).
        model_sha256: the identity recorded in files; default: :func:`weights_sha256`.
        progress: show progress bars.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, n_ctx: int, *, rows: int = DEFAULT_ROWS,
                 path: str = "auto", segments: str = "windows", device: str | torch.device = "cpu",
                 weights: str = "fp32", model_sha256: str | None = None, progress: bool = True) -> None:
        if path not in PATHS:
            raise CodecError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
        if segments not in SEGMENTATIONS:
            raise CodecError(f"segments must be one of {', '.join(SEGMENTATIONS)}; got {segments!r}")
        self.rows = check_rows(rows)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model.decouple_rows()
        self.tokenizer, self.n_ctx, self.path, self.segments = tokenizer, int(n_ctx), path, segments
        self.weights, self.progress = weights, progress
        self.bytes_tokens = TokenBytes(tokenizer)
        self.eot = tokenizer.convert_tokens_to_ids(EOT)
        self.pad = tokenizer.convert_tokens_to_ids(PAD)
        self.model_sha256 = model_sha256 or weights_sha256(model)
        self.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        self.side_format = model.side_format()
        self.vocab_size = len(tokenizer)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, weights: str = "fp32", vector_format: str | None = None,
                        segments: str | None = None, **kwargs: Any) -> ModelCodec:
        """A codec for a published model name, an exported folder or a ``.ckpt``.

        ``weights``: a storage mode of :mod:`zoo.quantize` (``fp32``, ``bf16``, ``fp16``,
        ``int8``, ``nf4``, ``fp4``) applied to the weights first; ``vector_format``: the format
        an EACD's vector is stored in (default: the model's own); ``segments``: default
        ``documents`` for a model trained on a left-padded layout, else ``windows``."""
        model, tokenizer, n_ctx, sha, layout = load_for_coding(name_or_path, weights, vector_format)
        if segments is None:
            segments = "documents" if layout == "left_padded" else "windows"
        return cls(model, tokenizer, n_ctx, weights=weights, model_sha256=sha, segments=segments, **kwargs)

    def resolved_path(self) -> str:
        """The numeric path :meth:`compress` takes: ``path``, with ``auto`` resolved to
        ``cached`` when the family has an incremental decoder, else ``window``."""
        if self.path != "auto":
            return self.path
        side = None
        if self.side_format is not None:
            side = torch.zeros(1, int(self.model.side_numbers), device=self.device)
        with torch.inference_mode():
            return "cached" if self.model.incremental_decoder(side, 1) is not None else "window"

    # ------------------------------------------------------------------ header
    def _header(self, data: bytes, ids: np.ndarray, path: str, side_bytes: int,
                lengths: list[int] | None) -> dict[str, Any]:
        fmt = self.side_format
        header = {
            "model": {"sha256": self.model_sha256, "weights": self.weights},
            "tokenizer": self.tokenizer_fingerprint,
            "numerics": {**numeric_environment(self.device), "path": path, "rows": self.rows,
                         "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch.")},
            "n_ctx": self.n_ctx, "bytes": len(data), "tokens": len(ids), "crc32": zlib.crc32(data),
            "segments": self.segments,
            "side": None if fmt is None else {"format": fmt.name, "bytes_per_segment": self._side_row_bytes()},
            "side_bytes": side_bytes,
        }
        if lengths is not None:
            header["documents"] = {"count": len(lengths), "max_tokens": max(lengths)}
        return header

    def _side_row_bytes(self) -> int:
        return self.side_format.bytes_per_vector(int(self.model.side_numbers)) if self.side_format else 0

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
        fmt = (header.get("side") or {}).get("format")
        mine = None if self.side_format is None else self.side_format.name
        if fmt != mine:
            raise CodecError(f"{where} stores side information as {fmt}, this model as {mine}; "
                             f"set vector_format={fmt}")
        if header.get("n_ctx") != self.n_ctx:
            raise CodecError(f"{where} has segments of {header.get('n_ctx')} tokens, this model's n_ctx is {self.n_ctx}")
        if header.get("segments") not in SEGMENTATIONS:
            raise CodecError(f"{where} cuts its tokens as {header.get('segments')!r}, which this zoo does not know")
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
        encoder = constriction.stream.queue.RangeEncoder()
        lengths: list[int] | None = None
        if self.segments == "documents":
            docs = self.bytes_tokens.documents(data)
            lengths = [len(d) for d in docs]
            ids = np.concatenate(docs)
            segments = document_segments(lengths, self.n_ctx)
            encoder.encode(np.asarray(lengths, dtype=np.int32), _lengths_model(max(lengths)))
        else:
            ids = self.bytes_tokens.encode(data)
            segments = window_segments(len(ids), self.n_ctx)
        side_parts: list[bytes] = []
        path = self.resolved_path()
        model_bits = capped_bits = 0.0
        with torch.inference_mode(), self._bar("compress", len(ids)) as bar:
            for batch in batches(segments, self.rows):
                lengths_now = np.array([s.length for s in batch])
                side, packed = self._side(ids, batch)
                side_parts.append(packed)
                run = BatchRun(self, batch, [self._context(ids, s) for s in batch], side, path)
                run.fill([ids[s.start : s.start + s.length - 1] for s in batch])
                for t in range(int(lengths_now.max())):
                    active = (lengths_now > t).nonzero()[0]
                    labels = np.array([ids[batch[r].start + t] for r in active], dtype=np.int32)
                    probs = _probabilities(run.logits(t), active)
                    encoder.encode(labels, _family(), probs)
                    surprisal = -np.log2(np.maximum(probs[np.arange(len(active)), labels].astype(np.float64), 1e-300))
                    model_bits += float(surprisal.sum())
                    capped_bits += float(np.minimum(surprisal, COST_CAP_BITS).sum())
                bar.update(int(lengths_now.sum()))
        side = b"".join(side_parts)
        header = self._header(data, ids, path, len(side), lengths)
        #: what the last compress cost under the model itself (``-log2 p`` of every token, in
        #: float) and with each token's cost capped at the coder's precision (module docstring)
        self.last_stats = {"model_bits": model_bits, "capped_bits": capped_bits, "tokens": len(ids),
                           "side_bits": 8 * len(side)}
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
        stream = constriction.stream.queue.RangeDecoder(box.words)
        lengths: list[int] | None = None
        if header["segments"] == "documents":
            docs = header.get("documents") or {}
            lengths = stream.decode(_lengths_model(int(docs["max_tokens"])), int(docs["count"])).tolist()
            if sum(lengths) != n_tokens:
                raise CodecError(f"{where} does not decode with this model (its document lengths do not add up)")
            segments = document_segments(lengths, self.n_ctx)
        else:
            segments = window_segments(n_tokens, self.n_ctx)
        plan = batches(segments, rows)
        row_bytes = self._side_row_bytes()
        if len(box.side) != row_bytes * len(segments):
            raise CodecError(f"{where}: its side information does not fit its header")
        ids = np.zeros(n_tokens, dtype=np.int64)
        offset = 0
        with torch_threads(int(numerics["threads"])), torch.inference_mode(), \
                self._bar("decompress", n_tokens) as bar:
            for batch in plan:
                B = len(batch)
                lengths_now = np.array([s.length for s in batch])
                side = None
                if row_bytes:
                    side = self.side_format.unpack(box.side[offset : offset + B * row_bytes], int(self.model.side_numbers))
                    side = side.to(self.device)
                    offset += B * row_bytes
                run = BatchRun(self, batch, [self._context(ids, s) for s in batch], side, path)
                for t in range(int(lengths_now.max())):
                    active = (lengths_now > t).nonzero()[0]
                    symbols = np.asarray(stream.decode(_family(), _probabilities(run.logits(t), active)), dtype=np.int64)
                    if (symbols < 0).any() or (symbols >= self.vocab_size).any():
                        raise CodecError(f"{where} does not decode with this model (a token out of range)")
                    ids[[batch[r].start + t for r in active]] = symbols
                    run.decoded(active, t, symbols)
                bar.update(int(lengths_now.sum()))
        if lengths is None:
            data = self.bytes_tokens.decode(ids)
        else:
            bounds = np.cumsum([0] + lengths)
            data = EOT.encode().join(self.bytes_tokens.decode(ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        if len(data) != header["bytes"] or zlib.crc32(data) != header["crc32"]:
            raise CodecError(f"{where} decoded to bytes that fail its CRC-32: the numeric path differs from the "
                             "encoder's (another thread count, BLAS or kernel); nothing was written")
        return data

    # ------------------------------------------------------------------ pieces
    def _context(self, ids: np.ndarray, segment: Segment) -> int:
        """A segment's first input: end-of-text for a fresh one, else the token before it."""
        return self.eot if segment.fresh else int(ids[segment.start - 1])

    def _side(self, ids: np.ndarray, batch: list[Segment]) -> tuple[Tensor | None, bytes]:
        """The batch's side information as the decoder will read it back, and its bytes. The
        rows are laid out as the model was trained: left-padded for ``documents``."""
        if self.side_format is None:
            return None, b""
        B, T = len(batch), self.n_ctx
        left = self.segments == "documents"
        inputs = torch.full((B, T), self.pad, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for r, seg in enumerate(batch):
            o = T - seg.length if left else 0
            tokens = torch.from_numpy(ids[seg.start : seg.start + seg.length])
            labels[r, o : o + seg.length] = tokens
            inputs[r, o] = self._context(ids, seg)
            inputs[r, o + 1 : o + seg.length] = tokens[:-1]
            mask[r, o : o + seg.length] = 1
        vector = self.model.side_information({"input_ids": inputs.to(self.device), "labels": labels.to(self.device),
                                              "attention_mask": mask.to(self.device)})
        packed = self.side_format.pack(vector)
        return self.side_format.unpack(packed, vector.shape[-1]).to(self.device), packed

    def _incremental(self, side: Tensor | None, batch_size: int, path: str) -> Any:
        if path == "window":
            return None
        decoder = self.model.incremental_decoder(side, batch_size)
        if decoder is None:
            raise CodecError(f"path=cached: model family {getattr(self.model, 'family', '?')} has no incremental "
                             "decoder; use path=window or path=auto")
        return decoder

    def _bar(self, what: str, total: int) -> Any:
        return tqdm(total=total, desc=what, unit="tok", unit_scale=True, disable=not self.progress or None,
                    leave=False)


class BatchRun:
    """One batch of segments as both sides run it: where each row's tokens sit in the window,
    and the next-token logits at step ``t``.

    Rows are right-aligned (tokens from position 0) except on the window path with
    ``documents`` segments, where they are left-padded as the model was trained (a mixer's
    weights are position-specific; Llama stacks count positions from the first token, so the
    cached path needs no padding). The encoder :meth:`fill` s every input at once and runs the
    window once; the decoder adds each step's tokens with :meth:`decoded` and reruns it."""

    def __init__(self, codec: ModelCodec, batch: list[Segment], contexts: list[int], side: Tensor | None,
                 path: str) -> None:
        B, T = len(batch), codec.n_ctx
        self.codec, self.side, self.path = codec, side, path
        lengths = np.array([s.length for s in batch])
        left = path == "window" and codec.segments == "documents"
        self.offsets = (T - lengths) if left else np.zeros(B, dtype=np.int64)
        self.inputs = torch.full((B, T), codec.pad, dtype=torch.long)
        self.inputs[torch.arange(B), torch.as_tensor(self.offsets)] = torch.tensor(contexts)
        self.inputs = self.inputs.to(codec.device)
        self.mask = None
        if left:
            self.mask = (torch.arange(T)[None, :] >= torch.as_tensor(self.offsets)[:, None]).long().to(codec.device)
        self.decoder = codec._incremental(side, B, path)
        self._window: Tensor | None = None

    def fill(self, rest: list[np.ndarray]) -> None:
        """The encoder's inputs after each row's context: its segment but the last token."""
        for r, tokens in enumerate(rest):
            o = int(self.offsets[r]) + 1
            self.inputs[r, o : o + len(tokens)] = torch.as_tensor(tokens, device=self.inputs.device)
        if self.decoder is None:
            self._window = self.codec.model.predict(self.inputs, self.side, self.mask)

    def logits(self, t: int) -> Tensor:
        """Logits ``[B, V]`` predicting each row's token ``t``."""
        if self.decoder is not None:
            return self.decoder.step(self.inputs[:, t])
        window = self._window if self._window is not None else self.codec.model.predict(self.inputs, self.side, self.mask)
        rows = torch.arange(window.shape[0], device=window.device)
        where = np.minimum(self.offsets + t, window.shape[1] - 1)  # rows already done: any position
        return window[rows, torch.as_tensor(where, device=window.device)]

    def decoded(self, rows: np.ndarray, t: int, symbols: np.ndarray) -> None:
        """The decoder learnt token ``t`` of ``rows``: it is their next input."""
        where = self.offsets[rows] + t + 1
        keep = where < self.inputs.shape[1]
        if keep.any():
            self.inputs[torch.as_tensor(rows[keep]), torch.as_tensor(where[keep])] = torch.as_tensor(
                symbols[keep], device=self.inputs.device)


def _lengths_model(max_tokens: int) -> Any:
    """Document lengths are coded uniformly over ``0..max_tokens`` (``max_tokens`` is in the
    header): about ``log2(max_tokens + 1)`` bits a document, which a file that separates its
    documents pays and a split scored document by document gets for free."""
    import constriction

    return constriction.stream.model.Uniform(int(max_tokens) + 1)


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
