"""Stochastic gradient Langevin dynamics as a training optimiser (``optim.name=sgld`` / ``psgld``).

SGLD (Welling & Teh 2011) is gradient descent plus Gaussian noise scaled so that, at a small
step size, the weights sample the Gibbs distribution ``exp(-L(θ) / T)`` instead of settling
at one minimum::

    θ ← (1 − η·wd) θ − η ∇L(θ) + √(2 η T) · ξ,     ξ ~ N(0, I)

(``T = 1/β`` the temperature). Noise of that size keeps the weights out of sharp minima,
whose basins hold little probability mass at temperature ``T``: a bias towards flat basins.
``T = 0`` is plain SGD.

``psgld`` is preconditioned SGLD (Li et al. 2016): an RMSprop diagonal ``G = 1/(ε + √v)``,
``v`` the running mean of squared gradients (decay ``alpha``), scales both the step and the
noise, ``θ ← θ − η G ∇L + √(2 η T G) ξ`` (the small ``Γ`` correction term is dropped, as in
the paper). On a transformer this trains at AdamW-like learning rates where plain SGD needs
far larger ones.

No library in this environment offers it as a training optimiser: devinterp's ``SGLD`` /
``SGMCMC.sgld`` samples a posterior for the learning coefficient (it scales the gradient by
``nβ``, adds a localisation pull and keeps a copy of the initial weights), which is
:mod:`zoo.flatness.learning_coefficient`'s job, not training's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class SGLD(torch.optim.Optimizer):
    """Langevin dynamics: an SGD (or RMSprop-preconditioned) step plus ``√(2 η T)`` Gaussian noise.

    Args:
        params: parameters or parameter groups (each group may set its own ``weight_decay``).
        lr: the step size ``η`` (the schedule scales it; the noise follows the current ``η``).
        temperature: ``T >= 0``; 0 is plain (preconditioned) gradient descent.
        weight_decay: decoupled decay ``θ ← (1 − η·wd) θ`` (as AdamW's; a Gaussian prior, not
            scaled by pSGLD's preconditioner, which would make it far stronger on rarely-updated weights).
        preconditioned: ``True`` for pSGLD (RMSprop diagonal), ``False`` for SGLD.
        alpha, eps: pSGLD's squared-gradient decay and stabiliser.
        generator: the noise's random generator (default: torch's global one, so
            ``seed_everything`` and a checkpoint's RNG state reproduce a run).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, temperature: float = 1e-6,
                 weight_decay: float = 0.0, preconditioned: bool = False, alpha: float = 0.99,
                 eps: float = 1e-8, generator: torch.Generator | None = None) -> None:
        if lr <= 0 or temperature < 0 or weight_decay < 0 or not 0 <= alpha < 1 or eps <= 0:
            raise ValueError(f"SGLD: bad hyper-parameters lr={lr} temperature={temperature} "
                             f"weight_decay={weight_decay} alpha={alpha} eps={eps}")
        super().__init__(params, dict(lr=lr, temperature=temperature, weight_decay=weight_decay,
                                      preconditioned=preconditioned, alpha=alpha, eps=eps))
        self.generator = generator

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, temp, wd = group["lr"], group["temperature"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if wd:
                    p.mul_(1 - lr * wd)
                if group["preconditioned"]:
                    state = self.state[p]
                    if "square_avg" not in state:
                        state["square_avg"] = torch.zeros_like(p)
                    v = state["square_avg"]
                    v.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                    precond = 1.0 / (v.sqrt() + group["eps"])
                    p.addcmul_(precond, grad, value=-lr)
                    if temp > 0:
                        p.add_(self._noise(p) * (2 * lr * temp * precond).sqrt())
                else:
                    p.add_(grad, alpha=-lr)
                    if temp > 0:
                        p.add_(self._noise(p), alpha=math.sqrt(2 * lr * temp))
        return loss

    def _noise(self, p: torch.Tensor) -> torch.Tensor:
        return torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=self.generator)
