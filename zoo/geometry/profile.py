"""Entropy against depth: the matrix entropy of every hidden layer of a model, and its plot."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from zoo.geometry.hidden_states import collect_hidden_states
from zoo.geometry.matrix_entropy import density_spectrum, renyi_entropy


def entropy_rows(states: Mapping[str, Tensor], alpha: float = 1.0, kind: str = "gram",
                 with_pads: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One row per layer of ``states`` (layer name -> ``[N, d]``, in depth order): ``layer``
    (0 = the first, the embedding), ``name``, ``rows`` (N), ``dim`` (d), ``entropy_bits``
    (``S_α``), ``effective_rank`` (``2^S_α``) and ``fraction`` (``S_α / log2 min(N, d)``,
    1 = spread evenly over every direction the layer could fill), and ``with_pads`` (the
    layer's rows include pad positions: see :func:`collect_hidden_states`)."""
    padded = set(with_pads)
    out = []
    for i, (name, x) in enumerate(states.items()):
        s = renyi_entropy(density_spectrum(x, kind), alpha)
        most = math.log2(max(min(x.shape[0], x.shape[1]), 2))
        out.append({"layer": i, "name": name, "rows": int(x.shape[0]), "dim": int(x.shape[1]), "entropy_bits": s,
                    "effective_rank": 2.0**s, "fraction": s / most, "with_pads": name in padded})
    return out


def layer_entropy_profile(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], tokens: int,
                          alpha: float = 1.0, kind: str = "gram", progress: bool = False,
                          total: int | None = None) -> list[dict[str, Any]]:
    """:func:`entropy_rows` of the first ``tokens`` tokens' representations at every hidden
    layer of ``model`` (:func:`zoo.geometry.hidden_states.collect_hidden_states`)."""
    padded: set[str] = set()
    states = collect_hidden_states(model, batches, tokens, progress=progress, total=total, with_pads=padded)
    return entropy_rows(states, alpha, kind, padded)


def format_table(rows: Sequence[Mapping[str, Any]], alpha: float) -> str:
    """A markdown table of :func:`entropy_rows`."""
    lines = [f"| layer | module | tokens | dim | S_{alpha:g} bits | 2^S | S / log2 min(N, d) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['name']}{' (pads kept)' if r.get('with_pads') else ''} | {r['rows']} | {r['dim']} | {r['entropy_bits']:.3f} | "
                     f"{r['effective_rank']:.1f} | {r['fraction']:.3f} |")
    return "\n".join(lines)


def plot_profiles(profiles: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, alpha: float = 1.0,
                  title: str | None = None) -> Path:
    """A PNG of entropy against depth, one line per model (label -> :func:`entropy_rows`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, rows in profiles.items():
        ax.plot([r["layer"] for r in rows], [r["entropy_bits"] for r in rows], marker="o", label=label)
    if len(profiles) == 1:
        rows = next(iter(profiles.values()))
        ax.set_xticks([r["layer"] for r in rows], [r["name"] for r in rows], rotation=35, ha="right", fontsize=7)
    ax.set_xlabel("layer (0 = embedding)")
    ax.set_ylabel(f"matrix entropy S_{alpha:g} (bits)")
    ax.set_title(title or "matrix entropy of the hidden states against depth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
