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

import math
import sys

import torch

from zoo.evaluate import evaluate_quantized, prepare
from zoo.metrics import token_stats
from zoo.quantize import get_vector_format

MODES = "fp32,bf16,int8,nf4,vec:bf16,vec:int8,vec:fp8_e4m3,vec:fp8_e5m2,int8+vec:fp8_e4m3"


@torch.no_grad()
def vector_stats(path: str, max_batches: int | None) -> dict[str, float]:
    """How much the decoder relies on its vector, and how the vector looks, over the val
    batches it is scored on: the BPB gain of the true vector over another sequence's vector
    (the batch's vectors rolled by one; ~0 means the decoder ignores the vector, and then no
    storage format can hurt), the vector's RMS and largest magnitude, and its mean relative
    error stored in E4M3 (which saturates at 448)."""
    task, dm = prepare(path, "val")
    model = task.model.eval()
    vectors, bits, bits_other, n_bytes = [], 0.0, 0.0, 0
    for i, batch in enumerate(dm.eval_dataloader("val")):
        if max_batches is not None and i >= max_batches:
            break
        v = model.vector(batch["input_ids"], batch["attention_mask"], batch["labels"])
        vectors.append(v)
        for vec, total in ((v, "own"), (v.roll(1, 0), "other")):
            logits = model.decode(batch["input_ids"], batch["attention_mask"], vec)
            nll = token_stats(logits, batch["labels"], batch["target_bytes"], with_entropy=False).nll.sum().item()
            if total == "own":
                bits += nll / math.log(2)
            else:
                bits_other += nll / math.log(2)
        n_bytes += int(batch["target_bytes"].sum())
    v = torch.cat(vectors)
    e4m3 = get_vector_format("fp8_e4m3").round_trip(v)
    return {"BPB gain of own vector over another's": (bits_other - bits) / n_bytes,
            "rms": v.pow(2).mean().sqrt().item(), "max |v|": v.abs().max().item(),
            "E4M3 rel. error": ((e4m3 - v).norm(dim=-1) / v.norm(dim=-1)).mean().item()}


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
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
    print("vector statistics on the evaluated batches (why a format helps or hurts):")
    for name, path in models.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in vector_stats(path, max_batches).items()))
    print()
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
