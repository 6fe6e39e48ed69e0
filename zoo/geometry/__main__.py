"""Information in the geometry of hidden states: ``python -m zoo.geometry entropy key=value ...``.

``entropy`` reads ``tokens`` token representations of a split at every hidden layer of a model
(the embedding output is layer 0, then each block's output; an EACD has its encoder, its
vector and its decoder) and prints, per layer, the matrix (Rényi-α) entropy in bits: the rows
are L2-normalised, their Gram matrix scaled to trace 1, and
``S_α = log2(Σ λ_i^α) / (1 - α)`` of its eigenvalues (α = 1: ``-Σ λ log2 λ``). ``2^S`` is
an effective number of directions the tokens spread over (at most ``min(tokens, d)``).
See docs/geometry.md.

Options (``key=value``):
  checkpoint=NAME    a published model (python -m zoo.models), an exported model folder, or a
                     .ckpt from zoo.fit (required)
  data=NAME          a data group of recipes/data (default: the data the model was trained on)
  data.KEY=VALUE     override a data option, as on every command
  split=val          train | val | test
  tokens=4096        token representations per layer (a seeded random choice of windows)
  alpha=1            the Rényi order α >= 0 (1: von Neumann; 0: log2 of the rank)
  matrix=gram        gram (of the unit rows) | covariance (of the unit rows, centred)
  json=PATH          also write the result as JSON (json=- prints JSON only)
  out=DIR            write DIR/geometry_entropy.{json,png} (the plot of entropy against depth)

Example:
  python -m zoo.geometry entropy checkpoint=llama-edu data=edu split=val tokens=4096 out=runs/geo
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo.cli import (
    choice,
    data_options,
    emit,
    json_target,
    key_values,
    number,
    run_command,
    writable_folder,
)
from zoo.errors import ZooError, unknown

SPLITS = ("train", "val", "test")
KINDS = ("gram", "covariance")  # zoo.geometry.matrix_entropy.KINDS (not imported: torch-free checks)
OPTIONS = ("checkpoint", "data", "split", "tokens", "alpha", "matrix", "json", "out")
COMMANDS = {"entropy": OPTIONS}


def model_reference(ref: str) -> str:
    """A published name resolved to its folder; a folder or ``.ckpt`` path as given. A
    one-line :class:`ZooError` naming ``checkpoint=`` for anything else."""
    path = Path(ref).expanduser()
    if ("/" in ref or ref.endswith(".ckpt")) and not path.exists():  # a path (names have no "/"): no registry
        raise ZooError(f"checkpoint={ref}: no such file or folder")
    from zoo.hub.registry import resolve

    if ref.endswith(".ckpt"):
        if not Path(ref).expanduser().is_file():
            raise ZooError(f"checkpoint={ref}: no such file")
        return ref
    folder = resolve(ref)
    if folder is None:
        raise ZooError(f"checkpoint={ref}: not a published model, a model folder or a .ckpt file "
                       "(python -m zoo.models lists the published ones)")
    return str(folder)


def entropy_command(argv: Sequence[str]) -> dict[str, Any]:
    """The ``entropy`` subcommand: every option checked before the model loads."""
    from omegaconf import OmegaConf

    raw = key_values(argv, OPTIONS)
    dotted = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in argv if a.startswith("data.")]))
    assert isinstance(dotted, dict)
    overrides = dotted.get("data")
    if "checkpoint" not in raw:
        raise ZooError("checkpoint=NAME is required (a published model, a model folder or a .ckpt)")
    split = choice(raw, "split", "val", SPLITS)
    tokens = number(raw, "tokens", 4096, minimum=2)
    alpha = number(raw, "alpha", 1.0, kind=float, minimum=0)
    kind = choice(raw, "matrix", "gram", KINDS)
    target = json_target(raw)
    out = writable_folder(raw, "out")
    group = raw.get("data")
    if group is not None or overrides:
        data_options(group, overrides)  # a bad group or override fails here, before the model loads
    checkpoint = model_reference(raw["checkpoint"])

    from zoo.evaluate import prepare
    from zoo.geometry.hidden_states import language_model
    from zoo.geometry.profile import format_table, layer_entropy_profile, plot_profiles

    task, dm = prepare(checkpoint, split, group=group, overrides=overrides)
    model = task.model.float().eval()
    n_ctx = int(task.hparams.n_ctx)
    windows = math.ceil(tokens / n_ctx) + 1  # + 1: a final window may be short
    loader = dm.eval_dataloader(split, max_samples=windows)
    rows = layer_entropy_profile(model, loader, tokens, alpha, kind, progress=True, total=len(loader))
    if not rows:
        raise ZooError(f"checkpoint={raw['checkpoint']}: the model declares no hidden layers")
    short = [r["name"] for r in rows if r["rows"] < rows[0]["rows"]]
    result = {"checkpoint": raw["checkpoint"], "family": language_model(model).family, "split": split,
              "sources": [s.name for s in dm.sources], "tokens": tokens, "alpha": alpha, "matrix": kind,
              "layers": rows}
    head = (f"{raw['checkpoint']} ({result['family']}) on {'+'.join(result['sources'])}/{split}: matrix entropy "
            f"of {rows[0]['rows']} token representations per layer ({kind} matrix, α={alpha:g}"
            f"{': von Neumann' if alpha == 1 else ''})")
    text = "\n".join([head, format_table(rows, alpha)]
                     + ([f"note: fewer rows at {', '.join(short)} (one per sequence, not per token)"] if short else []))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "geometry_entropy.json").write_text(json.dumps(result, indent=1))
        plot_profiles({raw["checkpoint"]: rows}, out / "geometry_entropy.png", alpha,
                      title=f"{raw['checkpoint']}: matrix entropy against depth")
        text += f"\nwrote {out / 'geometry_entropy.json'} and {out / 'geometry_entropy.png'}"
    emit(result, text, target)
    return result


def _main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        raise unknown("command", argv[0] if argv else "", COMMANDS)
    entropy_command(argv[1:])


def main(argv: Sequence[str] | None = None) -> None:
    run_command(_main, __doc__, argv)


if __name__ == "__main__":
    main()
