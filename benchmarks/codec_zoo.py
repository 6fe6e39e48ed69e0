"""Every published model as a real compressor, on the val splits it was scored on.

For each published model and each of the ``edu`` and ``math`` val splits this script

1. builds the file the model's ``zoo.evaluate`` numbers are about: the documents the split's
   batches score, joined by ``<|endoftext|>`` (for a packed model: the whole split; for a
   left-padded one, an EACD: each document's first ``n_ctx`` tokens);
2. compresses it with ``zoo.compress`` (the model's default numeric path and segmentation,
   ``rows`` segments per batch) and compares the file's coded bits (the file minus its fixed
   header) with ``BPB x bytes`` from the model's card (written by ``zoo.evaluate`` when the
   model was published; tests/test_checkpoints.py checks the cards still reproduce);
3. decompresses it (``--decode``: every model; default: the Llama models only, as the window
   path decodes one full window per token) and checks every byte;
4. runs gzip -9, bz2 -9, xz -9, zstd -22 and PPMd (order 8) on the same file.

Writes ``benchmarks/results/codec_zoo.{md,json}``. About 15-25 minutes on a 2-core CPU::

    python benchmarks/codec_zoo.py [--models llama-edu,mixer-edu] [--splits edu,math] [--decode all]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.codec import Container, ModelCodec  # noqa: E402
from zoo.compression import COMPRESSOR_LABELS, COMPRESSORS, compressed_bits_per_byte  # noqa: E402
from zoo.data.tokenizer import EOT, token_bytes  # noqa: E402
from zoo.evaluate import prepare  # noqa: E402
from zoo.hub.card import read_card  # noqa: E402
from zoo.hub.manifest import checkpoints_dir  # noqa: E402
from zoo.hub.registry import list_models  # noqa: E402

OUT = ROOT / "benchmarks" / "results"


def scored_file(folder: Path, data: str) -> tuple[bytes, int]:
    """The documents ``zoo.evaluate`` scores on ``data``'s val split, joined by
    ``<|endoftext|>``, and the bytes it counts (the documents' own, without separators)."""
    _, dm = prepare(folder, "val", group=data)
    table = token_bytes(dm.tokenizer)
    table[dm.tokenizer.convert_tokens_to_ids(EOT)] = EOT.encode()  # a packed split's ends are labels
    rows = [b"".join(table[t] for t in labels if t >= 0)
            for batch in dm.eval_dataloader("val") for labels in batch["labels"].tolist()]
    text = (EOT.encode() if dm.layout == "left_padded" else b"").join(rows)
    return text, len(text) - len(EOT.encode()) * text.count(EOT.encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="all", help="comma-separated published names (default: all)")
    ap.add_argument("--splits", default="edu,math", help="data groups whose val split to compress")
    ap.add_argument("--rows", type=int, default=64, help="segments per batch")
    ap.add_argument("--decode", default="cached", help="which files to decompress: all | cached | none")
    ap.add_argument("--out", default=str(OUT / "codec_zoo"), help="results path, without suffix")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models' rows of an existing results file, replacing these models' rows")
    args = ap.parse_args()
    names = list_models(pretrained=True) if args.models == "all" else args.models.split(",")
    rows = []
    for name in names:
        folder = checkpoints_dir() / name
        card = read_card(folder)
        codec = ModelCodec.from_pretrained(folder, rows=args.rows, progress=False)
        for data in args.splits.split(","):
            ev = card["eval"].get(data)
            if ev is None:
                continue
            text, n_bytes = scored_file(folder, data)
            start = time.perf_counter()
            blob = codec.compress(text)
            enc_s = time.perf_counter() - start
            box = Container.from_bytes(blob)
            coded_bits = 8 * (len(blob) - box.overhead_bytes)
            promised = ev["bpb"] * ev["bytes"]
            row = {"model": name, "split": f"{data}/val", "path": box.header["numerics"]["path"],
                   "segments": box.header["segments"], "file_bytes": len(text), "scored_bytes": n_bytes,
                   "card_bytes": ev["bytes"], "card_bpb": ev["bpb"], "compressed_bytes": len(blob),
                   "header_bytes": box.overhead_bytes, "side_bytes": len(box.side), "coded_bits": coded_bits,
                   "promised_bits": promised, "excess": coded_bits / promised - 1,
                   "file_bpb": 8 * len(blob) / len(text), "encode_s": enc_s, "encode_kb_s": len(text) / 1e3 / enc_s,
                   **codec.last_stats}
            # the coder against the model's own probabilities: exact -log2 p, and capped at 24 bits
            row["coder_overhead"] = (coded_bits - row["side_bits"] - row["model_bits"]) / row["model_bits"]
            row["cap_saving"] = 1 - row["capped_bits"] / row["model_bits"]
            if args.decode == "all" or (args.decode == "cached" and row["path"] == "cached"):
                start = time.perf_counter()
                back = codec.decompress(blob)
                row["decode_s"] = time.perf_counter() - start
                row["decode_kb_s"] = len(text) / 1e3 / row["decode_s"]
                row["round_trip"] = back == text
            for c in COMPRESSORS:
                row[c] = compressed_bits_per_byte(text, c)
            rows.append(row)
            print(f"{name:22s} {data}/val {len(text):>9,} B -> {len(blob):>9,} B  {row['file_bpb']:.4f} bpb "
                  f"(card {ev['bpb']:.4f}; coded/promised {row['excess']:+.3%}; over-24-bit share "
                  f"{row['cap_saving']:.3%})  xz {row['xz']:.4f}  "
                  f"ppmd {row['ppmd']:.4f}  enc {row['encode_kb_s']:.1f} KB/s"
                  + (f"  dec {row['decode_kb_s']:.1f} KB/s round trip {row['round_trip']}" if "decode_s" in row else ""),
                  flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
            "command": "python benchmarks/codec_zoo.py " + " ".join(sys.argv[1:]), "rows": args.rows}
    old = Path(args.out + ".json")
    if args.merge and old.is_file():
        before = json.loads(old.read_text())
        rows = sorted([r for r in before["rows"] if r["model"] not in names] + rows,
                      key=lambda r: (r["model"], r["split"]))
        meta["command"] = f"{before['meta']['command']}; then {meta['command']} ({meta['date']})"
        meta["date"] = before["meta"]["date"]
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    Path(args.out + ".md").write_text(table(rows, meta))
    print(table(rows, meta))


def table(rows: list[dict], meta: dict) -> str:
    lines = [f"`{meta['command']}` ({meta['date']})", "",
             "| model | split | path | file bytes | zoo.compress bytes | bits/byte | card BPB | coded vs BPB×bytes "
             "| tokens over 24 bits: share of the model's bits | coded vs capped -log2 p | "
             + " | ".join(COMPRESSOR_LABELS[c] for c in COMPRESSORS) + " | round trip |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(COMPRESSORS) + "---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['split']} | {r['path']}/{r['segments']} | {r['file_bytes']:,} | {r['compressed_bytes']:,} "
            f"| {r['file_bpb']:.3f} | {r['card_bpb']:.3f} | {r['excess']:+.2%} | {r['cap_saving']:.2%} "
            f"| {(r['coded_bits'] - r['side_bits']) / r['capped_bits'] - 1:+.3%} | "
            + " | ".join(f"{r[c]:.3f}" for c in COMPRESSORS)
            + f" | {'yes' if r.get('round_trip') else ('FAILED' if 'round_trip' in r else 'not run')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
