"""Flatness of a trained model's loss: ``python -m zoo.flatness checkpoint=NAME_OR_PATH [key=value ...]``.

On a fixed set of batches of a split (the training split by default) it measures the
model's mean cross-entropy loss ``L`` and prints (docs/flatness.md says what each means):

* the **top-k Hessian eigenvalues** of ``L`` (Lanczos over Hessian-vector products),
* the **trace** of the Hessian (Hutch++ or Hutchinson) with its standard error,
* the **effective dimension** ``Σ λ/(λ+z)`` from the top-k (a lower bound) and, with
  ``density_runs>0``, from a stochastic-Lanczos spectral density over all parameters,
* the **local learning coefficient** λ̂ by SGLD around the weights, with its chains' spread.

Options (``key=value``):
  checkpoint=NAME|PATH  a published model (python -m zoo.models), model folder or .ckpt (required)
  data=NAME             a data group of recipes/data (default: the model's training data)
  data.KEY=VALUE        override a data option (e.g. data.eval_batch_size=4: rows per batch)
  split=train           train | val | test
  batches=2             batches the loss is averaged over (the same batches for every measure)
  batch_size=8          rows per batch
  top_k=5               Hessian eigenvalues to report
  lanczos_steps=0       Lanczos iterations (0: max(2 top_k, top_k + 10))
  trace_samples=30      Hessian-vector products of the trace estimate
  trace_method=hutch++  hutch++ | hutchinson
  density_runs=0        spectral-density runs (0: none), each of density_steps products
  density_steps=30
  z=0                   scale of the effective dimension (0: λ_max / 100)
  llc_steps=100         SGLD steps per chain (0: no λ̂)
  llc_chains=2          SGLD chains
  llc_lr=1e-4           SGLD step size ε
  llc_gamma=100         localisation strength γ
  llc_nbeta=0           inverse temperature nβ (0: devinterp's default, m / log m, m tokens per batch)
  seed=0
  json=PATH             also write the result as JSON (json=- prints JSON only)
  out=DIR               write DIR/flatness.png (top eigenvalues, spectral density, λ̂ over SGLD steps)
                        and DIR/flatness.json

Errors are one line (``error: ...``) with exit status 2. Needs about 2 forward+backward passes
per product per batch: on 2 CPU cores a 2M-parameter model on 2 batches of 8 x 256 tokens
takes ~10 s per product.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo.cli import choice, emit, json_target, key_values, number, run_command, writable_folder
from zoo.errors import ZooError, unknown
from zoo.schema import SPLITS

OPTIONS = ("checkpoint", "data", "split", "batches", "batch_size", "top_k", "lanczos_steps", "trace_samples",
           "trace_method", "density_runs", "density_steps", "z", "llc_steps", "llc_chains", "llc_lr", "llc_gamma",
           "llc_nbeta", "seed", "json", "out")
TRACE_METHODS = ("hutch++", "hutchinson")


def parse(argv: Sequence[str]) -> dict[str, Any]:
    """Every option checked (before the model loads): a one-line :class:`ZooError` otherwise."""
    from omegaconf import OmegaConf

    from zoo.recipes import list_group

    raw = key_values(argv, OPTIONS)
    if not raw.get("checkpoint"):
        raise ZooError("checkpoint= is required (a published model name, a model folder or a .ckpt)")
    if "data" in raw and raw["data"] not in list_group("data"):
        raise unknown("data option", raw["data"], list_group("data"))
    overrides = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in argv if a.startswith("data.")]))
    opts: dict[str, Any] = {
        "checkpoint": raw["checkpoint"], "group": raw.get("data"), "overrides": (overrides or {}).get("data"),
        "split": choice(raw, "split", "train", SPLITS),
        "batches": number(raw, "batches", 2, minimum=1), "batch_size": number(raw, "batch_size", 8, minimum=1),
        "top_k": number(raw, "top_k", 5, minimum=1), "lanczos_steps": number(raw, "lanczos_steps", 0, minimum=0),
        "trace_samples": number(raw, "trace_samples", 30, minimum=1),
        "trace_method": choice(raw, "trace_method", "hutch++", TRACE_METHODS),
        "density_runs": number(raw, "density_runs", 0, minimum=0),
        "density_steps": number(raw, "density_steps", 30, minimum=1),
        "z": number(raw, "z", 0.0, float, minimum=0), "llc_steps": number(raw, "llc_steps", 100, minimum=0),
        "llc_chains": number(raw, "llc_chains", 2, minimum=1), "llc_lr": number(raw, "llc_lr", 1e-4, float, minimum=0),
        "llc_gamma": number(raw, "llc_gamma", 100.0, float, minimum=0),
        "llc_nbeta": number(raw, "llc_nbeta", 0.0, float, minimum=0), "seed": number(raw, "seed", 0, minimum=0),
        "json": json_target(raw), "out": writable_folder(raw, "out"),
    }
    if opts["llc_steps"] and opts["llc_lr"] == 0:
        raise ZooError("llc_lr must be a number > 0 (the SGLD step size); got 0")
    if opts["top_k"] > opts["lanczos_steps"] > 0:
        raise ZooError(f"lanczos_steps={opts['lanczos_steps']} must be at least top_k={opts['top_k']} (or 0: automatic)")
    return opts


def load(opts: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """``(model in float32 eval mode, the fixed batches, a description)``."""
    import torch

    from zoo.evaluate import prepare
    from zoo.flatness.curvature import fixed_batches
    from zoo.hub.registry import resolve

    ref = str(opts["checkpoint"])
    folder = None if ref.endswith(".ckpt") else resolve(ref)
    overrides = dict(opts["overrides"] or {})
    overrides["eval_batch_size"] = opts["batch_size"]
    task, dm = prepare(folder or ref, opts["split"], group=opts["group"], overrides=overrides)
    dm.setup()
    if opts["split"] == "train" and dm.streaming:
        raise ZooError("data.streaming=true: the training stream is not cached; give split=val or split=test")
    torch.manual_seed(opts["seed"])
    batches = fixed_batches(dm.eval_dataloader(opts["split"]), opts["batches"])
    if not batches:
        raise ZooError(f"split={opts['split']} holds no batch")
    model = task.model.float().eval()
    about = {"checkpoint": ref, "split": opts["split"], "n_ctx": dm.n_ctx, "batch_size": opts["batch_size"]}
    return model, batches, about


def run(opts: dict[str, Any]) -> dict[str, Any]:
    """Load, measure the curvature and λ̂ (with progress bars), write the PNG; the result."""
    from tqdm.auto import tqdm

    from zoo.flatness.curvature import measure
    from zoo.flatness.learning_coefficient import estimate_llc

    model, batches, about = load(opts)
    k = opts["top_k"]
    steps = opts["lanczos_steps"] or max(2 * k, k + 10)
    trace_products = opts["trace_samples"] if opts["trace_method"] == "hutchinson" else 3 * max(1, opts["trace_samples"] // 3)
    total = steps + trace_products + opts["density_runs"] * opts["density_steps"]
    with tqdm(total=total, desc="Hessian-vector products", unit="hvp") as bar:
        curv = measure(model, batches, top_k=k, lanczos_steps=opts["lanczos_steps"] or None,
                       trace_samples=opts["trace_samples"], trace_method=opts["trace_method"],
                       density_runs=opts["density_runs"], density_steps=opts["density_steps"],
                       z=opts["z"] or None, seed=opts["seed"], progress=bar)
    result: dict[str, Any] = {**about, "curvature": curv.as_dict(), "llc": None}
    if opts["llc_steps"]:
        with tqdm(total=opts["llc_steps"] * opts["llc_chains"], desc="SGLD steps (λ̂)", unit="step") as bar:
            try:
                llc = estimate_llc(model, batches, steps=opts["llc_steps"], chains=opts["llc_chains"],
                                   lr=opts["llc_lr"], localization=opts["llc_gamma"],
                                   n_beta=opts["llc_nbeta"] or None, seed=opts["seed"], progress=bar)
            except ValueError as e:  # every chain diverged: the user's step size
                raise ZooError(f"llc_lr={opts['llc_lr']}: {e}") from None
        result["llc"] = llc.as_dict()
    if opts["out"] is not None:
        out = Path(opts["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "flatness.json").write_text(json.dumps(result, indent=1))
        result["png"] = str(plot(result, out / "flatness.png"))
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    """Top eigenvalues (and the spectral density), and λ̂ over the SGLD steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curv, llc = result["curvature"], result.get("llc")
    panels = 1 + bool(curv["density"]) + bool(llc)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), squeeze=False)
    ax = list(axes[0])
    top = curv["top_eigenvalues"]
    ax[0].bar(range(1, len(top) + 1), top)
    ax[0].set(xlabel="rank", ylabel="eigenvalue", title=f"top Hessian eigenvalues (trace {curv['trace']:.3g})")
    i = 1
    if curv["density"]:
        ax[i].semilogy(curv["density_grid"], [max(d, 1e-12) for d in curv["density"]])
        ax[i].set(xlabel="eigenvalue", ylabel="density", title="spectral density (SLQ)")
        i += 1
    if llc:
        for chain in llc["loss_trace"]:
            run_mean = [llc["n_beta"] * (sum(chain[: t + 1]) / (t + 1) - llc["init_loss"]) for t in range(len(chain))]
            ax[i].plot(run_mean, alpha=0.5)
        ax[i].plot(llc["loss_trace_mean"], "k-", label="mean over chains")
        ax[i].set(xlabel="SGLD step", ylabel="λ̂ so far", title=f"λ̂ = {llc['llc_mean']:.2f} ± {llc['llc_std']:.2f}")
        ax[i].legend()
    fig.suptitle(str(result.get("checkpoint")))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_result(r: dict[str, Any]) -> str:
    c, llc = r["curvature"], r.get("llc")
    lines = [f"{r['checkpoint']} on {r['split']}: {c['batches']} batch(es) of {r['batch_size']} x {r['n_ctx']} tokens, "
             f"{c['parameters']:,} parameters, loss {c['loss']:.4f} nats/token, {c['hvps']} Hessian-vector products",
             "", f"{'measure':34s} value", "-" * 50]
    for i, (lam, res) in enumerate(zip(c["top_eigenvalues"], c["top_residuals"], strict=True), 1):
        lines.append(f"{f'eigenvalue {i}':34s} {lam:.5g}  (residual {res:.2g})")
    lines.append(f"{'trace (' + c['trace_method'] + ')':34s} {c['trace']:.5g} ± {c['trace_stderr']:.2g}")
    lines.append(f"{'effective dimension, top-k':34s} {c['effective_dimension_top_k']:.3f}  (z = {c['z']:.3g})")
    if c.get("effective_dimension_density") is not None:
        lines.append(f"{'effective dimension, density':34s} {c['effective_dimension_density']:.3f}")
    if llc:
        lines.append(f"{'local learning coefficient λ̂':34s} {llc['llc_mean']:.4g} ± {llc['llc_std']:.2g}  "
                     f"({llc['chains'] - llc['diverged_chains']} chain(s) x {llc['steps']} steps, nβ {llc['n_beta']:.4g}, "
                     f"ε {llc['lr']:.2g}, γ {llc['localization']:.3g}; per chain "
                     + ", ".join(f"{x:.4g}" for x in llc["llc_per_chain"]) + ")")
    if r.get("png"):
        lines.append(f"plot: {r['png']}")
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    opts = parse(argv)
    result = run(opts)
    emit(result, format_result(result), opts["json"])


def main(argv: Sequence[str] | None = None) -> None:
    run_command(_main, __doc__, argv)


if __name__ == "__main__":
    main()
