"""Training throughput of zoo side by side with litgpt, in one run, in paired windows.

**What.** Three contestants train the SAME Llama (RMSNorm, RoPE, SwiGLU, untied head, no
biases; d=128 x 4 layers and d=256 x 6 layers, 4 heads, n_ctx 256, batch 8, fp32, the
quickstart's 4k BPE on the embedded edu corpus, packed windows, AdamW lr 1e-3, betas
(0.9, 0.95), eps 1e-8, weight decay 0.1, constant learning rate, clipping at 1.0):

* ``zoo_lightning``: :class:`zoo.lit.language_model.LanguageModelTask` under a Lightning
  ``Trainer`` set up as ``zoo.fit`` sets it up (``throughput.zoo_fit_trainer``: checkpoint
  callbacks, RNG state, save-on-interrupt, non-finite guard, learning-rate and throughput
  monitors, a CSV logger every 10 steps, gradient clipping 1.0, no progress bar).
* ``zoo_plain``: the same zoo ``nn.Module`` in a hand-written PyTorch loop with the task's
  AdamW parameter groups, clipping 1.0 and the task's chunked cross-entropy (``throughput.task_optimizer`` and
  ``throughput.plain_step_fn``).
* ``litgpt``: ``litgpt.model.GPT`` with a ``litgpt.config.Config`` set to the identical
  Llama (same parameter count, asserted), trained by a step that follows litgpt 0.5.13's
  ``pretrain.fit``: Fabric, ``initialize_weights``, ``get_lr`` each iteration,
  ``chunked_cross_entropy``, ``fabric.backward``, a ``RunningMean`` of the loss (read every 10
  iterations), ``fabric.clip_gradients(max_norm=1.0)``, AdamW (one parameter group, as litgpt
  builds it). Validation, logging to disk and checkpoints are left out on both sides.

Each runs in eager mode and compiled (zoo: ``model.compile()`` in place, as ``zoo.fit``
does for ``compile=true``; litgpt: ``torch.compile(model)`` before ``fabric.setup``, as its
pretrain does).

**Why.** "Is zoo slow?" needs a reference that is not zoo: litgpt is a lean, widely used
trainer of the same architecture. The plain loop separates the cost of Lightning (zoo's
framework) from the cost of the model code (Hugging Face's Llama inside zoo vs litgpt's own).

**How.** Every contestant (per size and mode) lives in its own persistent worker process
(this script with ``--worker``; JSON lines over a pipe), so compile caches stay separate
(each worker also gets a fresh ``TORCHINDUCTOR_CACHE_DIR``: first steps are cold compiles)
and litgpt's own site folder is on ``sys.path`` only in its worker. The workers load in
parallel, then warm up one at a time: the first step's seconds (compilation included) are
reported separately as "first step", and the warm-up steps are excluded from the rates.
Then the parent asks each worker in turn for a window of ``--steps`` steps, round-robin,
the order rotated every window, and records per window: tokens/s, the CPU share the worker
got (its process CPU time during the window / (wall time x threads); 1.0 = all its threads
busy all the time) and ``os.getloadavg()``. A window of one contestant runs while the others
sit idle, so a drift of the machine's speed hits neighbouring windows of all three alike.

**Reading the ratios.** ``zoo Lightning / litgpt``, ``zoo plain / litgpt`` and ``zoo
Lightning / zoo plain`` are medians over the windows of per-window ratios (window w of one
contestant against window w of the other, run back to back); above 1 the first is faster.
``Lightning / plain`` is the framework's overhead on zoo's model, ``plain / litgpt`` the
model code's, ``Lightning / litgpt`` (``zoo_over_litgpt`` in the JSON) the whole. Trust a
ratio when the CPU shares of its windows are near 1 and alike and the load average stays
under the threads (OpenMP threads spinning while a sibling is descheduled count as busy, so a
share near 1 is necessary, not sufficient); compare ratios from one run, not tokens/s across
runs. MFU: training FLOPs per token (``zoo.models.flops``, the same
architecture for all three) x tokens/s / the fp32 ``torch.mm`` peak measured at the start
of the same run with the same threads.

Run (about 15-25 minutes on a 2-core CPU at the defaults; zoo's compiled first steps take
minutes)::

    python benchmarks/peers.py --install-litgpt     # once: litgpt into benchmarks/.litgpt
    python benchmarks/peers.py [--sizes 128,256] [--modes eager,compiled] [--windows 8]
                               [--steps 10] [--warmup 3] [--threads 2]
                               [--contestants zoo_lightning,zoo_plain,litgpt]

It writes ``benchmarks/results/peers.{md,json}`` (``--out``) and prints the table.

**Why litgpt is not a pyproject extra.** litgpt 0.5.13 requires ``huggingface_hub<1.4``,
and the transformers zoo runs on (5.24) requires ``huggingface_hub>=1.31``. ``pip install
--dry-run -e ".[peers]"`` with ``peers = ["litgpt==0.5.13"]`` does resolve, but only by
downgrading transformers to 5.3.0 (and huggingface_hub to 1.3.7, tokenizers, datasets):
it would swap the transformers every other zoo command and test runs on, and time zoo on an
environment nobody else uses. ``--install-litgpt`` instead runs ``pip install --no-deps
--target benchmarks/.litgpt litgpt==0.5.13 "jsonargparse[signatures]==4.41.0"
docstring_parser==0.18.0 typeshed_client==2.15.0``: litgpt's own code (its other
dependencies, lightning, torch, torchmetrics, safetensors, tokenizers, psutil, are already
zoo's) in a folder only the litgpt worker puts first on ``sys.path``. Another copy works
too: ``--litgpt-path DIR`` or ``ZOO_LITGPT_PATH=DIR``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/ is not a package: its throughput.py holds the shared helpers
import throughput  # noqa: E402

RESULTS = HERE / "results"
LITGPT_DIR = HERE / ".litgpt"
LITGPT_REQUIREMENTS = ["litgpt==0.5.13", "jsonargparse[signatures]==4.41.0", "docstring_parser==0.18.0",
                       "typeshed_client==2.15.0"]
CONTESTANTS = ("zoo_lightning", "zoo_plain", "litgpt")
LABELS = {"zoo_lightning": "zoo Lightning", "zoo_plain": "zoo plain", "litgpt": "litgpt"}
RATIOS = (("zoo_lightning", "litgpt"), ("zoo_plain", "litgpt"), ("zoo_lightning", "zoo_plain"))
MODES = ("eager", "compiled")
#: the task's optimiser options (zoo.schema's AdamW defaults: lr 1e-3, betas 0.9/0.95, eps 1e-8,
#: weight decay 0.1), constant learning rate, as in throughput.py
OPTIM = {"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"}
ADAMW = {"lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8}
N_HEADS = 4
LOG_EVERY = 10  # zoo's CSV logger writes every 10 steps; litgpt's running loss is read as often


def d_ff(d: int) -> int:
    """Llama's SwiGLU width, 8/3 x d rounded to a multiple of 64 (zoo's default), given to both."""
    return 64 * round(4 * d * 2 / 3 / 64)


def zoo_model_config(d: int) -> dict[str, Any]:
    """The ``model:`` section of zoo's Llama at width ``d`` (throughput.py's, d_ff explicit)."""
    return {**throughput.model_config("llama", d), "d_ff": d_ff(d)}


def machine_info() -> dict[str, Any]:
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        capability = None
    return {"machine": throughput.machine("cpu"), "cpu_flags": throughput.cpu_flags(), "torch": torch.__version__,
            "torch_cpu_capability": capability, "python": platform.python_version()}


# ============================================================================ worker side
class Server:
    """The worker's end of the pipe: JSON lines in (commands) and out (results)."""

    def __init__(self, threads: int, tokens_per_step: int) -> None:
        self.out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol keeps the real stdout...
        os.dup2(2, 1)  # ...and everything else printed (Lightning, warnings, C code) goes to the log
        self.threads, self.tokens_per_step = threads, tokens_per_step
        self.steps = 0

    def send(self, **msg: Any) -> None:
        self.out.write(json.dumps(msg) + "\n")

    def command(self) -> dict[str, Any]:
        line = sys.stdin.readline()
        return json.loads(line) if line else {"cmd": "stop"}

    def loaded(self, t0: float) -> None:
        """Data and model are built: say so, then wait until the parent starts the warm-up (it
        warms the workers up one at a time, each while the others sit idle)."""
        self.send(loaded=True, load_s=time.perf_counter() - t0)
        cmd = self.command()
        assert cmd["cmd"] == "warmup", cmd

    def window_steps(self) -> int | None:
        """Steps of the next window, or None when told to stop."""
        cmd = self.command()
        if cmd["cmd"] == "stop":
            return None
        assert cmd["cmd"] == "window", cmd
        self.steps = int(cmd["steps"])
        self.load0 = os.getloadavg()
        self.c0, self.t0 = time.process_time(), time.perf_counter()
        return self.steps

    def window_done(self) -> None:
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        self.send(tokens_per_s=self.steps * self.tokens_per_step / wall, wall_s=wall, cpu_s=cpu,
                  cpu_share=cpu / (wall * self.threads), loadavg_start=self.load0, loadavg_end=os.getloadavg())


def worker_data(args: argparse.Namespace):
    from zoo.data.datamodule import TextDataModule

    dm = TextDataModule(sources=[{"name": "edu"}], layout="packed", n_ctx=args.n_ctx, batch_size=args.batch_size,
                        eval_batch_size=args.batch_size, tokenizer={"vocab_size": args.vocab_size},
                        num_workers=0, seed=1234)
    dm.prepare_data()
    dm.setup()
    return dm


def serve_loop(server: Server, step, warmup: int, info: dict[str, Any]) -> None:
    """Warm-up (first step timed apart), then windows of steps until told to stop."""
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(warmup - 1):
        step()
    server.send(ready=True, first_step_s=first, warmup_s=time.perf_counter() - t0, **info)
    while (k := server.window_steps()) is not None:
        for _ in range(k):
            step()
        server.window_done()


def run_zoo_lightning(server: Server, args: argparse.Namespace, d: int, compiled: bool, info: dict) -> None:
    t0 = time.perf_counter()
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from zoo.lit.language_model import LanguageModelTask

    dm = worker_data(args)
    L.seed_everything(0, verbose=False)
    task = LanguageModelTask(model=zoo_model_config(d), vocab_size=dm.vocab_size, n_ctx=args.n_ctx, optim=OPTIM)
    info.update(zoo_info(task.model, args))
    if compiled:  # zoo.fit with compile=true
        task.model.compile()

    class Serve(Callback):
        """Runs the protocol from inside ``Trainer.fit``: a window is timed from the end of the
        step before it to the end of its last step (K batch fetches, K steps, every hook)."""

        def __init__(self) -> None:
            self.done, self.left, self.t_first = 0, None, 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.done == 0:
                self.t_first = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = time.perf_counter()
            self.done += 1
            if self.done == 1:
                self.first, self.t_warm = now - self.t_first, now
            if self.left is not None:
                self.left -= 1
                if self.left > 0:
                    return
                server.window_done()
            elif self.done < args.warmup:
                return
            else:
                server.send(ready=True, first_step_s=self.first, warmup_s=now - self.t_warm, **info)
            self.left = server.window_steps()
            if self.left is None:
                trainer.should_stop = True

    server.loaded(t0)
    with tempfile.TemporaryDirectory() as tmp:
        # the step checkpoint (every 100 steps in zoo.fit) is moved out of reach: litgpt's
        # step saves nothing either, and a checkpoint write is not training throughput
        trainer = throughput.zoo_fit_trainer(tmp, max_steps=10**9, extra_callbacks=[Serve()],
                                             every_n_train_steps=10**9)
        trainer.fit(task, train_dataloaders=dm.train_dataloader())


def run_zoo_plain(server: Server, args: argparse.Namespace, d: int, compiled: bool, info: dict) -> None:
    t0 = time.perf_counter()
    import lightning as L

    from zoo.lit.language_model import LanguageModelTask

    dm = worker_data(args)
    L.seed_everything(0, verbose=False)
    task = LanguageModelTask(model=zoo_model_config(d), vocab_size=dm.vocab_size, n_ctx=args.n_ctx, optim=OPTIM)
    model = task.model
    info.update(zoo_info(model, args))
    opt = throughput.task_optimizer(task)
    if compiled:
        model.compile()
    model.train()
    plain_step = throughput.plain_step_fn(model, opt)
    batches = throughput.forever(dm.train_dataloader())

    def step() -> None:
        plain_step(next(batches))

    server.loaded(t0)
    serve_loop(server, step, args.warmup, info)


def zoo_info(model, args: argparse.Namespace) -> dict[str, Any]:
    from zoo.models.flops import train_flops_per_token

    return {"params": sum(p.numel() for p in model.parameters()),
            "flops_per_token": train_flops_per_token(model, args.n_ctx)}


def litgpt_config(d: int, args: argparse.Namespace, vocab_size: int):
    """zoo's Llama as a ``litgpt.config.Config``."""
    from litgpt.config import Config

    return Config(
        name=f"zoo-llama-d{d}", block_size=args.n_ctx, vocab_size=vocab_size, padded_vocab_size=vocab_size,
        n_layer=throughput.SIZES[d], n_embd=d, n_head=N_HEADS, n_query_groups=N_HEADS, head_size=d // N_HEADS,
        rotary_percentage=1.0, rope_base=10000, parallel_residual=False, bias=False,
        norm_class_name="RMSNorm", norm_eps=1e-6,  # transformers' Llama default eps
        mlp_class_name="LLaMAMLP", intermediate_size=d_ff(d),
    )


def run_litgpt(server: Server, args: argparse.Namespace, d: int, compiled: bool, info: dict) -> None:
    t0 = time.perf_counter()
    path = Path(args.litgpt_path).resolve()
    sys.path.insert(0, str(path))  # litgpt's own folder first, in this process only
    import importlib.metadata

    import lightning as L
    import litgpt
    import torch
    from litgpt.model import GPT
    from litgpt.pretrain import get_lr, initialize_weights
    from litgpt.utils import chunked_cross_entropy, instantiate_torch_optimizer, num_parameters
    from torchmetrics.aggregation import RunningMean

    from zoo.models import build_model

    if not Path(litgpt.__file__).resolve().is_relative_to(path):
        raise RuntimeError(f"litgpt was imported from {litgpt.__file__}, not from {path}")
    dm = worker_data(args)
    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true")
    fabric.launch()
    fabric.seed_everything(0)
    config = litgpt_config(d, args, dm.vocab_size)
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    initialize_weights(fabric, model, n_layer=config.n_layer, n_embd=config.n_embd)
    zoo_model = build_model(zoo_model_config(d), dm.vocab_size, args.n_ctx)
    counts = zoo_info(zoo_model, args)  # parameters and FLOPs of zoo's model, for the check and MFU
    del zoo_model
    n = num_parameters(model)
    if n != counts["params"]:
        raise AssertionError(f"litgpt's GPT has {n:,} parameters, zoo's Llama {counts['params']:,}")
    info.update(counts, litgpt_version=importlib.metadata.version("litgpt"), litgpt_path=str(path),
                litgpt_config={k: getattr(config, k) for k in (
                    "n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size",
                    "padded_vocab_size", "block_size", "norm_class_name", "norm_eps", "mlp_class_name",
                    "rotary_percentage", "parallel_residual", "bias")})
    if compiled:  # litgpt's pretrain compiles before fabric.setup
        model = torch.compile(model)
    model = fabric.setup(model)
    optimizer = instantiate_torch_optimizer({"class_path": "torch.optim.AdamW", "init_args": dict(ADAMW)},
                                            model.parameters(), fused=fabric.device.type == "cuda")
    optimizer = fabric.setup_optimizers(optimizer)
    loader = fabric.setup_dataloaders(dm.train_dataloader(), use_distributed_sampler=False)
    batches = throughput.forever(loader)
    running_loss = RunningMean(window=1, sync_on_compute=False).to(fabric.device)
    state = {"iter_num": 0}
    model.train()

    def step() -> None:  # one iteration of litgpt.pretrain.fit (no gradient accumulation)
        batch = next(batches)
        lr = get_lr(ADAMW["lr"], state["iter_num"], 0, 10**9, ADAMW["lr"])  # constant, as zoo's
        for group in optimizer.param_groups:
            group["lr"] = lr
        state["iter_num"] += 1
        input_ids = batch["input_ids"].contiguous().long()
        targets = batch["labels"].contiguous().long()  # zoo's labels: input_ids shifted by one
        logits = model(input_ids)
        loss = chunked_cross_entropy(logits, targets)
        fabric.backward(loss)
        running_loss.update(loss.detach())
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()
        if state["iter_num"] % LOG_EVERY == 0:
            running_loss.compute().item()

    server.loaded(t0)
    serve_loop(server, step, args.warmup, info)


def worker_main(args: argparse.Namespace) -> None:
    name, d, mode = args.worker.split(":")
    import torch

    torch.set_num_threads(args.threads)
    server = Server(args.threads, args.batch_size * args.n_ctx)
    info = {"threads": torch.get_num_threads(), "pid": os.getpid()}
    runner = {"zoo_lightning": run_zoo_lightning, "zoo_plain": run_zoo_plain, "litgpt": run_litgpt}[name]
    runner(server, args, int(d), mode == "compiled", info)


# ============================================================================ parent side
class Worker:
    """One contestant's persistent process."""

    def __init__(self, name: str, d: int, mode: str, args: argparse.Namespace, tmp: Path) -> None:
        self.name, self.label = name, f"{name} d={d} {mode}"
        self.log_path = tmp / f"{name}-{d}-{mode}.log"
        cache = tmp / f"inductor-{name}-{d}-{mode}"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", f"{name}:{d}:{mode}",
               "--threads", str(args.threads), "--warmup", str(args.warmup), "--n-ctx", str(args.n_ctx),
               "--batch-size", str(args.batch_size), "--vocab-size", str(args.vocab_size),
               "--litgpt-path", str(args.litgpt_path)]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env, cwd=str(HERE.parent))

    def send(self, **msg: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.flush()
            tail = self.log_path.read_text()[-6000:]
            raise SystemExit(f"{self.label}: worker exited (code {self.proc.returncode}); its log ends:\n{tail}")
        return json.loads(line)

    def ask(self, **msg: Any) -> dict[str, Any]:
        self.send(**msg)
        return self.receive()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="stop")
                self.proc.wait(timeout=120)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def run_group(d: int, mode: str, args: argparse.Namespace, peak: float, tmp: Path) -> dict[str, Any]:
    """Workers for one size and mode: load, warm up one at a time, then the paired windows."""
    names = args.contestants
    t_start = time.perf_counter()
    workers = {n: Worker(n, d, mode, args, tmp) for n in names}  # they import and load in parallel
    try:
        loaded = {n: w.receive() for n, w in workers.items()}  # data and model built
        ready: dict[str, dict[str, Any]] = {}
        for n, w in workers.items():
            t0 = time.perf_counter()
            ready[n] = w.ask(cmd="warmup")
            ready[n]["ready_after_s"] = time.perf_counter() - t0
            ready[n]["load_s"] = loaded[n]["load_s"]
            print(f"  d={d} {mode}: {n} ready, first step {ready[n]['first_step_s']:.1f} s, "
                  f"{args.warmup - 1} more warm-up steps {ready[n]['warmup_s']:.1f} s", flush=True)
        params = {n: r["params"] for n, r in ready.items()}
        if len(set(params.values())) != 1:
            raise SystemExit(f"d={d}: the contestants' parameter counts differ: {params}")
        windows = []
        for i in range(args.windows):
            order = names[i % len(names):] + names[:i % len(names)]
            results = {n: workers[n].ask(cmd="window", steps=args.steps) for n in order}
            windows.append({"index": i, "order": order, "results": results})
            print(f"  d={d} {mode} window {i + 1}/{args.windows}: " + ", ".join(
                f"{n} {results[n]['tokens_per_s']:,.0f} tok/s (CPU {results[n]['cpu_share']:.2f})" for n in names),
                flush=True)
    finally:
        for w in workers.values():
            w.stop()
    first = ready[names[0]]
    flops = first["flops_per_token"]
    group: dict[str, Any] = {
        "d_model": d, "n_layers": throughput.SIZES[d], "n_heads": N_HEADS, "d_ff": d_ff(d), "mode": mode,
        "params": first["params"], "flops_per_token": flops, "tokens_per_step": args.batch_size * args.n_ctx,
        "seconds": time.perf_counter() - t_start, "contestants": {}, "ratios": {},
    }
    for n in names:
        tps = [w["results"][n]["tokens_per_s"] for w in windows]
        share = [w["results"][n]["cpu_share"] for w in windows]
        group["contestants"][n] = {
            **{k: v for k, v in ready[n].items() if k != "ready"},
            "tokens_per_s": summary(tps), "mfu": flops * statistics.median(tps) / peak,
            "cpu_share": summary(share),
        }
    for a, b in RATIOS:
        if a in names and b in names:
            per = [w["results"][a]["tokens_per_s"] / w["results"][b]["tokens_per_s"] for w in windows]
            group["ratios"][f"{a}/{b}"] = {**summary(per), "per_window": per}
    r = group["ratios"].get("zoo_lightning/litgpt")
    group["zoo_over_litgpt"] = r["median"] if r else None
    group["windows"] = windows
    return group


def fmt_range(s: dict[str, float], spec: str) -> str:
    return f"{s['median']:{spec}} [{s['min']:{spec}}–{s['max']:{spec}}]"


def tables(groups: list[dict[str, Any]], names: list[str]) -> str:
    cols = [LABELS[n] for n in names]
    lines = ["| d x layers | mode | parameters | " + " | ".join(f"{c} tok/s" for c in cols) + " |",
             "|---|---|---:|" + "---:|" * len(cols)]
    for g in groups:
        lines.append(f"| {g['d_model']} x {g['n_layers']} | {g['mode']} | {g['params']:,} | " + " | ".join(
            fmt_range(g["contestants"][n]["tokens_per_s"], ",.0f") for n in names) + " |")
    ratios = [f"{a}/{b}" for a, b in RATIOS if a in names and b in names]
    if ratios:
        heads = [f"{LABELS[k.split('/')[0]]} / {LABELS[k.split('/')[1]]}" for k in ratios]
        lines += ["", "Paired ratios, median [min–max] over windows of per-window ratios (above 1: the first is faster):",
                  "", "| d x layers | mode | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
        for g in groups:
            lines.append(f"| {g['d_model']} x {g['n_layers']} | {g['mode']} | " + " | ".join(
                fmt_range(g["ratios"][k], ".3f") for k in ratios) + " |")
    lines += ["", "| d x layers | mode | " + " | ".join(f"{c} MFU" for c in cols) + " | "
              + " | ".join(f"{c} first step" for c in cols) + " | "
              + " | ".join(f"{c} CPU share" for c in cols) + " | load avg (1 min) |",
              "|---|---|" + "---:|" * (3 * len(cols) + 1)]
    for g in groups:
        c = g["contestants"]
        loads = [r["loadavg_end"][0] for w in g["windows"] for r in w["results"].values()]
        lines.append(f"| {g['d_model']} x {g['n_layers']} | {g['mode']} | "
                     + " | ".join(f"{c[n]['mfu']:.1%}" for n in names) + " | "
                     + " | ".join(f"{c[n]['first_step_s']:.1f} s" for n in names) + " | "
                     + " | ".join(fmt_range(c[n]["cpu_share"], ".2f") for n in names) + " | "
                     + f"{statistics.median(loads):.2f} [{min(loads):.2f}–{max(loads):.2f}] |")
    return "\n".join(lines)


def install_litgpt(target: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--target", str(target),
           *LITGPT_REQUIREMENTS]
    print(shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    print(f"litgpt installed in {target}; the litgpt worker puts it first on its sys.path")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128,256", help=f"model widths, of {','.join(map(str, throughput.SIZES))}")
    p.add_argument("--modes", default="eager,compiled", help="eager and/or compiled")
    p.add_argument("--windows", type=int, default=8, help="paired windows per size and mode")
    p.add_argument("--steps", type=int, default=10, help="training steps per window")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the windows (the first is reported)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every worker and of the matmul peak")
    p.add_argument("--contestants", default=",".join(CONTESTANTS), help="any of " + ",".join(CONTESTANTS))
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--litgpt-path", default=os.environ.get("ZOO_LITGPT_PATH", str(LITGPT_DIR)),
                   help="folder holding litgpt 0.5.13 (default $ZOO_LITGPT_PATH or benchmarks/.litgpt)")
    p.add_argument("--install-litgpt", action="store_true",
                   help="pip install --no-deps --target benchmarks/.litgpt litgpt 0.5.13 and its three pins, then exit")
    p.add_argument("--out", default=str(RESULTS / "peers"), help="writes OUT.md and OUT.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # NAME:D:MODE, one contestant
    args = p.parse_args(argv)
    if args.worker or args.install_litgpt:
        return args
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.modes = args.modes.split(",")
    args.contestants = args.contestants.split(",")
    for what, given, known in (("size", args.sizes, tuple(throughput.SIZES)), ("mode", args.modes, MODES),
                               ("contestant", args.contestants, CONTESTANTS)):
        bad = [x for x in given if x not in known]
        if bad or not given or len(set(given)) != len(given):
            p.error(f"--{what}s: {','.join(map(str, given))}; choose from {','.join(map(str, known))}")
    if min(args.windows, args.steps, args.warmup, args.threads) < 1:
        p.error("--windows, --steps, --warmup and --threads must be at least 1")
    if "litgpt" in args.contestants and not (Path(args.litgpt_path) / "litgpt").is_dir():
        p.error(f"no litgpt in {args.litgpt_path}: run `python benchmarks/peers.py --install-litgpt` "
                "(or give --litgpt-path / ZOO_LITGPT_PATH), or leave litgpt out of --contestants")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.install_litgpt:
        install_litgpt(LITGPT_DIR)
        return
    if args.worker:
        worker_main(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    info = machine_info()
    started = datetime.datetime.now()
    peak = throughput.matmul_peak(cpu)
    print(f"fp32 matmul peak {peak / 1e9:,.1f} GFLOP/s on {info['machine']}", flush=True)
    groups = []
    with tempfile.TemporaryDirectory(prefix="zoo-peers-") as tmp:
        for d in args.sizes:
            for mode in args.modes:
                groups.append(run_group(d, mode, args, peak, Path(tmp)))
    peak_end = throughput.matmul_peak(cpu)
    litgpt = next((g["contestants"]["litgpt"] for g in groups if "litgpt" in g["contestants"]), None)
    command = shlex.join(["python", "benchmarks/peers.py", *(argv if argv is not None else sys.argv[1:])])
    head = (
        f"`{command}` on {info['machine']} (torch CPU capability {info['torch_cpu_capability']}), "
        f"{started:%Y-%m-%d %H:%M}; "
        f"{args.threads} threads per contestant"
        + (f", litgpt {litgpt['litgpt_version']}" if litgpt else "")
        + f". fp32 matmul peak {peak / 1e9:,.1f} GFLOP/s at the start, {peak_end / 1e9:,.1f} at the end. "
        f"n_ctx {args.n_ctx}, batch {args.batch_size} ({args.n_ctx * args.batch_size:,} tokens/step), "
        f"{args.vocab_size}-token BPE, fp32; {args.warmup} warm-up steps, then {args.windows} paired windows of "
        f"{args.steps} steps per contestant, round-robin (order rotated each window). tok/s: median [min–max] "
        "over windows; first step: seconds of the first training step (compilation included); CPU share: "
        "process CPU time / (wall x threads) per window."
    )
    text = tables(groups, args.contestants)
    print("\n" + head + "\n\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(head + "\n\n" + text + "\n")
    keyed = {f"d{g['d_model']}_{g['mode']}": g["zoo_over_litgpt"] for g in groups}
    out.with_suffix(".json").write_text(json.dumps({
        "command": command, "args": {k: v for k, v in vars(args).items() if k not in ("worker", "install_litgpt")},
        **info, "date": started.isoformat(timespec="minutes"), "matmul_peak_flops": peak,
        "matmul_peak_flops_end": peak_end, "zoo_over_litgpt": keyed, "results": groups,
    }, indent=1))
    print(f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
