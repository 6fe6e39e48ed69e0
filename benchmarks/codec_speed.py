"""zoo.compress / zoo.decompress speed beside ``xz -9``, on the same text, in one run.

The text is the start of the edu val split (documents joined by ``<|endoftext|>``). Each
codec compresses and decompresses it ``--repeats`` times, in turn with the others (so a
slow minute of a shared machine falls on all of them), and the table gives the best KB/s
(of the original bytes) each way, the size, and the ratio to xz. The models: llama-edu (the
cached, KV path), mixer-edu (the window path: any family; decoding recomputes the window per
token) and eacd-transformer-edu (cached, with its vector in the file)::

    python benchmarks/codec_speed.py [--kb 64] [--rows 64] [--repeats 2]
    python benchmarks/codec_speed.py --big-mb 10 --models llama-edu --repeats 1   # a 10 MB file

``--big-mb N`` instead round-trips N MB of the math and edu train splits (documents joined
by ``<|endoftext|>``), once, beside xz -9 (about 15 minutes for 10 MB on a 2-core CPU).

Writes ``benchmarks/results/codec_speed.{md,json}``. A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import lzma
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.codec import ModelCodec  # noqa: E402
from zoo.data.tokenizer import EOT  # noqa: E402
from zoo.evaluate import prepare  # noqa: E402
from zoo.hub.manifest import checkpoints_dir  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
MODELS = ("llama-edu", "mixer-edu", "eacd-transformer-edu")


class XZ:
    name, path = "xz -9", "-"

    def compress(self, data: bytes) -> bytes:
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=9)

    def decompress(self, blob: bytes) -> bytes:
        return lzma.decompress(blob)


def corpus_text(n_bytes: int, split: str = "val", groups: tuple[str, ...] = ("edu",)) -> bytes:
    """The first ``n_bytes`` of ``split`` of the data ``groups``, documents joined by EOT."""
    docs, total = [], 0
    for group in groups:
        _, dm = prepare(checkpoints_dir() / "llama-edu", split, group=group)
        for doc in dm.eval_sources[0].documents(split):
            docs.append(doc.encode())
            total += len(docs[-1]) + len(EOT)
            if total >= n_bytes:
                return EOT.encode().join(docs)[:n_bytes]
    return EOT.encode().join(docs)[:n_bytes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kb", type=int, default=64, help="KB of edu val text")
    ap.add_argument("--rows", type=int, default=64, help="segments per batch")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--big-mb", type=float, default=0, help="round-trip this many MB of train text instead")
    args = ap.parse_args()
    if args.big_mb:
        text = corpus_text(int(args.big_mb * 1e6), "train", ("math", "edu"))
    else:
        text = corpus_text(args.kb * 1000)
    codecs: list = [XZ()]
    for name in args.models.split(","):
        c = ModelCodec.from_pretrained(checkpoints_dir() / name, rows=args.rows, progress=False)
        c.name, c.path_name = name, c.resolved_path()
        codecs.append(c)
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for c in codecs:
            t0 = time.perf_counter()
            blob = c.compress(text)
            t1 = time.perf_counter()
            back = c.decompress(blob)
            t2 = time.perf_counter()
            assert back == text, c.name
            print(f"{c.name}: {len(text):,} -> {len(blob):,} bytes, encode {t1 - t0:.1f} s, decode {t2 - t1:.1f} s, "
                  "round trip exact", flush=True)
            b = best.setdefault(c.name, {"size": len(blob), "enc": 1e9, "dec": 1e9,
                                         "path": getattr(c, "path_name", "-")})
            b["enc"], b["dec"] = min(b["enc"], t1 - t0), min(b["dec"], t2 - t1)
    xz = best["xz -9"]
    rows = [{"codec": k, "path": v["path"], "bytes": v["size"], "bits_per_byte": 8 * v["size"] / len(text),
             "encode_kb_s": len(text) / 1e3 / v["enc"], "decode_kb_s": len(text) / 1e3 / v["dec"],
             "encode_vs_xz": xz["enc"] / v["enc"], "decode_vs_xz": xz["dec"] / v["dec"]} for k, v in best.items()]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "text_bytes": len(text),
            "command": "python benchmarks/codec_speed.py " + " ".join(sys.argv[1:])}
    what = "math+edu train" if args.big_mb else "edu val"
    lines = [f"`{meta['command']}` ({meta['date']}, {len(text):,} bytes of {what}, torch {meta['torch']}, "
             f"{meta['threads']} threads)", "",
             "| codec | path | bytes | bits/byte | encode KB/s | decode KB/s | encode / xz | decode / xz |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['codec']} | {r['path']} | {r['bytes']:,} | {r['bits_per_byte']:.3f} | {r['encode_kb_s']:,.1f} "
                     f"| {r['decode_kb_s']:,.1f} | {r['encode_vs_xz']:.4f} | {r['decode_vs_xz']:.5f} |")
    md = "\n".join(lines) + "\n"
    OUT.mkdir(exist_ok=True)
    stem = "codec_big" if args.big_mb else "codec_speed"
    (OUT / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (OUT / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
