"""Which documents a diversity measure sees: a corpus's texts, and an equal word budget of them.

Type-token ratios and distinct-n fall as a sample grows, so corpora compare only on samples of
the same size: :func:`sample_budget` draws documents in a seeded random order until ``words``
word tokens are collected (the last document cut to fit) and keeps each document's text beside
its words, so the lexical, semantic and topic columns all measure the same documents.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from zoo.cli import data_options
from zoo.diversity.lexical import words_of
from zoo.errors import unknown


@dataclass(frozen=True)
class Sampled:
    """One document of a word budget: its full text and its (possibly cut) words."""

    text: str
    words: list[str]


def sample_budget(texts: Iterable[str], words: int, seed: int = 0) -> list[Sampled]:
    """Documents in a seeded random order until ``words`` words (the last one's words cut to fit)."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    out: list[Sampled] = []
    n = 0
    for t in texts:
        w = words_of(t)[:words - n]
        if w:
            out.append(Sampled(t, w))
            n += len(w)
        if n >= words:
            break
    return out


def sample_documents(texts: Iterable[str], words: int, seed: int = 0) -> list[list[str]]:
    """Word lists of :func:`sample_budget`'s documents."""
    return [s.words for s in sample_budget(texts, words, seed)]


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
