"""FLOPs of a training step, counted from the model's layers (the numerator of MFU).

Per input token, a forward pass costs ``2 N_mm`` FLOPs for the matmul weights ``N_mm`` a
token passes through (a mixture of experts: its router and ``k`` experts) plus the token
mixing: attention ``4 T d`` (scores and weighted values over ``T`` positions), the masked
mixer ``2 T d``. Training is ``3x`` the forward (the backward costs twice the forward).
Families whose positions differ from their inputs (the EACD) override
:meth:`zoo.models.LanguageModel.forward_flops_per_token`; ``tests/test_throughput.py``
checks the formula against PyTorch's own count of a real step.
"""

from __future__ import annotations

from torch import nn


def matmul_weights(module: nn.Module) -> int:
    """``N_mm``: weights of the ``nn.Linear`` s one token passes through (MoE: router + k experts)."""
    from zoo.models.moe import MoEFeedForward

    total, inside_moe = 0, set()
    for m in module.modules():
        if isinstance(m, MoEFeedForward):
            expert = sum(x.weight.numel() for x in m.experts[0].modules() if isinstance(x, nn.Linear))
            total += m.router.weight.numel() + m.k * expert
            inside_moe.update(id(x) for x in m.modules())
    for m in module.modules():
        if isinstance(m, nn.Linear) and id(m) not in inside_moe:
            total += m.weight.numel()
    return total


def mixing_flops(module: nn.Module, positions: int) -> int:
    """Forward FLOPs per position of the token-mixing layers: attention 4·T·d, masked mixer 2·T·d."""
    from zoo.models.blocks import MaskedTokenMixer
    from zoo.models.llama_stack import Attention

    flops = 0
    for m in module.modules():
        if isinstance(m, Attention):
            flops += 4 * positions * m.n_heads * m.head_dim
        elif isinstance(m, MaskedTokenMixer):
            flops += 2 * positions * m.d
    return flops


def forward_flops(module: nn.Module, positions: int) -> float:
    """Forward FLOPs per position of ``module`` run over ``positions`` positions."""
    return float(2 * matmul_weights(module) + mixing_flops(module, positions))


def train_flops_per_token(model: nn.Module, n_ctx: int) -> float:
    """Training FLOPs per input token of a zoo model (``3 x`` its forward FLOPs)."""
    # the zoo model itself, or the one an adapter wraps (any LanguageModel has the method)
    inner = next((m for m in model.modules() if hasattr(m, "forward_flops_per_token")), None)
    forward = inner.forward_flops_per_token(n_ctx) if inner is not None else None
    return 3.0 * (forward if forward is not None else forward_flops(model, n_ctx))
