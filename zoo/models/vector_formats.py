"""Number formats the encoder-augmented decoder's vector is stored in, and their bit cost.

``fp32``, ``bf16``, ``fp16``, ``fp8_e4m3``, ``fp8_e5m2`` or ``int8`` (symmetric absmax per
vector with a float16 scale). Float casts saturate at the format's largest finite value (as
a stored vector would) instead of overflowing to inf/NaN. A vector of ``d`` numbers costs
``d × bits + overhead`` bits (:meth:`VectorFormat.bits_per_vector`; ``int8`` pays 16 bits for
its scale): the side information an honest bits-per-byte charges.
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
        overhead_bits: bits per vector besides the numbers (``int8``'s float16 scale).
        dtype: the torch dtype a float format rounds through (``None`` for ``int8``).
    """

    name: str
    bits: int
    overhead_bits: int = 0
    dtype: torch.dtype | None = None

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
        if self.name == "int8":
            scale = (x.abs().amax(-1, keepdim=True) / 127).clamp(min=2.0**-14).to(torch.float16)
            q = (x / scale.float()).round().clamp(-127, 127).to(torch.int8)
            rows = torch.cat([scale.view(torch.uint8), q.view(torch.uint8)], dim=-1)
        else:
            rows = x.to(self.dtype or torch.float32).contiguous().view(torch.uint8)
        return rows.numpy().tobytes()

    def unpack(self, data: bytes, d: int) -> Tensor:
        """:meth:`pack`'s bytes back as float32 vectors ``[B, d]``."""
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, self.bytes_per_vector(d))
        if self.name == "int8":
            scale = raw[:, :2].contiguous().view(torch.float16).float()
            return raw[:, 2:].contiguous().view(torch.int8).float() * scale
        return raw.contiguous().view(self.dtype or torch.float32).float()

    def round_trip(self, x: Tensor) -> Tensor:
        """``x`` stored in this format and read back (same dtype and shape as ``x``)."""
        if self.name == "fp32":
            return x
        if self.dtype is not None:  # float formats: saturate, then round to nearest
            top = torch.finfo(self.dtype).max
            return x.clamp(-top, top).to(self.dtype).to(x.dtype)
        # int8: one symmetric absmax scale per vector (last dim), itself stored as float16
        scale = (x.detach().abs().amax(-1, keepdim=True) / 127).clamp(min=2.0**-14)
        scale = scale.to(torch.float16).to(x.dtype)
        return (x / scale).round().clamp(-127, 127) * scale


VECTOR_FORMATS: dict[str, VectorFormat] = {
    f.name: f
    for f in (
        VectorFormat("fp32", 32),
        VectorFormat("bf16", 16, dtype=torch.bfloat16),
        VectorFormat("fp16", 16, dtype=torch.float16),
        VectorFormat("fp8_e4m3", 8, dtype=torch.float8_e4m3fn),
        VectorFormat("fp8_e5m2", 8, dtype=torch.float8_e5m2),
        VectorFormat("int8", 8, overhead_bits=16),
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
