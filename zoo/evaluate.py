"""Evaluate a trained model: ``python -m zoo.evaluate checkpoint=PATH [key=value ...]``.

Scores one split of a data source with a Lightning ``.ckpt`` or an exported model folder and
reports bits per byte, cross-entropy, perplexity, predictive entropy, the tokens and bytes
counted, and the same text's bits per byte under ``gzip -9``, ``bz2 -9`` and ``xz -9``.

Options (all ``key=value``):
  checkpoint=PATH    a .ckpt from zoo.fit, or a model folder (model.safetensors + config.yaml)
  split=val          train | val | test
  data=NAME          score another data group from recipes/data (default: the training data)
  data.KEY=VALUE     override a data option (e.g. data.eval_batch_size=8)
  max_batches=N      score only the first N batches
  json=PATH          also write the results as JSON (json=- prints JSON instead of the table)
  accelerator=auto   cpu | gpu | auto (quantize= defaults to cpu: the models are quantised there)
  quantize=MODES     score once per storage mode and print one table: size in bytes, BPB and
                     its change from fp32. MODES: all, or a comma-separated list of
                     W (weights: fp32 bf16 fp16 int8 nf4 fp4; int8/nf4/fp4 via bitsandbytes),
                     vec:V (the EACD's vector: fp32 bf16 fp16 fp8_e4m3 fp8_e5m2 int8) or W+vec:V,
                     e.g. quantize=int8,nf4,vec:fp8_e4m3,int8+vec:int8
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from zoo.cli import data_options, emit, key_values, number, run_command
from zoo.compression import COMPRESSORS, compressed_bits_per_byte
from zoo.data.datamodule import TextDataModule
from zoo.data.layouts import IGNORE_INDEX
from zoo.data.sources import SPLITS
from zoo.data.tokenizer import save_tokenizer, tokenizer_fingerprint
from zoo.errors import ZooError, unknown
from zoo.hub.folder import load_pretrained, read_checkpoint, tokenizer_from_checkpoint
from zoo.lit.language_model import LanguageModelTask
from zoo.metrics import METRIC_LABELS, SIDE_INFO_FREE_BPB
from zoo.quantize import (
    modes_table,
    parse_modes,
    quantize_weights,
    stored_bytes,
    weight_bytes_per_float,
)

OPTIONS = ("checkpoint", "split", "data", "max_batches", "json", "accelerator", "quantize")


def load_task(path: str | Path) -> tuple[LanguageModelTask, Any, dict[str, Any]]:
    """``(task, tokenizer, run config)`` from a ``.ckpt`` or an exported model folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        model, tokenizer, spec = load_pretrained(p)
        task = LanguageModelTask(model=spec["model"], vocab_size=spec["vocab_size"], n_ctx=spec["n_ctx"])
        task.model = model
        run = dict(spec.get("run") or {})
        run.setdefault("data", {"layout": spec.get("layout", "packed")})
        run["data"]["n_ctx"] = spec["n_ctx"]
        return task, tokenizer, run
    ckpt = read_checkpoint(p)
    hp = ckpt.get("hyper_parameters", {})
    task = LanguageModelTask(model=hp["model"], vocab_size=hp["vocab_size"], n_ctx=hp["n_ctx"])
    try:
        task.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ZooError(f"{p}: weights do not fit the model its config describes ({str(e).splitlines()[0]})") from e
    return task, tokenizer_from_checkpoint(ckpt), dict(ckpt["zoo"]["config"])


def prepare(
    checkpoint: str | Path, split: str = "val", data: Mapping[str, Any] | None = None
) -> tuple[LanguageModelTask, TextDataModule]:
    """Load ``checkpoint`` and a prepared DataModule over its data (or ``data`` overrides)
    tokenised with the model's own tokenizer."""
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    task, tokenizer, run = load_task(checkpoint)
    data_cfg = {**dict(run.get("data") or {}), **dict(data or {})}
    if not data_cfg.get("sources"):
        raise ZooError("this model folder records no training data; give data=NAME (e.g. data=edu)")
    cache_dir = Path(data_cfg.get("cache_dir") or TextDataModule(sources=[{"name": "edu"}]).cache_dir)
    tok_path = save_tokenizer(tokenizer, cache_dir / "tokenizers" / f"model-{tokenizer_fingerprint(tokenizer)}")
    data_cfg["tokenizer"] = {"path": str(tok_path)}
    data_cfg.pop("num_workers", None)
    dm = TextDataModule(**data_cfg)
    if dm.n_ctx != task.hparams.n_ctx:
        raise ZooError(f"data.n_ctx={dm.n_ctx} differs from the model's n_ctx={task.hparams.n_ctx}")
    dm.prepare_data()
    return task, dm


def score(task: LanguageModelTask, loader: Any, split: str, max_batches: int | None = None,
          accelerator: str = "auto") -> dict[str, float]:
    """The task's evaluation metrics (``bpb``, ``ce``, ...) over ``loader`` with a real Trainer."""
    task.report_stages = [f"report_{split}"]
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # not "GPU available: False" once per scoring
    try:
        trainer = L.Trainer(
            accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
            limit_test_batches=max_batches, enable_model_summary=False, enable_progress_bar=False,
        )
        (metrics,) = trainer.test(task, dataloaders=loader, verbose=False)
    finally:
        quiet.setLevel(level)
    return {k.split("/")[-1]: float(v) for k, v in metrics.items()}


def evaluate(
    checkpoint: str | Path,
    split: str = "val",
    data: Mapping[str, Any] | None = None,
    max_batches: int | None = None,
    accelerator: str = "auto",
    compressors: Sequence[str] = COMPRESSORS,
) -> dict[str, Any]:
    """Score ``split`` and return the metrics plus the compressors' BPB on the same text.

    ``data`` overrides keys of the run's ``data:`` section (e.g. ``{"sources": [...]}``).
    """
    task, dm = prepare(checkpoint, split, data)
    loader = dm.eval_dataloader(split)
    row: dict[str, Any] = score(task, loader, split, max_batches, accelerator)
    tokens = bytes_ = 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        bytes_ += int(batch["target_bytes"].sum())
    row.update(tokens=tokens, bytes=bytes_, bytes_per_token=bytes_ / max(tokens, 1))
    if dm.layout == "left_padded":  # only each document's first n_ctx tokens are scored
        text = dm.scored_text(loader, max_batches)
    else:
        text = dm.split_text(split, max_bytes=bytes_ if max_batches is not None else None)
    for c in compressors:
        row[c] = compressed_bits_per_byte(text, c)
    row.update(checkpoint=str(checkpoint), split=split, sources=[s.name for s in dm.sources])
    return row


def evaluate_quantized(
    checkpoint: str | Path,
    modes: str = "all",
    split: str = "val",
    data: Mapping[str, Any] | None = None,
    max_batches: int | None = None,
    accelerator: str = "cpu",
) -> list[dict[str, Any]]:
    """Score ``split`` once per storage mode (:mod:`zoo.quantize`): weights in fp32, bf16,
    fp16 or bitsandbytes int8/nf4/fp4, the EACD's vector in any vector format. Each row has
    the mode, the model's stored size in bytes, its BPB (charging the vector at the bits of
    the format it was evaluated in) and the change from the full-precision reference.
    """
    task, dm = prepare(checkpoint, split, data)
    original = task.model
    has_vector = hasattr(original, "set_vector_format")
    loader = dm.eval_dataloader(split)
    rows: list[dict[str, Any]] = []
    for mode in tqdm(parse_modes(modes, has_vector), desc="quantize modes", unit="mode"):
        model, share = quantize_weights(original, mode.weights)
        if has_vector:
            model.set_vector_format(mode.vector or original.vector_format.name)
        task.model = model
        task.refresh_metrics()
        metrics = score(task, loader, split, max_batches, accelerator)
        row = {"mode": mode.name, "weights": mode.weights, "vector": mode.vector,
               "size_bytes": stored_bytes(model, weight_bytes_per_float(mode.weights)),
               "quantized_share": share, **metrics}
        if has_vector:
            row["vector_bits"] = int(model.side_bits_per_sequence)
        ref = rows[0] if rows else row
        row["delta_bpb"] = row["bpb"] - ref["bpb"]
        if SIDE_INFO_FREE_BPB in row:
            row[f"delta_{SIDE_INFO_FREE_BPB}"] = row[SIDE_INFO_FREE_BPB] - ref[SIDE_INFO_FREE_BPB]
        rows.append(row)
    for row in rows:
        row.update(checkpoint=str(checkpoint), split=split, sources=[s.name for s in dm.sources])
    return rows


def format_row(row: Mapping[str, Any]) -> str:
    lines = [f"{row['checkpoint']} on {'+'.join(row['sources'])}/{row['split']}"]
    for key, label in METRIC_LABELS.items():
        if key in row:
            lines.append(f"  {label:34s} {row[key]:10.4f}")
    lines.append(f"  {'tokens / bytes scored':34s} {row['tokens']:,} / {row['bytes']:,} "
                 f"({row['bytes_per_token']:.2f} bytes/token)")
    for c in COMPRESSORS:
        if c in row:
            lines.append(f"  {c + ' -9 (bits per byte)':34s} {row[c]:10.4f}")
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    raw = key_values(argv, OPTIONS)  # strings kept as typed
    group = raw.get("data")
    args = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in argv if not a.startswith("data=")]))
    assert isinstance(args, dict)
    if "checkpoint" not in args:
        raise ZooError("checkpoint=PATH is required (a .ckpt from zoo.fit or an exported model folder)")
    data = data_options(group, args.get("data"))  # a recipes/data group, then data.KEY=VALUE
    common = dict(split=str(args.get("split", "val")), data=data, max_batches=number(args, "max_batches", None, minimum=1))
    if "quantize" in raw:
        result: Any = evaluate_quantized(raw["checkpoint"], raw["quantize"],
                                         accelerator=str(args.get("accelerator", "cpu")), **common)
        text = f"{raw['checkpoint']} on {'+'.join(result[0]['sources'])}/{result[0]['split']}\n" + modes_table(result)
    else:
        result = evaluate(raw["checkpoint"], accelerator=str(args.get("accelerator", "auto")), **common)
        text = format_row(result)
    emit(result, text, raw.get("json"))


def main(argv: Sequence[str] | None = None) -> None:
    run_command(_main, __doc__, argv)


if __name__ == "__main__":
    main()
