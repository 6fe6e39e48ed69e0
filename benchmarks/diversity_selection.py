"""Diverse vs random training subsets: does a subset chosen for its Vendi score train a better model?

From a seeded pool of ``--pool`` documents of the edu train split, select ``--size`` of them
greedily for the Vendi score of their MiniLM embeddings (``zoo.diversity.selection``), and, per
seed, a random subset of the same number of documents whose token count (under the fixed
tokenizer both runs use) is the closest of ``--draws`` seeded random draws to the diverse
subset's: same documents, about the same tokens. Each subset is written as one ``.txt`` file per
document, together with every document of the edu val and test splits, and trained with
``python -m zoo.fit recipe=quickstart data=files``, the two arms of a seed side by side, each on
one CPU thread: the files source splits by
the same hash as edu (same ``val_fraction``, ``test_fraction``, ``split_salt``), so the run trains
on exactly the subset and validates on exactly the edu val split (checked before training). Both
arms use the tokenizer of the published ``llama-edu`` (trained on the edu train split), the same
steps and the same seed; the val BPB is the final report's (best checkpoint by val BPB).

    python benchmarks/diversity_selection.py [--pool 3000] [--size 500] [--seeds 0 1] [--steps 200]

Writes ``benchmarks/results/diversity_selection.{json,md,png}`` and prints the table. Embedding
3000 documents takes ~6 CPU-minutes (cached in ``--work``), the greedy selection ~2 and each
training ~3; a rerun reuses the embeddings and the finished runs' reports.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from zoo.diversity.corpus import corpus_texts
from zoo.diversity.lexical import diversity, words_of
from zoo.diversity.selection import greedy_vendi
from zoo.diversity.semantic import mean_cosine_distance, self_bleu, spectrum, vendi_score
from zoo.diversity.topics import topics

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TOKENIZER = ROOT / "checkpoints" / "llama-edu" / "tokenizer.json"


def token_counts(texts: list[str]) -> np.ndarray:
    """Tokens of each text under the fixed tokenizer (plus the end-of-text each document gets)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    return np.array([len(e.ids) + 1 for e in tok.encode_batch(texts)])


def matched_random(tokens: np.ndarray, size: int, target: int, seed: int, draws: int) -> list[int]:
    """Of ``draws`` seeded random ``size``-subsets, the one whose token total is closest to ``target``."""
    rng = np.random.default_rng(seed)
    best, gap = None, None
    for _ in range(draws):
        pick = rng.choice(len(tokens), size=size, replace=False)
        g = abs(int(tokens[pick].sum()) - target)
        if gap is None or g < gap:
            best, gap = pick, g
    assert best is not None
    return sorted(best.tolist())


def write_corpus(folder: Path, train: list[str], heldout: list[str]) -> None:
    """One .txt per document: the subset, then the edu val and test documents."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate([*train, *heldout]):
        (folder / f"{i:06d}.txt").write_text(text)


def check_splits(folder: Path, train: list[str], val: list[str]) -> None:
    """The files source puts exactly the subset in train and exactly edu's val documents in val."""
    from zoo.data.sources import build_source

    src = build_source({"name": "files", "paths": str(folder / "*.txt")})
    got_train, got_val = sorted(src.documents("train")), sorted(src.documents("val"))
    assert got_train == sorted(train), (len(got_train), len(train))
    assert got_val == sorted(val), (len(got_val), len(val))


def fit_command(folder: Path, name: str, seed: int, steps: int, out_dir: Path) -> list[str]:
    """``zoo.fit recipe=quickstart data=files`` on the subset folder, with the fixed tokenizer."""
    return [sys.executable, "-m", "zoo.fit", "recipe=quickstart", "data=files",
            f"data.sources.0.paths={folder}/*.txt", f"data.tokenizer.path={TOKENIZER}", "data.num_proc=1",
            f"seed={seed}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(steps // 2, 1)}",
            "logger=none", "trainer.enable_progress_bar=false", f"out_dir={out_dir}", f"name={name}",
            "report.splits=[val]", "compile=false"]


def last_report(out_dir: Path, name: str) -> dict | None:
    """The newest final report of run ``name`` (a rerun reuses it instead of training again), with
    ``seconds``: from the run folder's start time (its name) to the report."""
    from datetime import datetime

    runs = sorted((out_dir / name).glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return None
    start = datetime.strptime(runs[-1].parent.name, "%Y-%m-%d_%H-%M-%S").timestamp()
    return {**json.loads(runs[-1].read_text()), "seconds": runs[-1].stat().st_mtime - start}


def train_together(jobs: list[tuple[str, list[str], Path]], out_dir: Path) -> dict[str, dict]:
    """Run the ``(name, command, log)`` trainings side by side, each on one thread; their final reports."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    started, reports = {}, {}
    for name, cmd, log in jobs:
        if (done := last_report(out_dir, name)) is not None:
            reports[name] = {**done, "command": " ".join(cmd[1:])}
            continue
        started[name] = (subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT),
                         cmd)
    for name, (proc, cmd) in started.items():
        if proc.wait() != 0:
            raise SystemExit(f"training {name} failed: see {out_dir.parent}/{name}.log")
        report = last_report(out_dir, name)
        assert report is not None
        reports[name] = {**report, "command": " ".join(cmd[1:])}
    return reports


def describe(texts: list[str], emb: np.ndarray, tokens: np.ndarray, bleu_documents: int) -> dict:
    """The diversity columns of one subset (Self-BLEU on its first ``bleu_documents``)."""
    t = topics(emb, seed=0)
    lex = diversity([words_of(x) for x in texts])
    return {"documents": len(texts), "tokens": int(tokens.sum()), "bytes": sum(len(x.encode()) for x in texts),
            "vendi": vendi_score(emb), "cosine_distance": mean_cosine_distance(emb), "topics": t.k,
            "topic_entropy_bits": t.entropy_bits, "self_bleu": self_bleu(texts[:bleu_documents]),
            "distinct_2": lex["distinct_2"], "mtld": lex["mtld"], "words": lex["words"]}


def plot(rows: list[dict], spectra: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, lam in spectra.items():
        a.semilogy(np.arange(1, len(lam) + 1), np.clip(lam, 1e-8, None), label=name)
    a.set(xlabel="eigenvalue rank", ylabel="eigenvalue of K/n", title="similarity spectrum of each subset")
    a.legend()
    for arm, marker in (("diverse", "o"), ("random", "s")):
        pts = [(r["seed"], r["val_bpb"]) for r in rows if r["arm"] == arm]
        b.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=arm, markersize=8)
    b.set(xlabel="seed", ylabel="val BPB (edu val)", title="val BPB per seed")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=int, default=3000)
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--bleu-documents", type=int, default=100)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "diversity_selection")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    pool = corpus_texts("edu", "train")
    random.Random(0).shuffle(pool)
    pool = pool[:args.pool]
    heldout = corpus_texts("edu", "val") + corpus_texts("edu", "test")
    val = corpus_texts("edu", "val")
    cache = args.work / f"pool{args.pool}.npy"
    if cache.exists():
        emb = np.load(cache)
    else:
        from zoo.diversity.semantic import embed

        emb = embed(pool, desc="embedding the pool")
        np.save(cache, emb)
    tokens = token_counts(pool)
    t = time.time()
    diverse = greedy_vendi(emb, args.size)
    select_s = time.time() - t
    print(f"greedy Vendi selection of {args.size} of {len(pool)}: {select_s:.0f} s", flush=True)
    subsets = {"diverse": sorted(diverse)}
    for s in args.seeds:
        subsets[f"random-{s}"] = matched_random(tokens, args.size, int(tokens[diverse].sum()), s, args.draws)
    stats = {name: describe([pool[i] for i in idx], emb[idx], tokens[idx], args.bleu_documents)
             for name, idx in subsets.items()}
    for name, st in stats.items():
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in st.items()}), flush=True)
    rows = []
    runs = args.work / "runs"
    for s in args.seeds:
        jobs = []
        for arm, name in (("diverse", "diverse"), ("random", f"random-{s}")):
            folder = args.work / "corpora" / name
            train_texts = [pool[i] for i in subsets[name]]
            if not folder.exists():
                write_corpus(folder, train_texts, heldout)
            check_splits(folder, train_texts, val)
            run = f"select-{arm}-s{s}"
            jobs.append((run, fit_command(folder, run, s, args.steps, runs), args.work / f"{run}.log"))
        reports = train_together(jobs, runs)
        for arm, name in (("diverse", "diverse"), ("random", f"random-{s}")):
            report = reports[f"select-{arm}-s{s}"]
            row = {"arm": arm, "seed": s, "subset": name, "val_bpb": report["splits"]["val"]["bpb"],
                   "seconds": report["seconds"], "command": report["command"], **stats[name]}
            rows.append(row)
            print(f"  {arm:8s} seed {s}: val BPB {row['val_bpb']:.4f}  ({row['seconds']:.0f} s)", flush=True)
    write(rows, stats, args, select_s, {n: spectrum(emb[idx]) for n, idx in list(subsets.items())[:2]})


def write(rows: list[dict], stats: dict, args: argparse.Namespace, select_s: float,
          spectra: dict[str, np.ndarray]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    by_arm = {a: [r["val_bpb"] for r in rows if r["arm"] == a] for a in ("diverse", "random")}
    summary = {a: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for a, v in by_arm.items() if v}
    out = {"pool": args.pool, "size": args.size, "seeds": args.seeds, "steps": args.steps, "draws": args.draws,
           "bleu_documents": args.bleu_documents, "selection_seconds": select_s, "subsets": stats, "runs": rows,
           "summary": summary}
    (RESULTS / "diversity_selection.json").write_text(json.dumps(out, indent=1))
    cols = [("documents", "{:,}"), ("tokens", "{:,}"), ("vendi", "{:.1f}"), ("cosine_distance", "{:.4f}"),
            ("topics", "{}"), ("topic_entropy_bits", "{:.3f}"), ("self_bleu", "{:.2f}"), ("distinct_2", "{:.4f}"),
            ("mtld", "{:.1f}")]
    lines = ["| subset | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, st in stats.items():
        lines.append(f"| {name} | " + " | ".join(f.format(st[c]) for c, f in cols) + " |")
    lines += ["", "| arm | seed | val BPB | tokens | seconds |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['val_bpb']:.4f} | {r['tokens']:,} | {r['seconds']:.0f} |")
    lines += ["", "| arm | mean val BPB | std | runs |", "|---|---:|---:|---:|"]
    for a, s in summary.items():
        lines.append(f"| {a} | {s['mean']:.4f} | {s['std']:.4f} | {s['n']} |")
    text = "\n".join(lines)
    (RESULTS / "diversity_selection.md").write_text(
        f"python benchmarks/diversity_selection.py --pool {args.pool} --size {args.size} "
        f"--seeds {' '.join(map(str, args.seeds))} --steps {args.steps}\n\n{text}\n")
    plot(rows, spectra, RESULTS / "diversity_selection.png")
    print(text)


if __name__ == "__main__":
    main()
