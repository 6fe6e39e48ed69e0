"""Number formats the encoder-augmented decoder's vector is stored in, and their bit cost.

``fp32``, ``bf16``, ``fp16``, ``fp8_e4m3``, ``fp8_e5m2``, ``int8`` or ``int4`` (the two
integer formats: symmetric absmax per vector, levels -127..127 or -7..7, with a float16
scale). Float casts saturate at the format's largest finite value (as a stored vector would)
instead of overflowing to inf/NaN. A vector of ``d`` numbers costs ``d × bits + overhead``
bits (:meth:`VectorFormat.bits_per_vector`; the integer formats pay 16 bits for their scale):
the side information an honest bits-per-byte charges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.errors import unknown


@dataclass(frozen=True)
class VectorFormat:
    """A number format the compressed vector is stored in.

    Attributes:
        name: the format's name in modes and configs.
        bits: bits per number.
        overhead_bits: bits per vector besides the numbers (an integer format's float16 scale).
        dtype: the torch dtype a float format rounds through (``None`` for the integer formats).
        levels: an integer format's largest level (127 for ``int8``, 7 for ``int4``); the
            numbers are stored as ``round(x / scale)`` in ``-levels..levels``.
    """

    name: str
    bits: int
    overhead_bits: int = 0
    dtype: torch.dtype | None = None
    levels: int | None = None

    def bits_per_vector(self, d: int) -> int:
        """Bits that store one vector of ``d`` numbers in this format."""
        return d * self.bits + self.overhead_bits

    def bytes_per_vector(self, d: int) -> int:
        """Bytes that store one vector of ``d`` numbers (:meth:`pack`): its bits rounded up."""
        return -(-self.bits_per_vector(d) // 8)

    def pack(self, x: Tensor) -> bytes:
        """Vectors ``x`` ``[B, d]`` ALREADY in this format (:meth:`round_trip`'s output) as
        bytes, :meth:`bytes_per_vector` per row: what a compressed file stores."""
        x = x.detach().float().cpu()
        if self.levels is None:
            return x.to(self.dtype or torch.float32).contiguous().view(torch.uint8).numpy().tobytes()
        scale = self._scale(x).to(torch.float16)
        q = (x / scale.float()).round().clamp(-self.levels, self.levels).to(torch.int8)
        if self.bits == 4:  # two numbers a byte, offset to 0..14, low nibble first
            q = torch.nn.functional.pad((q + self.levels).to(torch.uint8), (0, q.shape[-1] % 2))
            q = q[:, 0::2] | (q[:, 1::2] << 4)
        return torch.cat([scale.view(torch.uint8), q.view(torch.uint8)], dim=-1).numpy().tobytes()

    def unpack(self, data: bytes, d: int) -> Tensor:
        """:meth:`pack`'s bytes back as float32 vectors ``[B, d]``."""
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, self.bytes_per_vector(d))
        if self.levels is None:
            return raw.contiguous().view(self.dtype or torch.float32).float()
        scale = raw[:, :2].contiguous().view(torch.float16).float()
        q = raw[:, 2:]
        if self.bits == 4:
            q = torch.stack([q & 15, q >> 4], dim=-1).flatten(1)[:, :d].float() - self.levels
        else:
            q = q.contiguous().view(torch.int8).float()
        return q * scale

    def round_trip(self, x: Tensor) -> Tensor:
        """``x`` stored in this format and read back (same dtype and shape as ``x``)."""
        if self.name == "fp32":
            return x
        if self.dtype is not None:  # float formats: saturate, then round to nearest
            top = torch.finfo(self.dtype).max
            return x.clamp(-top, top).to(self.dtype).to(x.dtype)
        # integer formats: one symmetric absmax scale per vector (last dim), stored as float16
        scale = self._scale(x.detach()).to(torch.float16).to(x.dtype)
        return (x / scale).round().clamp(-self.levels, self.levels) * scale

    def _scale(self, x: Tensor) -> Tensor:
        """An integer format's scale per vector: its absmax over ``levels`` (at least 2^-14,
        float16's smallest normal, so an all-zero vector still has one)."""
        return (x.abs().amax(-1, keepdim=True) / self.levels).clamp(min=2.0**-14)


VECTOR_FORMATS: dict[str, VectorFormat] = {
    f.name: f
    for f in (
        VectorFormat("fp32", 32),
        VectorFormat("bf16", 16, dtype=torch.bfloat16),
        VectorFormat("fp16", 16, dtype=torch.float16),
        VectorFormat("fp8_e4m3", 8, dtype=torch.float8_e4m3fn),
        VectorFormat("fp8_e5m2", 8, dtype=torch.float8_e5m2),
        VectorFormat("int8", 8, overhead_bits=16, levels=127),
        VectorFormat("int4", 4, overhead_bits=16, levels=7),
    )
}

def get_vector_format(name: str) -> VectorFormat:
    """The :class:`VectorFormat` called ``name`` (a one-line error listing the others)."""
    if name not in VECTOR_FORMATS:
        raise unknown("vector format", name, VECTOR_FORMATS)
    return VECTOR_FORMATS[name]


def store_vector(x: Tensor, fmt: VectorFormat) -> Tensor:
    """``x`` rounded through ``fmt``, with a straight-through gradient (identity backward),
    so a model can also *train* with its vector in a format."""
    if fmt.name == "fp32":
        return x
    stored = fmt.round_trip(x)
    return x + (stored - x).detach() if x.requires_grad else stored
