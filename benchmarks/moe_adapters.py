"""MoE vs dense at equal active parameters, and LoRA adaptation vs full fine-tuning.

Part ``moe``: trains the dense recipes (``quickstart``: Llama, ``mixer_clm``: masked mixer)
and their MoE twins (``moe_clm``, ``moe_mixer``: 4 experts, top-2, each expert half the
dense feed-forward width, so the active parameters per token are the dense model's plus a
128 x 4 router per layer) through ``python -m zoo.fit`` with the same data, steps and
batch, and prints val BPB, training tokens/s (from part ``throughput``; each run's
Lightning ThroughputMonitor value is kept in the JSON) and the expert load balance on val
(mean over layers of load entropy / log2 E, 1 = perfectly even; and the busiest expert's
load x E, 1 = even).

Part ``adapters``: from the edu-trained base (``--base``, default ``checkpoints/llama-edu``),
trains ``adapter_math`` (LoRA, base frozen) and the same recipe with ``model.adapter=null``
(full fine-tuning, ``--ft-lr``), and scores base, adapted and fine-tuned models on the math
and the edu val splits with ``python -m zoo.evaluate`` (forgetting = the rise in edu BPB).

Part ``throughput``: training tokens/s of the four models measured in one process with their
train steps interleaved (robust to other load on the machine); the table's tokens/s column.

    python benchmarks/moe_adapters.py [--part moe|throughput|adapters|all] [--steps 300] [--adapter-steps 200]

Writes ``benchmarks/results/moe_adapters.{md,json}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MOE_MODELS = [  # (label, recipe)
    ("Llama, dense", "quickstart"),
    ("Llama, MoE 4 experts top-2", "moe_clm"),
    ("masked mixer, dense", "mixer_clm"),
    ("masked mixer, MoE 4 experts top-2", "moe_mixer"),
]


def fit(recipe: str, out: Path, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "zoo.fit", f"recipe={recipe}", "logger=csv", f"out_dir={out}",
           "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5", "report.splits=[val]",
           "report.compressors=[xz]", *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"{recipe} {overrides} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    run_dir = max((out / recipe).iterdir())
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    tps = [float(r["train/device/items_per_sec"]) for r in rows if r.get("train/device/items_per_sec")]
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if "parameters (" in x)
    nums = [int(w.replace(",", "").strip("(")) for w in line.split("—")[1].split() if w.strip("(").replace(",", "").isdigit()]
    total, trainable, active = nums[:3]
    report = json.loads((run_dir / "report.json").read_text())
    print(f"  {recipe} {' '.join(overrides)}: {time.time() - t0:.0f} s, val BPB {report['splits']['val']['bpb']:.4f}",
          flush=True)
    return {"recipe": recipe, "overrides": overrides, "run_dir": str(run_dir), "total": total,
            "trainable": trainable, "active": active, "tokens_per_s": tps[-1] if tps else float("nan"),
            "val": report["splits"]["val"], "wall_s": time.time() - t0}


def evaluate(model_dir: str | Path, data: str) -> float:
    proc = subprocess.run([sys.executable, "-m", "zoo.evaluate", f"checkpoint={model_dir}", "split=val",
                           f"data={data}", "json=-"], capture_output=True, text=True, env=os.environ, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"evaluate {model_dir} data={data} failed:\n{proc.stderr[-3000:]}")
    return float(json.loads(proc.stdout[proc.stdout.index("{"):])["bpb"])


def part_moe(args: argparse.Namespace, tmp: Path) -> list[dict]:
    runs = []
    for label, recipe in MOE_MODELS:
        r = fit(recipe, tmp, [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
                              f"checkpoint.every_n_train_steps={args.steps}"])
        runs.append({"label": label, **r})
    return runs


def part_throughput(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Training tokens/s of each model, measured in this process with the models' train steps
    (forward, cross-entropy + auxiliary loss, backward, AdamW) INTERLEAVED: step i of every
    model runs back to back, so load from other processes on the machine hits all models alike.
    One thread; batch 16 x 256 tokens; the median over ``--tp-steps`` steps after 3 warm-up steps."""
    import statistics

    import torch
    import torch.nn.functional as F

    from zoo.models import build_model
    from zoo.models.base import auxiliary_loss
    from zoo.recipes import compose

    torch.set_num_threads(1)
    torch.manual_seed(0)
    models, opts = {}, {}
    for label, recipe in MOE_MODELS:
        models[label] = build_model(dict(compose(recipe).model), 4096, 256).train()
        opts[label] = torch.optim.AdamW(models[label].parameters(), lr=1e-4)
    ids = torch.randint(0, 4096, (16, 257))
    times: dict[str, list[float]] = {label: [] for label in models}
    for step in range(3 + args.tp_steps):
        for label, model in models.items():
            t0 = time.perf_counter()
            logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            aux = auxiliary_loss(model)
            (loss if aux is None else loss + aux).backward()
            opts[label].step()
            opts[label].zero_grad()
            if step >= 3:
                times[label].append(time.perf_counter() - t0)
    return {label: 16 * 256 / statistics.median(t) for label, t in times.items()}


def moe_table(saved: dict) -> list[str]:
    runs, tps = saved["moe"]["runs"], saved.get("throughput", {}).get("tokens_per_s", {})
    steps = saved["moe"]["args"]["steps"]
    lines = [
        f"edu, packed, n_ctx 256, 4k BPE, batch 16, {steps} steps ({steps * 16 * 256:,} training tokens) each; "
        "each recipe's own optimizer settings.",
        "",
        "| model | parameters: total | active per token | val BPB | train tokens/s | expert load balance (val) |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        v = r["val"]
        balance = (f"{v['router_balance']:.3f} (busiest expert {v['router_max_load']:.2f}x its even share)"
                   if "router_balance" in v else "—")
        speed = tps.get(r["label"], r["tokens_per_s"])
        lines.append(f"| {r['label']} | {r['total']:,} | {r['active']:,} | {v['bpb']:.4f} | "
                     f"{speed:,.0f} | {balance} |")
    return lines


def part_adapters(args: argparse.Namespace, tmp: Path) -> tuple[list[str], list[dict]]:
    base = Path(args.base).resolve()
    common = [f"init_from={base}", f"trainer.max_steps={args.adapter_steps}",
              f"trainer.val_check_interval={args.adapter_steps}", f"checkpoint.every_n_train_steps={args.adapter_steps}"]
    lora = fit("adapter_math", tmp / "lora", common)
    full = fit("adapter_math", tmp / "full", [*common, "model.adapter=null", f"optim.lr={args.ft_lr}"])
    base_params = json.loads((base / "metrics.json").read_text()) if (base / "metrics.json").exists() else {}
    rows = [
        {"label": "base (trained on edu)", "trainable": 0, "math": evaluate(base, "math"), "edu": evaluate(base, "edu")},
        {"label": f"LoRA adapter (r=8, base frozen), lr {lora_lr(lora)}", "trainable": lora["trainable"],
         "math": lora["val"]["bpb"], "edu": evaluate(Path(lora["run_dir"]) / "model", "edu"),
         "adapter_bytes": (Path(lora["run_dir"]) / "adapter" / "adapter_model.safetensors").stat().st_size},
        {"label": f"full fine-tuning, lr {args.ft_lr}", "trainable": full["trainable"], "math": full["val"]["bpb"],
         "edu": evaluate(Path(full["run_dir"]) / "model", "edu")},
    ]
    lines = [
        f"From `checkpoints/llama-edu` (quickstart: 1.8M parameters, 300 steps on edu), {args.adapter_steps} steps "
        f"x 16 x 256 tokens of math ({args.adapter_steps * 16 * 256:,} tokens), the base's 4k BPE.",
        "",
        "| model | trainable parameters | math val BPB | edu val BPB | edu BPB change (forgetting) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['trainable']:,} | {r['math']:.4f} | {r['edu']:.4f} | "
                     f"{r['edu'] - rows[0]['edu']:+.4f} |")
    lines += ["", f"Adapter file: {rows[1]['adapter_bytes'] / 1024:.0f} KiB "
                  f"(`adapter/adapter_model.safetensors`) vs {(base / 'model.safetensors').stat().st_size / 2**20:.1f} MiB "
                  "for the base weights."]
    return lines, [lora, full, *rows, {"base_metrics": base_params}]


def lora_lr(run: dict) -> str:
    import yaml

    cfg = yaml.safe_load((Path(run["run_dir"]) / "model" / "config.yaml").read_text())
    return f"{cfg['run']['optim']['lr']:g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["moe", "throughput", "adapters", "all"], default="all")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--tp-steps", type=int, default=20)
    p.add_argument("--adapter-steps", type=int, default=200)
    p.add_argument("--base", default=str(ROOT / "checkpoints" / "llama-edu"))
    p.add_argument("--ft-lr", type=float, default=1e-3)
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    out_json = RESULTS / "moe_adapters.json"
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("moe", "throughput", "adapters"):
            if args.part not in (part, "all"):
                continue
            if part == "moe":
                result = {"args": vars(args), "runs": part_moe(args, Path(tmp) / part)}
            elif part == "throughput":
                result = {"args": vars(args), "tokens_per_s": part_throughput(args, Path(tmp) / part)}
                print(json.dumps(result["tokens_per_s"], indent=1), flush=True)
            else:
                lines, runs = part_adapters(args, Path(tmp) / part)
                result = {"args": vars(args), "table": lines, "runs": runs}
            # merge into what other parts (maybe run by another process) saved
            saved = json.loads(out_json.read_text()) if out_json.exists() else {}
            saved[part] = result
            out_json.write_text(json.dumps(saved, indent=1))
    saved = json.loads(out_json.read_text()) if out_json.exists() else {}
    md = []
    if "moe" in saved:
        md += moe_table(saved) + [""]
    if "adapters" in saved:
        md += saved["adapters"]["table"] + [""]
    print("\n" + "\n".join(md), flush=True)
    (RESULTS / "moe_adapters.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
