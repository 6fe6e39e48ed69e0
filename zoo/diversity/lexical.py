"""Data diversity of text corpora: ``python -m zoo.diversity data=edu,math [key=value ...]``.

For each corpus it draws documents of a split in a seeded random order until ``words``
word tokens are collected (the same number for every corpus: type-token ratios and distinct-n
fall as a sample grows, so only equal-sized samples compare), and prints side by side:

* **TTR** — type-token ratio: distinct words / words.
* **MTLD** — measure of textual lexical diversity (McCarthy & Jarvis 2010): the mean length
  of word runs whose running TTR stays above 0.72, forward and backward averaged; unlike TTR it
  hardly depends on the sample size.
* **distinct-n** (n = 1, 2, 4) — distinct n-grams / n-grams (within documents).
* **H_n** (n = 1..4) — Shannon entropy in bits of the n-gram distribution (plug-in estimate;
  ``H_n - H_{n-1}`` is the entropy of a word given the n-1 before it, biased low once most
  n-grams are seen once).
* **Hill numbers** of the word distribution — effective numbers of words of order 0 (the number
  of types), 1 (``2^H_1``: exp of Shannon) and 2 (``1 / sum p^2``: inverse Simpson).

Words are lowercased ``\\w+`` runs and single punctuation marks (so LaTeX's ``\\frac{1}{2}``
gives ``\\ frac { 1 } { 2 }``). Everything is pure Python/NumPy.

Options (``key=value``):
  data=edu,math      comma-separated data groups of recipes/data or source names (e.g. markov)
  data.KEY=VALUE     override a data option of each of them, as on every command
                     (e.g. data=files data.sources.0.paths='my/*.txt')
  split=train        train | val | test
  words=100000       word tokens sampled per corpus
  seed=0             seed of the document order
  json=PATH          also write the table as JSON (json=- prints JSON only)
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from zoo.cli import data_options, emit, json_target, key_values, number, run_command
from zoo.errors import ZooError, unknown

WORD = re.compile(r"\w+|[^\w\s]")
MTLD_THRESHOLD = 0.72
OPTIONS = ("data", "split", "words", "seed", "json")


def words_of(text: str) -> list[str]:
    """Lowercased word tokens of a text (``\\w+`` runs and single punctuation marks)."""
    return WORD.findall(text.lower())


def _mtld_pass(words: Sequence[str], threshold: float) -> float:
    factors, types, count = 0.0, set(), 0
    for w in words:
        types.add(w)
        count += 1
        if len(types) / count <= threshold:
            factors += 1
            types, count = set(), 0
    if count:  # a partial factor for the remainder
        ttr = len(types) / count
        factors += (1 - ttr) / (1 - threshold) if ttr < 1 else 0.0
    return len(words) / factors if factors else float(len(words))


def mtld(words: Sequence[str], threshold: float = MTLD_THRESHOLD) -> float:
    """MTLD: mean of the forward and the backward pass."""
    if not words:
        return 0.0
    return 0.5 * (_mtld_pass(words, threshold) + _mtld_pass(list(reversed(words)), threshold))


def ngrams(docs: Iterable[Sequence[str]], n: int) -> Counter:
    """Counts of the n-grams inside each document."""
    c: Counter = Counter()
    for d in docs:
        c.update(zip(*(d[i:] for i in range(n)), strict=False))
    return c


def shannon_bits(counts: Iterable[int]) -> float:
    """Plug-in Shannon entropy in bits of a frequency table."""
    c = np.fromiter(counts, dtype=np.float64)
    if c.sum() == 0:
        return 0.0
    p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum())


def hill_numbers(counts: Iterable[int]) -> dict[str, float]:
    """Effective numbers of types of order 0, 1 and 2."""
    c = np.fromiter(counts, dtype=np.float64)
    p = c[c > 0] / c.sum()
    return {"hill_0": float(len(p)), "hill_1": float(2 ** -(p * np.log2(p)).sum()), "hill_2": float(1 / (p**2).sum())}


def diversity(docs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Every measure of the module docstring for documents given as word lists."""
    stream = [w for d in docs for w in d]
    uni = Counter(stream)
    out: dict[str, float] = {"documents": float(len(docs)), "words": float(len(stream)),
                             "ttr": len(uni) / max(len(stream), 1), "mtld": mtld(stream)}
    for n in (1, 2, 4):
        g = uni if n == 1 else ngrams(docs, n)
        out[f"distinct_{n}"] = len(g) / max(sum(g.values()), 1)
    for n in (1, 2, 3, 4):
        out[f"H_{n}"] = shannon_bits((uni if n == 1 else ngrams(docs, n)).values())
    out.update(hill_numbers(uni.values()))
    return out


def sample_documents(texts: Iterable[str], words: int, seed: int = 0) -> list[list[str]]:
    """Word lists of documents in a seeded random order until ``words`` words (the last
    document cut to fit)."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    out, n = [], 0
    for t in texts:
        w = words_of(t)[:words - n]
        if w:
            out.append(w)
            n += len(w)
        if n >= words:
            break
    return out


def corpus_texts(name: str, split: str, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """Documents of a data group (recipes/data/NAME.yaml, all its sources) or a source name,
    with the ``data.KEY=VALUE`` ``overrides`` applied as every command applies them
    (:func:`zoo.cli.data_options`)."""
    from zoo.data.sources import build_source, list_sources
    from zoo.recipes import list_group

    if name in list_group("data"):
        spec = data_options(name, overrides)
    elif name in list_sources():
        spec = data_options(None, overrides, base={"sources": [{"name": name}]})
    else:
        raise unknown("data group or source", name, sorted({*list_group("data"), *list_sources()}))
    sources = [{k: v for k, v in s.items() if k != "weight"} for s in spec["sources"]]
    return [doc for s in sources for doc in build_source(s).documents(split)]


ROWS = [("documents", "documents", "{:,.0f}"), ("words", "words", "{:,.0f}"), ("ttr", "TTR", "{:.4f}"),
        ("mtld", "MTLD", "{:.1f}"), ("distinct_1", "distinct-1", "{:.4f}"), ("distinct_2", "distinct-2", "{:.4f}"),
        ("distinct_4", "distinct-4", "{:.4f}"), ("H_1", "H_1 bits", "{:.3f}"), ("H_2", "H_2 bits", "{:.3f}"),
        ("H_3", "H_3 bits", "{:.3f}"), ("H_4", "H_4 bits", "{:.3f}"), ("hill_0", "Hill q=0", "{:,.0f}"),
        ("hill_1", "Hill q=1", "{:,.1f}"), ("hill_2", "Hill q=2", "{:,.1f}")]


def table(results: Mapping[str, Mapping[str, float]]) -> str:
    """A markdown table: one row per measure, one column per corpus."""
    names = list(results)
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt.format(results[n][key]) for n in names) + " |")
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    from omegaconf import OmegaConf

    args = key_values(argv, OPTIONS)
    names = [n for n in args.get("data", "edu,math").split(",") if n]
    overrides = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in argv if a.startswith("data.")]))
    assert isinstance(overrides, dict)
    split = args.get("split", "train")
    words, seed = number(args, "words", 100_000, minimum=1), number(args, "seed", 0, minimum=0)
    target = json_target(args)
    results = {}
    for name in names:
        docs = sample_documents(corpus_texts(name, split, overrides.get("data")), words, seed)
        if not docs:
            raise ZooError(f"data '{name}' has no words in its {split} split")
        results[name] = diversity(docs)
    short = [n for n, r in results.items() if r["words"] < words]
    lines = [f"data diversity, {split} split, {words:,} words per corpus (seed {seed})"]
    if short:
        lines.append(f"note: {', '.join(short)} had fewer words than asked; compare TTR/distinct-n with care")
    emit(results, "\n".join([*lines, table(results)]), target)


def main(argv: Sequence[str] | None = None) -> None:
    run_command(_main, __doc__, argv, help_when_empty=False)


if __name__ == "__main__":
    main()
