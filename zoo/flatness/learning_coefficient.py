"""The local learning coefficient λ̂ of trained weights, by SGLD (singular learning theory).

For a loss ``L_n`` (mean over ``n`` samples) with a local minimum ``w*``, the learning
coefficient ``λ`` is the exponent in the volume of the near-optimal set,
``V(ε) = vol{w near w* : L(w) − L(w*) < ε} ∝ ε^λ`` (up to log factors). A regular model with
``d`` parameters has ``λ = d/2``; a singular one (a neural network: symmetries, dead units,
degenerate directions) has less — the "effective number of parameters" that the Bayesian
free energy ``n L_n(w*) + λ log n`` charges. Lower ``λ`` is a flatter, simpler basin in a
sense the Hessian cannot see (it also counts higher-order degeneracy).

The estimator (Lau et al. 2023, as devinterp 2.0.1 computes it in
``devinterp.slt.llc.compute_llc``)::

    λ̂ = nβ · ( E_w[L_m(w)] − L_m(w*) )

the expectation over the localised tempered posterior ``∝ exp(−nβ L(w) − γ/2 ‖w − w*‖²)``,
sampled by SGLD — here devinterp's own sampler kernel, ``devinterp.optim.SGMCMC.sgld`` (step
``Δw = −ε/2 (nβ ∇L + γ (w − w*)) + N(0, ε)``) — and ``E`` the mean of the per-step batch losses
of a chain, burn-in included unless ``burnin`` drops it (devinterp keeps it). ``nβ`` defaults
to devinterp's ``default_nbeta``: ``m / log m``, ``m`` the samples per batch (here: scored
tokens, since the loss is a per-token mean).

Why not ``devinterp.slt.llc.llc`` itself: its sampling loop (``devinterp.slt.sampling.sample``)
takes a HuggingFace ``Dataset`` of ``input_ids`` and a per-token loss of ``model(input_ids)``,
and writes its draws to a zarr store. Zoo models take a DataModule batch (``labels`` for
left-padded layouts, an EACD's side information) through ``forward_batch``, so this module
runs the same estimator over zoo batches, with devinterp's SGLD step, and returns the
per-chain traces.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from zoo.flatness.curvature import Batch, double_backward_attention, lm_loss


def default_nbeta(samples_per_batch: int) -> float:
    """devinterp's default inverse temperature, ``m / log m`` (``devinterp.utils.default_nbeta``)."""
    from devinterp.utils import default_nbeta as devinterp_nbeta

    return float(devinterp_nbeta(int(samples_per_batch)))


def scored_tokens(batch: Batch) -> int:
    """Tokens a zoo batch scores (labels that are not ignored)."""
    from zoo.data.layouts import IGNORE_INDEX

    return int((batch["labels"] != IGNORE_INDEX).sum())


@dataclass
class LearningCoefficient:
    """λ̂ with its chain statistics (JSON-ready via :meth:`as_dict`)."""

    llc_mean: float
    llc_std: float
    llc_per_chain: list[float]
    init_loss: float
    n_beta: float
    lr: float
    localization: float
    steps: int
    burnin: int
    chains: int
    loss_trace: list[list[float]] = field(default_factory=list)  # per chain, per step
    #: per step, the running λ̂ (mean over chains of nβ (mean loss so far − init loss))
    loss_trace_mean: list[float] = field(default_factory=list)
    diverged_chains: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_llc(model: nn.Module, batches: Sequence[Batch], *, steps: int = 100, chains: int = 2,
                 lr: float = 1e-4, localization: float = 100.0, n_beta: float | None = None, burnin: int = 0,
                 seed: int = 0, loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = lm_loss,
                 samples_per_batch: int | None = None, progress: Any = None) -> LearningCoefficient:
    """λ̂ of ``model`` at its current weights over ``batches`` (cycled, one per SGLD step).

    ``samples_per_batch`` sets the default ``nβ`` (``m / log m``); default: the scored tokens
    of the first batch. ``progress``: a tqdm bar advanced once per SGLD step. A chain whose
    loss turns non-finite is dropped (counted in ``diverged_chains``).
    """
    from devinterp.optim import SGMCMC

    if n_beta is None:
        n_beta = default_nbeta(samples_per_batch or scored_tokens(batches[0]))
    model.eval()
    with torch.no_grad(), double_backward_attention():
        init_loss = sum(float(loss_fn(model, b)) for b in batches) / len(batches)
    per_chain, traces, diverged = [], [], 0
    for chain in range(chains):
        sampler_model = copy.deepcopy(model)
        params = [p for p in sampler_model.parameters() if p.requires_grad]
        with warnings.catch_warnings():  # its "nbeta set to 1" advice: nβ is ours to choose
            warnings.simplefilter("ignore")
            opt = SGMCMC.sgld(params, lr=lr, localization=localization, nbeta=n_beta)
        gen = torch.Generator(device=params[0].device).manual_seed(seed * 1000 + chain)
        losses: list[float] = []
        for step in range(steps):
            loss = loss_fn(sampler_model, batches[step % len(batches)])
            if not torch.isfinite(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(noise_generator=gen)
            losses.append(float(loss.detach()))
            if progress is not None:
                progress.update(1)
        if len(losses) < steps:
            diverged += 1
            continue
        traces.append(losses)
        kept = losses[burnin:]
        per_chain.append(n_beta * (sum(kept) / len(kept) - init_loss))
        del sampler_model, opt
    if not per_chain:
        raise ValueError(f"every SGLD chain diverged (lr={lr}, nβ={n_beta:.1f}); lower lr or raise localization")
    mean = sum(per_chain) / len(per_chain)
    std = math.sqrt(sum((x - mean) ** 2 for x in per_chain) / max(len(per_chain) - 1, 1))
    cumulative = torch.tensor(traces, dtype=torch.float64).cumsum(1) / torch.arange(1, steps + 1)
    running = (n_beta * (cumulative - init_loss)).mean(0).tolist()
    return LearningCoefficient(
        llc_mean=mean, llc_std=std, llc_per_chain=per_chain, init_loss=init_loss, n_beta=n_beta, lr=lr,
        localization=localization, steps=steps, burnin=burnin, chains=chains, loss_trace=traces,
        loss_trace_mean=running, diverged_chains=diverged,
    )
