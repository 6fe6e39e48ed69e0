"""Matrix entropy against depth for every published model of the zoo.

For each model of ``checkpoints/`` (``--models``, default: all), the matrix entropy (α = 1,
Gram matrix of the unit-normalised rows) of ``--tokens`` edu val token representations at
every hidden layer (:meth:`zoo.models.LanguageModel.hidden_layers`: the embedding, each
block; the EACD's encoder, vector and decoder), as ``python -m zoo.geometry entropy``
measures it, on packed windows for every model (the EACDs were trained on left-padded
documents; packed windows have no pads to drop, so every layer sees the same tokens). Writes ``benchmarks/results/geometry_depth.{json,md,png}``.

    OMP_NUM_THREADS=1 python benchmarks/geometry_depth.py [--tokens 4096] [--models llama-edu,mixer-edu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--models", default=None, help="comma-separated published names (default: all)")
    args = p.parse_args()

    import math

    import torch

    from zoo.evaluate import prepare
    from zoo.geometry.__main__ import model_reference
    from zoo.geometry.hidden_states import language_model
    from zoo.geometry.profile import format_table, layer_entropy_profile, plot_profiles
    from zoo.hub.registry import list_models

    torch.set_num_threads(1)
    names = args.models.split(",") if args.models else list_models(pretrained=True)
    profiles, meta, sections = {}, {}, []
    for name in names:
        t0 = time.time()
        task, dm = prepare(model_reference(name), "val", group="edu", overrides={"layout": "packed"})
        model = task.model.float().eval()
        loader = dm.eval_dataloader("val", max_samples=math.ceil(args.tokens / int(task.hparams.n_ctx)) + 1)
        rows = layer_entropy_profile(model, loader, args.tokens)
        profiles[name] = rows
        meta[name] = {"family": language_model(model).family, "layout": dm.layout, "seconds": time.time() - t0}
        sections.append(f"### {name} ({meta[name]['family']}, {dm.layout})\n\n{format_table(rows, 1.0)}")
        bits = ", ".join(f"{r['entropy_bits']:.2f}" for r in rows)
        print(f"  {name}: {bits}", flush=True)
    head = (f"Matrix entropy (α = 1, bits) of {args.tokens} edu val token representations per layer "
            "(Gram matrix of the unit rows); layer 0 is the embedding.")
    text = "\n\n".join([head, *sections])
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "geometry_depth.md").write_text(text + "\n")
    (RESULTS / "geometry_depth.json").write_text(json.dumps({"args": vars(args), "models": meta,
                                                             "profiles": profiles}, indent=1))
    plot_profiles(profiles, RESULTS / "geometry_depth.png", 1.0,
                  title="published models: matrix entropy of the hidden states against depth")


if __name__ == "__main__":
    main()
