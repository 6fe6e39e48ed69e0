"""The QAT table: the same EACD trained with and without uniform noise on its vector,
evaluated with weights and vector in several storage formats (``zoo.evaluate quantize=``).

    python benchmarks/qat.py plain=runs/eacd_transformer/<t>/model \\
        noise=runs/eacd_noise/<t>/model noise_before=runs/eacd_noise_before/<t>/model \\
        [max_batches=N] [modes=fp32,int8,...]

Prints one markdown table: for each mode and model, the BPB without the vector's cost
(prediction quality; its change from fp32 is the degradation) and the honest BPB that
charges the vector at the bits of the format it was evaluated in.
"""

from __future__ import annotations

import sys

from zoo.evaluate import evaluate_quantized

MODES = "fp32,bf16,int8,nf4,vec:bf16,vec:int8,vec:fp8_e4m3,vec:fp8_e5m2,int8+vec:fp8_e4m3"


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    modes = opts.pop("modes", MODES)
    max_batches = int(opts.pop("max_batches")) if "max_batches" in opts else None
    models = opts
    if not models:
        print(__doc__)
        raise SystemExit(2)
    results = {name: {r["mode"]: r for r in evaluate_quantized(path, modes, max_batches=max_batches, accelerator="cpu")}
               for name, path in models.items()}
    names = list(results)
    first = results[names[0]]
    head = "| mode | weights (bytes) | vector bits | " + " | ".join(
        f"{n}: BPB free vector (Δ) | {n}: honest BPB" for n in names) + " |"
    print(head)
    print("|" + "---|" * (3 + 2 * len(names)))
    for mode, row in first.items():
        cells = [f"`{mode}`", f"{row['size_bytes']:,}", f"{row['vector_bits']:,}"]
        for n in names:
            r = results[n][mode]
            cells += [f"{r['bpb_free_vector']:.4f} ({r['delta_bpb_free_vector']:+.4f})", f"{r['bpb']:.4f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
