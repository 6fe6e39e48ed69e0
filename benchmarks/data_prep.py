"""Data preparation at scale: FineWeb-edu-schema parquet corpora of several sizes, side by side.

    python benchmarks/data_prep.py [--sizes 0.25 0.5 1.0] [--workdir /tmp/zoo-data-prep]
                                   [--legacy-sizes 0.25] [--heldout 10000]

For each corpus size (GB of text) it builds, once, parquet files in the FineWeb-edu column
schema from the embedded corpora (edu + math documents, four joined per row so rows are
about as long as FineWeb-edu's, each prefixed with its row number so every row is unique,
replicated until the size is reached; 20k rows per row group, ~128 MB of text per file),
then measures, one after another on the same machine:

* ``ceiling``: ``tokenizers``' ``encode_batch`` on all cores over the raw text (only the
  encode calls are timed: nothing can prepare faster than this);
* ``legacy``: the first round's preparation (one pass per split, each over the whole
  stream, tokenised in one Python loop; reproduced here from its code);
* ``datasets.map``: ``load_dataset('parquet')`` (Arrow conversion) + ``map(num_proc=N)``,
  the usual Hugging Face recipe (tokenisation only: no split, no token files);
* ``zoo prepare``: ``python -m zoo.data prepare`` with ``num_proc`` = every CPU;
* time to the first optimizer step of ``python -m zoo.fit`` (a whole 1-step run without
  validation or report: an upper bound) on the prepared cache, and in streaming mode
  (first start: the held-out slice is tokenised; second start: it is cached).

Every row runs in a fresh subprocess; peak RSS is the largest sum of RSS over that process
and its children, sampled every 0.1 s. One tokenizer (8192 tokens, trained once on a bounded
sample) serves every row. Prints a table and writes ``results.json`` in the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
ROWS_PER_GROUP = 20_000
FILE_BYTES = 128 * 2**20


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def build_corpus(folder: Path, size_gb: float) -> list[Path]:
    """Parquet files in the FineWeb-edu schema with ``size_gb`` GB of text (built once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = folder / "done.json"
    if done.is_file():
        return [folder / f for f in json.loads(done.read_text())["files"]]
    folder.mkdir(parents=True, exist_ok=True)
    from zoo.data.sources import build_source

    base = [d for name in ("edu", "math") for split in ("train", "val", "test")
            for d in build_source({"name": name}).documents(split)]
    target, written, row, files = int(size_gb * 1e9), 0, 0, []
    while written < target:
        path = folder / f"part-{len(files):04d}.parquet"
        writer, in_file = None, 0
        while in_file < FILE_BYTES and written < target:
            texts = []
            for _ in range(ROWS_PER_GROUP):
                k = (row * 4) % len(base)
                texts.append(f"[{row}] " + "\n\n".join(base[k:k + 4]))
                row += 1
            n = sum(len(t.encode()) for t in texts)
            table = pa.table({
                "text": texts, "id": [f"<urn:uuid:{row - len(texts) + i}>" for i in range(len(texts))],
                "dump": ["CC-MAIN-2024-10"] * len(texts), "url": ["https://example.org/"] * len(texts),
                "file_path": ["s3://bench"] * len(texts), "language": ["en"] * len(texts),
                "language_score": [0.9] * len(texts), "token_count": [len(t) // 4 for t in texts],
                "score": [3.5] * len(texts), "int_score": [4] * len(texts),
            })
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=ROWS_PER_GROUP)
            in_file += n
            written += n
        writer.close()
        files.append(path.name)
    done.write_text(json.dumps({"files": files, "bytes": written, "rows": row}))
    return [folder / f for f in files]


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``cmd``; wall seconds, peak RSS (process tree), and its last stdout line."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    top = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    last = [line for line in out.splitlines() if line.startswith("RESULT ")]
    result = json.loads(last[-1][7:]) if last else {}
    return {"wall_s": wall, "peak_rss": peak, **result}


SNIPPETS = {
    # the raw ceiling: encode_batch over the text, all cores (only the encode calls are timed)
    "ceiling": """
        import json, time, pyarrow.parquet as pq
        from zoo.data.tokenizer import load_tokenizer
        tok = load_tokenizer(TOKENIZER).backend_tokenizer
        docs = tokens = nbytes = 0; spent = 0.0
        for f in FILES:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=["text"]):
                texts = batch.column(0).to_pylist()
                t = time.perf_counter(); enc = tok.encode_batch_fast(texts, add_special_tokens=False)
                spent += time.perf_counter() - t
                docs += len(texts); tokens += sum(len(e.ids) for e in enc); nbytes += sum(len(x.encode()) for x in texts)
        print("RESULT " + json.dumps({"docs": docs, "tokens": tokens, "bytes": nbytes, "timed_s": spent}))
    """,
    # the first round's preparation: one pass over the stream per split, tokenised in a Python loop
    "legacy": """
        import json, numpy as np
        from zoo.data.sources import build_source
        from zoo.data.tokenizer import EOT, load_tokenizer
        tok = load_tokenizer(TOKENIZER); eot = tok.convert_tokens_to_ids(EOT)
        src = build_source({"name": "fineweb-edu", "data_files": FILES})
        docs = tokens = nbytes = 0
        with open(OUT + "/legacy.bin", "wb") as f:
            for split in ("train", "val", "test"):
                batch = []
                def flush():
                    global docs, tokens, nbytes
                    for ids in tok(batch, add_special_tokens=False)["input_ids"]:
                        arr = np.asarray([*ids, eot], dtype=np.uint16); f.write(arr.tobytes())
                        docs += 1; tokens += len(arr)
                    nbytes += sum(len(t.encode()) for t in batch); batch.clear()
                for doc in src.documents(split):
                    batch.append(doc)
                    if len(batch) >= 512: flush()
                if batch: flush()
        print("RESULT " + json.dumps({"docs": docs, "tokens": tokens, "bytes": nbytes}))
    """,
    # the usual Hugging Face recipe: Arrow conversion, then map(num_proc)
    "datasets.map": """
        import json, os, datasets
        from zoo.data.tokenizer import load_tokenizer
        tok = load_tokenizer(TOKENIZER)
        ds = datasets.load_dataset("parquet", data_files=FILES, split="train", cache_dir=OUT + "/hf")
        def encode(b):
            return {"n": [len(x) for x in tok(b["text"], add_special_tokens=False)["input_ids"]],
                    "b": [len(t.encode()) for t in b["text"]]}
        out = ds.map(encode, batched=True, num_proc=NPROC, remove_columns=ds.column_names)
        print("RESULT " + json.dumps({"docs": len(out), "tokens": int(sum(out["n"])) + len(out), "bytes": int(sum(out["b"]))}))
    """,
}


def snippet(name: str, files: list[Path], tokenizer: Path, out: Path, nproc: int) -> list[str]:
    code = textwrap.dedent(SNIPPETS[name])
    head = (f"TOKENIZER={str(tokenizer)!r}; FILES={[str(f) for f in files]!r}; OUT={str(out)!r}; NPROC={nproc}\n")
    return [sys.executable, "-c", head + code]


def zoo_prepare_result(folder: Path) -> dict:
    totals = {"docs": 0, "tokens": 0, "bytes": 0}
    for cache in folder.glob("tokens/*/complete.json"):
        for s in json.loads(cache.read_text())["splits"].values():
            totals["docs"] += s["n_documents"]
            totals["tokens"] += s["n_tokens"]
            totals["bytes"] += s["n_bytes"]
    return totals


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="corpus sizes, GB of text")
    parser.add_argument("--legacy-sizes", type=float, nargs="*", default=None,
                        help="sizes to run the (slow) first-round preparation on (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/zoo-data-prep"))
    parser.add_argument("--heldout", type=int, default=10_000, help="streaming: held-out documents")
    parser.add_argument("--skip", nargs="*", default=[], help="rows to skip: ceiling legacy datasets.map zoo fit")
    args = parser.parse_args()
    nproc = len(os.sched_getaffinity(0))
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))

    # one tokenizer for every row, trained once on a bounded sample (not timed)
    tokenizer = work / "tokenizer.json"
    if not tokenizer.is_file():
        from zoo.data.datamodule import TextDataModule
        from zoo.data.tokenizer import save_tokenizer

        dm = TextDataModule([{"name": "edu"}, {"name": "math"}], tokenizer={"vocab_size": 8192},
                            cache_dir=work / "tok-cache")
        save_tokenizer(dm.tokenizer, tokenizer)

    results = []
    for size in args.sizes:
        files = build_corpus(work / f"corpus-{size:g}GB", size)
        info = json.loads((work / f"corpus-{size:g}GB" / "done.json").read_text())
        row = {"size_gb": size, "rows": info["rows"], "text_bytes": info["bytes"], "files": len(files)}
        glob = str(work / f"corpus-{size:g}GB" / "*.parquet")
        data = ["data=fineweb_edu", f"data.sources.0.data_files={glob}", "data.sources.0.max_documents=null",
                f"data.tokenizer.path={tokenizer}"]

        def scratch(name: str, size: float = size) -> Path:
            path = work / "scratch" / f"{name}-{size:g}"
            subprocess.run(["rm", "-rf", str(path)], check=True)
            path.mkdir(parents=True)
            return path

        methods = [("ceiling", "ceiling"), ("legacy", "legacy"), ("datasets.map", "datasets.map")]
        for key, name in methods:
            if name in args.skip or (name == "legacy" and args.legacy_sizes is not None and size not in args.legacy_sizes):
                continue
            out = scratch(key)
            row[key] = measure(snippet(name, files, tokenizer, out, nproc))
            row[key]["disk"] = disk_bytes(out)
            subprocess.run(["rm", "-rf", str(out)], check=True)
            print(f"{size:g} GB {key}: {row[key]['wall_s']:.1f} s", flush=True)
        if "zoo" not in args.skip:
            cache = scratch("zoo")
            env = {"ZOO_CACHE": str(cache)}
            row["zoo"] = measure([sys.executable, "-m", "zoo.data", "prepare", *data, f"num_proc={nproc}"], env)
            row["zoo"].update(zoo_prepare_result(cache), disk=disk_bytes(cache / "tokens"))
            print(f"{size:g} GB zoo prepare: {row['zoo']['wall_s']:.1f} s", flush=True)
            if "fit" not in args.skip:
                fit = [sys.executable, "-m", "zoo.fit", "recipe=clm", *data, "logger=none", "trainer.max_steps=1",
                       "trainer.limit_val_batches=0", "report.splits=[]", "trainer.enable_progress_bar=false",
                       f"out_dir={work / 'runs'}"]
                row["first_step_cached"] = measure(fit, env)["wall_s"]
                stream = [*fit, "data.streaming=true", f"data.heldout_documents={args.heldout}"]
                row["first_step_streaming_first"] = measure(stream, env)["wall_s"]
                row["first_step_streaming"] = measure(stream, env)["wall_s"]
                print(f"{size:g} GB first step: cached {row['first_step_cached']:.1f} s, streaming "
                      f"{row['first_step_streaming_first']:.1f} s (first start) / {row['first_step_streaming']:.1f} s",
                      flush=True)
            subprocess.run(["rm", "-rf", str(cache)], check=True)
        results.append(row)

    meta = {"cpu": cpu_model(), "cores": nproc, "date": time.strftime("%Y-%m-%d"),
            "python": platform.python_version(), "results": results}
    (work / "results.json").write_text(json.dumps(meta, indent=1))
    print(table(meta))


def table(meta: dict) -> str:
    lines = [f"machine: {meta['cpu']}, {meta['cores']} cores; {meta['date']}", "",
             "| corpus | method | docs | tokens | wall s | MB/s | tokens/s | × ceiling | peak RSS MB | disk MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in meta["results"]:
        ceiling = r.get("ceiling", {})
        ceil_rate = ceiling.get("tokens", 0) / ceiling["timed_s"] if ceiling.get("timed_s") else None
        for key in ("ceiling", "legacy", "datasets.map", "zoo"):
            m = r.get(key)
            if not m:
                continue
            seconds = m["timed_s"] if key == "ceiling" else m["wall_s"]
            rate = m["tokens"] / seconds
            ratio = f"{rate / ceil_rate:.2f}" if ceil_rate else "—"
            lines.append(f"| {r['size_gb']:g} GB | {key} | {m['docs']:,} | {m['tokens']:,} | {seconds:.1f} | "
                         f"{m['bytes'] / seconds / 1e6:.2f} | {rate:,.0f} | {ratio} | {m['peak_rss'] / 2**20:,.0f} | "
                         f"{m.get('disk', 0) / 2**20:,.0f} |")
    lines += ["", "| corpus | first step, prepared cache (s) | streaming, first start (s) | streaming (s) |",
              "|---|---:|---:|---:|"]
    for r in meta["results"]:
        if "first_step_cached" in r:
            lines.append(f"| {r['size_gb']:g} GB | {r['first_step_cached']:.1f} | "
                         f"{r['first_step_streaming_first']:.1f} | {r['first_step_streaming']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
