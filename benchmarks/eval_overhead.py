"""Where evaluation's time goes: a bare forward against evaluation with every metric, and the
steps in between, for every family at both sizes of ``benchmarks/throughput.py``.

Per batch (n_ctx 256, batch 8, the quickstart's 4k BPE on the embedded edu val split, packed
windows; the same batches, fetched beforehand, for every variant), in ``--rounds`` paired
rounds whose order alternates:

* ``bare``: ``inference_mode`` forward that returns the ``[B, T, V]`` logits;
* ``hidden``: the same forward under ``deferred_head()``, which stops before the output head;
* ``scored``: plus the chunked head and its scoring (:func:`zoo.metrics.token_stats_from_hidden`);
* ``updated``: plus the six metric updates (``_eval_step``, what a test step runs);
* ``Trainer.test``: the task's ``test_step`` inside a real Lightning ``Trainer.test`` (the
  set-up of ``zoo.evaluate.score``), timed from the start of the first timed batch to the end
  of the last.

``metrics / bare`` is the median [min–max] over the rounds of bare time / Trainer.test time,
the measure ``throughput.py`` reports. Prints one table and writes
``benchmarks/results/eval_overhead.{md,json}``.

    python benchmarks/eval_overhead.py [--families llama,mixer,eacd,moe] [--sizes 128,256] [--rounds 9]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import time
from pathlib import Path

from throughput import FAMILIES, LABELS, SIZES, machine, model_config

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("bare", "hidden", "scored", "updated", "Trainer.test")


def measure(family: str, d: int, args: argparse.Namespace) -> dict:
    """Seconds per round of each variant over the same ``--batches`` timed batches."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from zoo.data.datamodule import TextDataModule
    from zoo.lit.language_model import LanguageModelTask
    from zoo.metrics import token_stats_from_hidden

    torch.manual_seed(0)
    dm = TextDataModule(sources=[{"name": "edu"}], layout="packed", n_ctx=256, batch_size=8, eval_batch_size=8,
                        tokenizer={"vocab_size": 4096}, seed=1234)
    dm.prepare_data()
    dm.setup()
    task = LanguageModelTask(model=model_config(family, d), vocab_size=dm.vocab_size, n_ctx=256,
                             optim={"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"})
    task.report_stages = ["report_val"]
    task.eval()
    model, warm, n = task.model, args.warmup, args.batches
    batches = [b for _, b in zip(range(warm + n), dm.eval_dataloader("val"), strict=False)]
    timed = batches[warm:]

    def bare() -> None:
        for b in timed:
            task(b)

    def hidden() -> None:
        for b in timed:
            with model.deferred_head():
                task(b)

    def scored() -> None:
        for b in timed:
            with model.deferred_head() as head:
                out = task(b)
            if head is not None:
                token_stats_from_hidden(out, head, b["labels"], b["target_bytes"], with_entropy=True)

    def updated() -> None:
        for b in timed:
            task._eval_step("report_val", b)

    class Window(Callback):
        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            if batch_idx == warm:
                self.t0 = time.perf_counter()

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            if batch_idx == warm + n - 1:
                self.t1 = time.perf_counter()

    class Batches:  # a plain iterable of the same batches (Lightning reads len() for its loop)
        def __len__(self) -> int:
            return len(batches)

        def __iter__(self):
            return iter(batches)

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # not "GPU available" per round

    def trainer_test() -> float:
        window = Window()
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=False, callbacks=[window])
        trainer.test(task, dataloaders=Batches(), verbose=False)
        return window.t1 - window.t0

    def timed_call(fn) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    with torch.inference_mode():  # warm-up: the fused kernel compiles, buffers are made
        for b in batches[:warm]:
            task(b)
            task._eval_step("report_val", b)
    task.metrics["report_val"].reset()
    plain = {"bare": bare, "hidden": hidden, "scored": scored, "updated": updated}
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = list(plain.items()) if r % 2 == 0 else list(plain.items())[::-1]
        if r % 2:
            seconds["Trainer.test"].append(trainer_test())
        for name, fn in order:
            seconds[name].append(timed_call(fn))
        if r % 2 == 0:
            seconds["Trainer.test"].append(trainer_test())
        task.metrics["report_val"].reset()
    ratios = [b / t for b, t in zip(seconds["bare"], seconds["Trainer.test"], strict=True)]
    return {"family": family, "d_model": d, "label": LABELS[family], "batches": n,
            "ms_per_batch": {v: 1000 * statistics.median(s) / n for v, s in seconds.items()},
            "metrics_over_bare": statistics.median(ratios), "metrics_over_bare_rounds": ratios, "seconds": seconds}


def table(results: list[dict]) -> str:
    lines = ["| model | d | " + " | ".join(f"{v} ms" for v in VARIANTS) + " | metrics / bare |",
             "|---|---:|" + "---:|" * (len(VARIANTS) + 1)]
    for r in results:
        ms = r["ms_per_batch"]
        lo, hi = min(r["metrics_over_bare_rounds"]), max(r["metrics_over_bare_rounds"])
        lines.append(f"| {r['label']} | {r['d_model']} | " + " | ".join(f"{ms[v]:.1f}" for v in VARIANTS)
                     + f" | {r['metrics_over_bare']:.3f} [{lo:.2f}–{hi:.2f}] |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--rounds", type=int, default=9, help="paired rounds (the order alternates)")
    p.add_argument("--batches", type=int, default=12, help="timed batches per variant and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--out", default=str(RESULTS / "eval_overhead"), help="writes OUT.md and OUT.json")
    args = p.parse_args()
    started = datetime.datetime.now()
    results = []
    for d in [int(s) for s in args.sizes.split(",")]:
        if d not in SIZES:
            p.error(f"--sizes: {d} is not one of {', '.join(map(str, SIZES))}")
        for family in args.families.split(","):
            if family not in FAMILIES:
                p.error(f"--families: {family!r} is not one of {', '.join(FAMILIES)}")
            t0 = time.time()
            results.append(measure(family, d, args))
            print(f"  {family} d={d}: metrics / bare {results[-1]['metrics_over_bare']:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    head = (f"`python benchmarks/eval_overhead.py --families {args.families} --sizes {args.sizes} --rounds "
            f"{args.rounds} --batches {args.batches}` on {machine('cpu')}, {started:%Y-%m-%d %H:%M}; "
            "n_ctx 256, batch 8, 4k BPE; median ms per batch.")
    text = head + "\n\n" + table(results)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "machine": machine("cpu"),
                                                    "date": started.isoformat(timespec="minutes"),
                                                    "results": results}, indent=1))


if __name__ == "__main__":
    main()
