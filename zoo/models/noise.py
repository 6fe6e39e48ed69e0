"""Uniform noise injection: quantization-aware training without a quantizer.

Rounding a number to a grid of spacing ``2q`` moves it by at most ``q``; for a number that
is not aligned with the grid the error is close to uniform on ``[-q, q]``. Adding centred
``U(-q, q)`` noise while training therefore teaches a model to tolerate being stored on such
a grid, with an ordinary (non-zero) gradient everywhere, which rounding does not have. The
default ``q = 2⁻⁴`` is half the spacing of float8 E4M3 numbers in ``[1, 2)`` (3 mantissa
bits); the EACD adds it to its compressed vector (:mod:`zoo.models.eacd`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: half the spacing of E4M3 in [1, 2): the noise the paper trains with
DEFAULT_Q = 2.0**-4


class UniformNoise(nn.Module):
    """``x + U(-q, q)`` in training mode, ``x`` unchanged in evaluation mode.

    Args:
        q: half-width of the noise; ``0`` disables it.
    """

    def __init__(self, q: float = DEFAULT_Q) -> None:
        super().__init__()
        if q < 0:
            raise ValueError(f"noise q must be >= 0, got {q}")
        self.q = float(q)

    def extra_repr(self) -> str:
        return f"q={self.q:g}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.q == 0.0:
            return x
        return x + torch.empty_like(x).uniform_(-self.q, self.q)
