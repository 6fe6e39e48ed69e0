"""Per-token entropy estimates: ``python -m zoo.entropy COMMAND key=value ...``.

Commands:

  estimate   chain-rule estimates with a trained model (an EACD: zoo.fit recipe=eacd_transformer)
             checkpoint=PATH   a .ckpt from zoo.fit, or an exported model folder (required)
             out=DIR           where estimates go: DIR/<token cache name>/entropy.f32 (required)
             split=train       train | val | test
             data=NAME         a data group of recipes/data (default: the model's training data)
             data.KEY=VALUE    override a data option
             max_documents=N   only the first N documents of the split
             batch_size=64     rows (prefixes) per forward pass
             accelerator=cpu   cpu | gpu
             Writes float32 nats aligned token for token with the split's token cache (NaN past
             the model's n_ctx), resumes an interrupted run, prints summary statistics.

  regress    the second-order estimator: a small causal regressor fit to stored estimates
             estimates=DIR     one split's folder written by `estimate` (required)
             steps=500 batch_size=32 lr=2e-3 held_out=0.1 seed=0
             stack.kind=llama stack.d_model=64 stack.n_layers=2 stack.n_heads=4
             out=PATH          save the regressor (torch state dict + spec)
             Prints its fit on held-out documents: R², MAE.

  summary    print the summary statistics of an estimates folder: estimates=DIR

Errors are one line (``error: ...``) with exit status 2.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from zoo.cli import choice, emit, json_target, key_values, number, run_command, writable_folder
from zoo.errors import ZooError, unknown

COMMANDS = {
    "estimate": ("checkpoint", "out", "split", "data", "max_documents", "batch_size", "accelerator", "json"),
    "regress": ("estimates", "steps", "batch_size", "lr", "held_out", "seed", "stack", "out", "json"),
    "summary": ("estimates", "json"),
}
#: options whose values are taken as the typed string
RAW = ("checkpoint", "out", "estimates", "json", "split")


def parse(command: str, argv: Sequence[str]) -> tuple[dict[str, Any], str | None]:
    """``key=value`` arguments (a dotlist) checked against the command's options."""
    key_values(argv, COMMANDS[command], f"option of '{command}'")
    group = next((a.split("=", 1)[1] for a in argv if a.startswith("data=")), None)
    args = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in argv if not a.startswith("data=")]))
    assert isinstance(args, dict)
    for a in argv:  # paths and names as typed (YAML would read `-` as a list, `1e3` as a number)
        key, value = a.split("=", 1)
        if key in RAW:
            args[key] = value
    return args, group


def require(args: dict[str, Any], key: str, what: str) -> Any:
    if args.get(key) in (None, ""):
        raise ZooError(f"{key}= is required ({what})")
    return args[key]


def estimate(args: dict[str, Any], group: str | None) -> list[dict[str, Any]]:
    """Run the chain-rule estimator over every source of the split; one summary per source."""
    from zoo.data.tokenizer import EOT, PAD, token_byte_lengths
    from zoo.entropy.estimate import estimate_split, task_model_fn
    from zoo.evaluate import prepare

    checkpoint = require(args, "checkpoint", "a .ckpt from zoo.fit or an exported model folder")
    require(args, "out", "the folder the estimates are written to")
    out = writable_folder(args, "out")
    assert out is not None
    split = str(args.get("split", "train"))
    batch_size = number(args, "batch_size", 64, minimum=1)
    max_documents = number(args, "max_documents", None, minimum=1)
    accelerator = choice(args, "accelerator", "cpu", ("cpu", "gpu", "cuda"))
    task, dm = prepare(checkpoint, split, group=group, overrides=args.get("data"))
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu")
    task.to(device)
    tok = dm.tokenizer
    pad, eot = tok.convert_tokens_to_ids(PAD), tok.convert_tokens_to_ids(EOT)
    summaries = []
    if dm.streaming and split == "train":
        raise ZooError("data.streaming=true: the training stream is not cached; estimate split=val or split=test")
    for source in dm.eval_sources:
        path = dm.split_path(source, split)
        ident = {"checkpoint": str(Path(checkpoint).resolve()), "vocab_size": len(tok), "pad_id": pad, "eot_id": eot}
        summaries.append(estimate_split(
            task_model_fn(task), path, out, dm.n_ctx, pad, eot, token_byte_lengths(tok),
            batch_size=batch_size, max_documents=max_documents,
            identity=ident, device=device,
        ))
    return summaries


def format_summary(s: dict[str, Any]) -> str:
    if not s.get("tokens"):
        return f"{s.get('split', '?')}: no estimates"
    p = s["percentiles_bits"]
    return (
        f"{s.get('split', '')}: {s['tokens']:,} tokens of {s.get('documents', '?')} documents (n_ctx {s.get('n_ctx')})\n"
        f"  mean {s['mean_bits_per_token']:.4f} bits/token (std {s['std_bits_per_token']:.3f}), "
        f"{s['bits_per_byte']:.4f} bits/byte, {100 * s['fraction_negative']:.1f}% negative\n"
        f"  percentiles (bits): 5% {p['p5']:.3f}  25% {p['p25']:.3f}  50% {p['p50']:.3f}  "
        f"75% {p['p75']:.3f}  95% {p['p95']:.3f}\n"
        f"  written to {s.get('folder')}"
    )


def load_estimates(folder: str | Path) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Documents (tokens, first ``n_ctx``) and their estimates from an estimates folder."""
    from zoo.data.cache import load_split
    from zoo.entropy.estimate import open_estimates

    folder = Path(folder)
    progress = folder / "progress.json"
    if not progress.is_file():
        raise ZooError(f"{folder} holds no estimates (no progress.json): write them with `estimate` first")
    state = json.loads(progress.read_text())
    ident = state["identity"]
    split = load_split(Path(ident["token_cache"]))
    est = open_estimates(folder)
    n = ident["n_ctx"]
    docs, hs = [], []
    for i in range(int(state["done"])):
        d = np.asarray(split.document(i)[:n], dtype=np.int64)
        docs.append(d)
        hs.append(np.asarray(est[split.offsets[i]:split.offsets[i] + len(d)], dtype=np.float32))
    return docs, hs, ident


def regress(args: dict[str, Any]) -> dict[str, Any]:
    from zoo.entropy.regressor import train_regressor

    folder = require(args, "estimates", "a split folder written by `python -m zoo.entropy estimate`")
    options = dict(steps=number(args, "steps", 500, minimum=1), batch_size=number(args, "batch_size", 32, minimum=1),
                   lr=number(args, "lr", 2e-3, float, minimum=0), held_out=number(args, "held_out", 0.1, float, 0, 1),
                   seed=number(args, "seed", 0, minimum=0))
    docs, hs, ident = load_estimates(folder)
    if len(docs) < 2:
        raise ZooError(f"{folder}: need estimates of at least 2 documents, found {len(docs)}")
    model, report = train_regressor(docs, hs, ident["vocab_size"], ident["n_ctx"], ident["pad_id"],
                                    stack=args.get("stack"), **options)
    if args.get("out"):
        torch.save({"state_dict": model.state_dict(), "spec": model.spec, "vocab_size": model.vocab_size,
                    "n_ctx": model.n_ctx, "fit": report, "estimates": str(folder)}, args["out"])
        report["saved"] = str(args["out"])
    return report


def _main(argv: list[str]) -> None:
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise unknown("command", command, COMMANDS)
    args, group = parse(command, rest)
    target = json_target(args)  # checked before the work, whose result it would hold
    if command == "estimate":
        result: Any = estimate(args, group)
        text = "\n".join(format_summary(s) for s in result)
    elif command == "summary":
        folder = Path(require(args, "estimates", "a split folder written by `estimate`"))
        if not (folder / "summary.json").is_file():
            raise ZooError(f"{folder} has no summary.json (the estimate run has not finished)")
        result = json.loads((folder / "summary.json").read_text())
        text = format_summary(result)
    else:
        result = regress(args)
        text = (
            f"second-order estimator on {result['held_out_documents']} held-out documents "
            f"({result['tokens']:,} tokens): R² {result['r2']:.3f}, MAE {result['mae_bits']:.3f} bits "
            f"(predicting the mean: {result['baseline_mae_nats'] / 0.6931471805599453:.3f} bits); "
            f"mean estimate {result['mean_target_bits']:.3f}, predicted {result['mean_pred_bits']:.3f} bits/token"
        )
    emit(result, text, target)


def main(argv: Sequence[str] | None = None) -> None:
    run_command(_main, __doc__, argv)


if __name__ == "__main__":
    main()
