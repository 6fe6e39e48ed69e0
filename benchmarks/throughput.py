"""Training and evaluation throughput of every family, side by side with plain PyTorch and
with the machine's own arithmetic ceiling.

For each family (causal transformer ``llama``, masked mixer ``mixer``, encoder-augmented
decoder ``eacd`` with Llama encoder and decoder, and the Llama ``moe``) at two sizes
(d=128 x 4 layers and d=256 x 6 layers; n_ctx 256, batch 8, the quickstart's 4k BPE on the
embedded edu corpus, packed windows), in ONE run on one machine, it measures:

* **training tokens/s** through :class:`zoo.lit.language_model.LanguageModelTask` and a
  Lightning ``Trainer`` set up as ``zoo.fit`` sets it up (the same callbacks: non-finite
  guard, RNG state, checkpoint callbacks, throughput and learning-rate monitors, a CSV
  logger every 10 steps; gradient clipping 1.0 as in ``recipes/trainer/cpu.yaml``; no
  progress bar), and through a minimal hand-written loop over the SAME ``nn.Module`` with
  the same data loader, the same AdamW (the task's parameter groups), the same clipping and
  the same loss (cross-entropy, plus the MoE load-balancing loss). The plain loop is timed
  in two halves, before and after the Lightning run, so a drift in the machine's speed
  affects both sides alike. ``Lightning / plain`` is the framework's overhead.
* **model FLOP utilisation (MFU)**: training FLOPs per token x tokens/s / the fp32
  ``torch.mm`` peak this script measures first (best of several 2048^3 products on CPU,
  8192^3 on CUDA). Training FLOPs per token (3 x forward: forward, and backward = 2 x forward)::

      6 * N_mm  +  12 * L_attn * T * d  +  6 * L_mix * T * d

  ``N_mm``: weights of every ``nn.Linear`` a token passes through (output head included,
  embeddings excluded as lookups; in an MoE layer the router and ``k`` of its experts);
  ``L_attn``: attention layers (``QK^T`` and ``AV``, 2 x 2 x T x d forward, counted over the
  full window as in PaLM's MFU, not halved for causality); ``L_mix``: masked token mixers
  (a dense ``T x T`` by ``T x d`` product per layer, 2 x T x d forward per token: the masked
  upper triangle is multiplied too); ``T`` the positions the stack runs (the EACD's decoder
  runs T + 1 with its vector token, counted per input token). The script also counts the
  FLOPs of one real training step with ``torch.utils.flop_counter.FlopCounterMode``
  (matmuls, convolutions, attention) as a check of the formula (``flops_counted``).
* **evaluation tokens/s** the way ``zoo.evaluate.score`` runs it (a ``Trainer.test`` of the
  task: the output head run chunk by chunk with one pass shared by NLL, BPB and entropy, six
  metrics updated per batch and logged once) vs a bare ``inference_mode`` forward pass that
  returns the logits, over the same batches. ``metrics / bare`` is the median [min–max] of
  the ratio over ``--eval-rounds`` paired rounds, the order alternating each round.
* **data wait**: time spent fetching batches from the ``TextDataModule`` loader (num_workers
  as given, default 0 like the recipes) inside the timed Lightning window, as a fraction of it.
* **peak memory** of training: on CPU the process's peak RSS (``ru_maxrss``, each
  configuration runs in a fresh process) minus its RSS before the model was built; on CUDA
  ``torch.cuda.max_memory_allocated``. Beside it: parameters + gradients + AdamW's two
  moments (4 x 4 bytes per parameter in fp32); the rest is activations, the ``[B, T, V]``
  logits and their gradient, and the allocator's slack.

Writes ``benchmarks/results/throughput.{md,json}`` and prints the table.

    python benchmarks/throughput.py [--steps 15] [--warmup 5] [--device cpu|cuda]
                                    [--families llama,mixer,eacd,moe] [--sizes 128,256] [--compile]

``--compile`` adds, per configuration, the plain loop with ``model.compile()``
(``torch.compile`` of the model, in place, state-dict keys unchanged; its warm-up is
excluded from the rate and reported).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES = ("llama", "mixer", "eacd", "moe")
SIZES = {128: 4, 256: 6}  # d_model -> layers (llama_tiny and llama_small)
LABELS = {"llama": "causal transformer", "mixer": "masked mixer", "eacd": "EACD (Llama enc + dec)",
          "moe": "MoE Llama (4 experts, top-2)"}


def model_config(family: str, d: int) -> dict[str, Any]:
    """The ``model:`` section of each benchmarked configuration."""
    layers = SIZES[d]
    llama = {"family": "llama", "d_model": d, "n_layers": layers, "n_heads": 4}
    if family == "llama":
        return llama
    if family == "mixer":
        return {"family": "mixer", "d_model": d, "n_layers": layers, "kernel": 1, "heads": 1, "tie_embeddings": False}
    if family == "eacd":
        stack = {"kind": "llama", "d_model": d, "n_layers": layers, "n_heads": 4}
        return {"family": "eacd", "compression": 4, "injection": "token", "vector_format": "fp32",
                "encoder": stack, "decoder": dict(stack)}
    if family == "moe":  # as recipes/model/llama_moe_tiny.yaml: k x d_ff = the dense SwiGLU width
        dense = 64 * round(4 * d * 2 / 3 / 64)
        return {**llama, "moe": {"n_experts": 4, "k": 2, "d_ff": dense // 2, "capacity_factor": 1.25,
                                 "jitter": 0.01, "aux_loss_coef": 0.01}}
    raise ValueError(f"unknown family {family!r}; available: {', '.join(FAMILIES)}")


# ----------------------------------------------------------------------------- timing helpers
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype_name: str = "float32", n: int | None = None, reps: int = 10) -> float:
    """Best ``torch.mm`` rate in FLOP/s over ``reps`` products of two n x n matrices."""
    import torch

    dtype = getattr(torch, dtype_name)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class TimedLoader:
    """Wraps a data loader; records the start and duration of every batch fetch."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.fetches: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.fetches.append((t0, time.perf_counter() - t0))
            yield batch

    def wait_between(self, t0: float, t1: float) -> float:
        """Seconds spent fetching batches whose fetch started in ``[t0, t1]``."""
        return sum(d for s, d in self.fetches if t0 <= s <= t1)


def forever(loader):
    """Batches of ``loader``, epoch after epoch."""
    while True:
        yield from loader


# ----------------------------------------------------------------------------- zoo.fit's set-up, shared
def task_optimizer(task):
    """The AdamW of the task's ``configure_optimizers`` (no decay on norms, biases and
    embeddings; the task's lr, betas, eps and weight decay), for a plain loop over ``task.model``."""
    from zoo.lit.language_model import optimizer_class

    o = task.optim
    decay, no_decay = [], []
    for name, p in task.named_parameters():
        (no_decay if p.ndim < 2 or "embed" in name or "norm" in name else decay).append(p)
    return optimizer_class("adamw")([{"params": decay, "weight_decay": o["weight_decay"]},
                                     {"params": no_decay, "weight_decay": 0.0}],
                                    lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])


def plain_step_fn(model, opt):
    """One training step of the plain loop: the task's loss (its chunked cross-entropy,
    :func:`zoo.metrics.token_stats`, plus the model's auxiliary losses), backward, clipping
    at 1.0, AdamW step."""
    import torch

    from zoo.metrics import token_stats
    from zoo.models.base import auxiliary_loss

    def plain_step(batch) -> torch.Tensor:
        logits = model.forward_batch(batch)
        loss = token_stats(logits, batch["labels"], batch["target_bytes"], with_entropy=False).loss
        aux = auxiliary_loss(model)
        if aux is not None:
            loss = loss + aux
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return plain_step


def zoo_fit_trainer(tmp: str | Path, max_steps: int, extra_callbacks=(), accelerator: str = "cpu",
                    precision: str = "32-true", every_n_train_steps: int = 100):
    """A Lightning ``Trainer`` set up as ``zoo.fit`` sets it up, writing under ``tmp``: its
    callbacks (best and step checkpoints, RNG state, save-on-interrupt, non-finite guard,
    learning-rate and throughput monitors), a CSV logger every 10 steps, gradient clipping 1.0
    (``recipes/trainer/cpu.yaml``), no progress bar, no validation; plus ``extra_callbacks``."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from zoo.callbacks import LoggedStepsThroughput, NonFiniteGuard, RNGState, SaveOnInterrupt

    ckpt_dir = Path(tmp) / "checkpoints"
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best-{step}", monitor="val/bpb", mode="min", save_top_k=1),
        ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", save_top_k=0, save_last=False,
                        every_n_train_steps=every_n_train_steps),
        RNGState(), SaveOnInterrupt(ckpt_dir / "last.ckpt"), NonFiniteGuard("stop"),
        LearningRateMonitor(logging_interval="step"),
        LoggedStepsThroughput(batch_size_fn=lambda b: b["input_ids"].shape[0],
                              length_fn=lambda b: b["input_ids"].numel(), steps=20, log_every_n_steps=10),
        *extra_callbacks,
    ]
    return L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_steps=max_steps,
        max_epochs=-1, gradient_clip_val=1.0, log_every_n_steps=10, limit_val_batches=0,
        num_sanity_val_steps=0, logger=CSVLogger(str(tmp), name="csv"), callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp),
        use_distributed_sampler=False,
    )


# ----------------------------------------------------------------------------- one configuration
def run_one(family: str, d: int, args: argparse.Namespace) -> dict[str, Any]:
    """All measurements of one configuration (run in a fresh process: its peak RSS is its own)."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.data.datamodule import TextDataModule
    from zoo.lit.language_model import LanguageModelTask
    from zoo.models.base import count_parameters
    from zoo.models.flops import train_flops_per_token

    device = torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    dm = TextDataModule(sources=[{"name": "edu"}], layout="packed", n_ctx=args.n_ctx, batch_size=args.batch_size,
                        eval_batch_size=args.batch_size, tokenizer={"vocab_size": args.vocab_size},
                        num_workers=args.num_workers, seed=1234)
    dm.prepare_data()
    dm.setup()
    L.seed_everything(0, verbose=False)
    rss_before = rss_bytes()
    optim = {"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"}
    task = LanguageModelTask(model=model_config(family, d), vocab_size=dm.vocab_size, n_ctx=args.n_ctx, optim=optim)
    model = task.model.to(device)
    n_params = count_parameters(model)
    flops_formula = train_flops_per_token(model, args.n_ctx)
    tokens_per_step = args.batch_size * args.n_ctx
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out: dict[str, Any] = {"family": family, "label": LABELS[family], "d_model": d, "n_layers": SIZES[d],
                           "params": n_params, "flops_per_token": flops_formula, "tokens_per_step": tokens_per_step}

    # ---- the plain PyTorch loop: same module, loader, optimizer groups, clipping and loss
    opt = task_optimizer(task)
    train_batches = forever(dm.train_dataloader())
    plain_step = plain_step_fn(model, opt)

    def to_device(batch):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def plain_train(warmup: int, steps: int) -> tuple[float, float]:
        """Seconds for ``steps`` timed steps after ``warmup``, and the seconds of it spent fetching."""
        model.train()
        for _ in range(warmup):
            plain_step(to_device(next(train_batches)))
        sync(device)
        wait, t0 = 0.0, time.perf_counter()
        for _ in range(steps):
            f0 = time.perf_counter()
            batch = next(train_batches)
            wait += time.perf_counter() - f0
            plain_step(to_device(batch))
        sync(device)
        return time.perf_counter() - t0, wait

    # FLOPs of one real training step, counted by PyTorch (a check of the formula)
    counter = FlopCounterMode(display=False)
    batch = to_device(next(train_batches))
    with counter:
        plain_step(batch)
    out["flops_counted"] = counter.get_total_flops() / tokens_per_step

    half = args.steps // 2
    t_a, _ = plain_train(args.warmup, half)

    # ---- Lightning: zoo.fit's Trainer set-up
    class Window(Callback):
        """Wall time of training / test batches ``warmup .. warmup + steps - 1``."""

        def __init__(self) -> None:
            self.t0 = self.t1 = 0.0

        def _start(self, batch_idx: int) -> None:
            if batch_idx == args.warmup:
                sync(device)
                self.t0 = time.perf_counter()

        def _end(self, batch_idx: int) -> None:
            if batch_idx == args.warmup + args.steps - 1:
                sync(device)
                self.t1 = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._start(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._end(batch_idx)

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            self._start(batch_idx)

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self._end(batch_idx)

    precision = "bf16-mixed" if args.precision == "bf16" else "32-true"

    def lightning_train() -> tuple[float, float]:
        """Seconds of the timed steps of a ``Trainer.fit`` set up as zoo.fit sets it up, and
        the fraction of them spent waiting for data."""
        with tempfile.TemporaryDirectory() as tmp:
            window = Window()
            trainer = zoo_fit_trainer(tmp, args.warmup + args.steps, [window], accelerator, precision)
            loader = TimedLoader(dm.train_dataloader())
            trainer.fit(task, train_dataloaders=loader)
        seconds = window.t1 - window.t0
        return seconds, loader.wait_between(window.t0, window.t1) / seconds

    t_lightning, out["data_wait"] = lightning_train()
    t_b, _ = plain_train(2, args.steps - half)
    out["plain_tokens_per_s"] = args.steps * tokens_per_step / (t_a + t_b)
    out["plain_halves_tokens_per_s"] = [half * tokens_per_step / t_a, (args.steps - half) * tokens_per_step / t_b]
    out["lightning_tokens_per_s"] = args.steps * tokens_per_step / t_lightning
    if device.type == "cuda":
        out["peak_memory"] = torch.cuda.max_memory_allocated(device)
    else:
        out["peak_memory"] = peak_rss_bytes() - rss_before
    out["state_memory"] = 16 * n_params  # fp32 weights, gradients, AdamW exp_avg and exp_avg_sq
    # the same Lightning run with optim.fused=true (torch's fused AdamW kernel)
    task.optim["fused"] = True
    t_fused, _ = lightning_train()
    task.optim["fused"] = False
    out["lightning_fused_tokens_per_s"] = args.steps * tokens_per_step / t_fused

    # ---- evaluation: Trainer.test of the task (zoo.evaluate.score's set-up) vs a bare forward,
    # the bare forward timed in two halves around the Trainer.test (as the plain training loop)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else torch.autocast(
        device.type, enabled=False)

    def bare_eval(warmup: int, steps: int) -> float:
        model.eval()
        batches = iter(dm.eval_dataloader("val"))
        with torch.inference_mode(), ctx:
            for _ in range(warmup):
                task(to_device(next(batches)))
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                task(to_device(next(batches)))
            sync(device)
        return time.perf_counter() - t0

    def metrics_eval() -> float:
        """Seconds of the timed batches of a ``Trainer.test`` of the task (every metric)."""
        window = Window()
        eval_trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                                 enable_checkpointing=False, limit_test_batches=args.warmup + args.steps,
                                 enable_model_summary=False, enable_progress_bar=False, callbacks=[window])
        eval_trainer.test(task, dataloaders=dm.eval_dataloader("val"), verbose=False)
        return window.t1 - window.t0

    # paired rounds, the order alternating: this machine's speed wanders within a minute, so
    # the ratio is the median of per-round ratios, not a ratio of two separate medians
    task.report_stages = ["report_val"]
    bare_s, metrics_s = [], []
    for r in range(args.eval_rounds):
        if r % 2 == 0:
            bare_s.append(bare_eval(args.warmup, args.steps))
            metrics_s.append(metrics_eval())
        else:
            metrics_s.append(metrics_eval())
            bare_s.append(bare_eval(args.warmup, args.steps))
    ratios = [b / m for b, m in zip(bare_s, metrics_s, strict=True)]
    out["eval_bare_tokens_per_s"] = args.steps * tokens_per_step / statistics.median(bare_s)
    out["eval_metrics_tokens_per_s"] = args.steps * tokens_per_step / statistics.median(metrics_s)
    out["eval_metrics_over_bare"] = statistics.median(ratios)
    out["eval_metrics_over_bare_rounds"] = ratios

    # ---- optional: torch.compile, plain loop (warm-up time reported separately)
    if args.compile:
        model.train()
        model.compile()
        t0 = time.perf_counter()
        plain_step(to_device(next(train_batches)))
        plain_step(to_device(next(train_batches)))
        sync(device)
        out["compile_warmup_s"] = time.perf_counter() - t0
        t_c, _ = plain_train(args.warmup - 2 if args.warmup > 2 else 0, args.steps)
        out["plain_compiled_tokens_per_s"] = args.steps * tokens_per_step / t_c
    return out


# ----------------------------------------------------------------------------- the table
def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def table(results: list[dict], peak: float, args: argparse.Namespace) -> str:
    lines = [
        "| model | d x layers | parameters | train GFLOP/token (formula / counted) | plain tok/s | Lightning tok/s "
        "| Lightning / plain | MFU (Lightning) | Lightning, fused AdamW tok/s | eval bare tok/s | eval metrics tok/s | metrics / bare | data wait "
        "| peak memory | params+grads+AdamW |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        mfu = r["flops_per_token"] * r["lightning_tokens_per_s"] / peak
        lines.append(
            f"| {r['label']} | {r['d_model']} x {r['n_layers']} | {r['params']:,} | "
            f"{r['flops_per_token'] / 1e9:.4f} / {r['flops_counted'] / 1e9:.4f} | {r['plain_tokens_per_s']:,.0f} | "
            f"{r['lightning_tokens_per_s']:,.0f} | {r['lightning_tokens_per_s'] / r['plain_tokens_per_s']:.3f} | "
            f"{mfu:.1%} | {r['lightning_fused_tokens_per_s']:,.0f} | {r['eval_bare_tokens_per_s']:,.0f} | {r['eval_metrics_tokens_per_s']:,.0f} | "
            f"{r['eval_metrics_over_bare']:.3f} [{min(r['eval_metrics_over_bare_rounds']):.2f}–"
            f"{max(r['eval_metrics_over_bare_rounds']):.2f}] | {r['data_wait']:.2%} | "
            f"{mib(r['peak_memory'])} | {mib(r['state_memory'])} |"
        )
    if any("plain_compiled_tokens_per_s" in r for r in results):
        lines += ["", "| model | d | plain tok/s | plain + torch.compile tok/s | speed-up | compile warm-up |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in results:
            if "plain_compiled_tokens_per_s" in r:
                lines.append(f"| {r['label']} | {r['d_model']} | {r['plain_tokens_per_s']:,.0f} | "
                             f"{r['plain_compiled_tokens_per_s']:,.0f} | "
                             f"{r['plain_compiled_tokens_per_s'] / r['plain_tokens_per_s']:.2f}x | "
                             f"{r['compile_warmup_s']:.0f} s |")
    return "\n".join(lines)


#: CPU flags worth naming for matmul speed (from /proc/cpuinfo)
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields (empty where there is none), read once."""
    fields: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            if not line.strip():
                break  # the end of the first processor's block
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> list[str]:
    """The vector extensions of this CPU among :data:`VECTOR_FLAGS` (empty where unknown)."""
    have = set(_cpuinfo().get("flags", "").split())
    return [f for f in VECTOR_FLAGS if f in have]


def machine(device: str) -> str:
    """The device in words; for the CPU its model and vector extensions, which set its speed."""
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = _cpuinfo().get("model name") or platform.processor() or platform.machine()
    vector = " ".join(cpu_flags()) or "unknown"
    return (f"{os.cpu_count()}-core CPU ({cpu}; vector extensions {vector}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=15, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    p.add_argument("--eval-rounds", type=int, default=7,
                   help="paired rounds of (bare forward, Trainer.test) for the evaluation ratio")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="fp32 (32-true) or bf16 (bf16-mixed; the peak is then measured in bf16)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (see above)")
    p.add_argument("--out", default=str(RESULTS / "throughput"), help="writes OUT.md and OUT.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # FAMILY:D, one configuration -> stdout JSON
    args = p.parse_args()
    if args.worker:
        family, d = args.worker.split(":")
        print("RESULT " + json.dumps(run_one(family, int(d), args)), flush=True)
        return

    import torch

    device = torch.device(args.device)
    dtype = "bfloat16" if args.precision == "bf16" else "float32"
    peak = matmul_peak(device, dtype)
    print(f"{dtype} matmul peak: {peak / 1e9:,.1f} GFLOP/s on {machine(args.device)}", flush=True)
    started = datetime.datetime.now()
    results = []
    for d in [int(s) for s in args.sizes.split(",")]:
        for family in args.families.split(","):
            t0 = time.time()
            cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", f"{family}:{d}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"{family} d={d} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
            r = json.loads(line[len("RESULT "):])
            results.append(r)
            print(f"  {family} d={d}: plain {r['plain_tokens_per_s']:,.0f} tok/s, Lightning "
                  f"{r['lightning_tokens_per_s']:,.0f} tok/s ({time.time() - t0:.0f} s)", flush=True)
    peak_after = matmul_peak(device, dtype)
    text = table(results, peak, args)
    command = " ".join(["python benchmarks/throughput.py", *sys.argv[1:]])
    head = (f"`{command}` on "
            f"{machine(args.device)}, {started:%Y-%m-%d %H:%M}; {dtype} matmul peak {peak / 1e9:,.1f} GFLOP/s at "
            f"the start, {peak_after / 1e9:,.1f} at the end; n_ctx {args.n_ctx}, batch {args.batch_size}, "
            f"{args.vocab_size}-token BPE, {args.warmup} warm-up + {args.steps} timed steps per measurement; "
            f"load average at the end {os.getloadavg()[0]:.2f}.")
    print("\n" + head + "\n\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(head + "\n\n" + text + "\n")
    out.with_suffix(".json").write_text(json.dumps({
        "args": {k: v for k, v in vars(args).items() if k != "worker"}, "machine": machine(args.device),
        "date": started.isoformat(timespec="minutes"), "matmul_peak_flops": peak,
        "matmul_peak_flops_end": peak_after, "load_average_end": os.getloadavg(), "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
