"""Lexical diversity of documents given as word lists: what ``python -m zoo.diversity`` prints first.

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
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]")
MTLD_THRESHOLD = 0.72


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
