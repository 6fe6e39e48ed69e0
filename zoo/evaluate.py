"""Evaluate a trained model: ``python -m zoo.evaluate checkpoint=PATH [key=value ...]``.

Scores one split of a data source with a Lightning ``.ckpt`` or an exported model folder and
reports bits per byte, cross-entropy, perplexity, predictive entropy, the tokens and bytes
counted, and the same text's bits per byte under ``gzip -9``, ``bz2 -9``, ``xz -9``,
``zstd -22`` and PPMd (order 8).

Options (all ``key=value``):
  checkpoint=PATH    a .ckpt from zoo.fit, or a model folder (model.safetensors + config.yaml)
  text=PATHS         score EVERY document of these files instead of a split: a file, folder or
                     glob of .txt (one document per file), .jsonl or .parquet (column "text")
  split=val          train | val | test
  data=NAME          score another data group from recipes/data (default: the training data)
  data.KEY=VALUE     override a data option (e.g. data.eval_batch_size=8)
  max_batches=N      score only the first N batches
  json=PATH          also write the results as JSON (json=- prints JSON instead of the table)
  compressors=LIST   classical baselines on the same text, comma-separated (default all five:
                     gzip,bz2,xz,zstd,ppmd; zstd -22 and PPMd order 8 take about a second per MB)
  accelerator=auto   cpu | gpu | auto (quantize= defaults to cpu: the models are quantised there)
  quantize=MODES     score once per storage mode and print one table: size in bytes, BPB and
                     its change from fp32. MODES: all, or a comma-separated list of
                     W (weights: fp32 bf16 fp16 int8 nf4 fp4; int8/nf4/fp4 via bitsandbytes),
                     vec:V (the EACD's vector: fp32 bf16 fp16 fp8_e4m3 fp8_e5m2 int8 int4) or W+vec:V,
                     e.g. quantize=int8,nf4,vec:fp8_e4m3,int8+vec:int8
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from zoo.cli import choice, data_options, emit, json_target, key_values, number, run_command
from zoo.compression import COMPRESSOR_LABELS, COMPRESSORS, compressed_bits_per_byte
from zoo.data.cache import TokenizedSplit, default_cache_dir
from zoo.data.datamodule import TextDataModule, scored_bytes
from zoo.data.layouts import IGNORE_INDEX, LeftPaddedDataset, PackedDataset
from zoo.data.sources import SPLITS, build_source
from zoo.data.tokenizer import (
    EOT,
    PAD,
    load_tokenizer,
    save_tokenizer,
    token_byte_lengths,
    tokenizer_fingerprint,
)
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
from zoo.schema import DEFAULT_COMPRESSORS

OPTIONS = ("checkpoint", "text", "split", "data", "max_batches", "json", "accelerator", "quantize", "compressors")
#: what accelerator= takes (Lightning's names)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def check_vocabulary(tokenizer: Any, vocab_size: int, where: str) -> None:
    """Refuse a tokenizer whose size is not the model's vocabulary: its ids mean other tokens
    (or none), so any score it gives is meaningless."""
    if len(tokenizer) != int(vocab_size):
        raise ZooError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}; "
            "a model is scored only with the tokenizer it was trained with"
        )


def load_task(path: str | Path) -> tuple[LanguageModelTask, Any, dict[str, Any]]:
    """``(task, tokenizer, run config)`` from a ``.ckpt`` or an exported model folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        model, tokenizer, spec = load_pretrained(p)
        check_vocabulary(tokenizer, spec["vocab_size"], str(p / "tokenizer.json"))
        task = LanguageModelTask(model=spec["model"], vocab_size=spec["vocab_size"], n_ctx=spec["n_ctx"])
        task.model = model
        run = dict(spec.get("run") or {})
        run["data"] = dict(run.get("data") or {"layout": spec.get("layout", "packed")})
        run["data"]["n_ctx"] = spec["n_ctx"]
        return task, tokenizer, run
    ckpt = read_checkpoint(p)
    hp = ckpt.get("hyper_parameters", {})
    tokenizer = tokenizer_from_checkpoint(ckpt)
    check_vocabulary(tokenizer, hp["vocab_size"], str(p))
    task = LanguageModelTask(model=hp["model"], vocab_size=hp["vocab_size"], n_ctx=hp["n_ctx"])
    try:
        task.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ZooError(f"{p}: weights do not fit the model its config describes ({str(e).splitlines()[0]})") from e
    return task, tokenizer, dict(ckpt["zoo"]["config"])


@contextlib.contextmanager
def cache_writes(cache_dir: Path) -> Iterator[None]:
    """Inside: a write refused by a read-only cache is a one-line :class:`ZooError`."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise ZooError(
            f"the cache {cache_dir} is read-only and this data is not in it yet (cannot write "
            f"{e.filename or 'to it'}); prepare it where the cache is writable, or point ZOO_CACHE "
            "(or data.cache_dir) at a writable folder"
        ) from None


def cached_tokenizer(tokenizer: Any, cache_dir: Path) -> Path:
    """The model's tokenizer as a file in the cache (where the token caches are keyed on it),
    written only if that very tokenizer is not there yet: a complete cache is only read."""
    path = cache_dir / "tokenizers" / f"model-{tokenizer_fingerprint(tokenizer)}" / "tokenizer.json"
    if path.is_file():
        with contextlib.suppress(ZooError):
            if tokenizer_fingerprint(load_tokenizer(path)) == tokenizer_fingerprint(tokenizer):
                return path
    with cache_writes(cache_dir):
        return save_tokenizer(tokenizer, path)


def _check_tokenizer_override(spec: Any, tokenizer: Any, vocab_size: int) -> None:
    """``data.tokenizer...`` given for a trained model: only its own tokenizer is allowed."""
    if not spec:
        return
    spec = dict(spec) if isinstance(spec, Mapping) else {"path": spec}
    other = sorted(k for k, v in spec.items() if k != "path" and v is not None)
    if other:
        raise ZooError(f"data.tokenizer.{other[0]}: a trained model is scored with its own tokenizer; drop data.tokenizer")
    if spec.get("path"):
        given = load_tokenizer(spec["path"])
        check_vocabulary(given, vocab_size, f"data.tokenizer.path={spec['path']}")
        if tokenizer_fingerprint(given) != tokenizer_fingerprint(tokenizer):
            raise ZooError(f"data.tokenizer.path={spec['path']} is not the tokenizer the model was trained with; "
                           "drop data.tokenizer (the model's own is used)")


def prepare(
    checkpoint: str | Path, split: str = "val", data: Mapping[str, Any] | None = None, *,
    group: str | None = None, overrides: Mapping[str, Any] | None = None,
) -> tuple[LanguageModelTask, TextDataModule]:
    """Load ``checkpoint`` and a prepared DataModule over its data tokenised with the model's
    own tokenizer.

    The data is the run's ``data:`` section with ``data``'s keys replaced (e.g.
    ``{"sources": [...]}``), then data group ``group`` and the ``data.KEY=VALUE`` ``overrides``
    applied as on ``zoo.fit`` (:func:`zoo.cli.data_options`).
    """
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    task, tokenizer, run = load_named_task(checkpoint)
    _check_tokenizer_override((overrides or {}).get("tokenizer") or (data or {}).get("tokenizer"),
                              tokenizer, task.hparams.vocab_size)
    data_cfg = data_options(group, overrides, base={**dict(run.get("data") or {}), **dict(data or {})})
    if not data_cfg.get("sources"):
        raise ZooError("this model folder records no training data; give data=NAME (e.g. data=edu)")
    cache_dir = Path(data_cfg.get("cache_dir") or default_cache_dir()).expanduser()
    data_cfg["tokenizer"] = {"path": str(cached_tokenizer(tokenizer, cache_dir))}
    data_cfg.pop("num_workers", None)
    dm = TextDataModule(**data_cfg)
    if dm.n_ctx != task.hparams.n_ctx:
        raise ZooError(f"data.n_ctx={dm.n_ctx} differs from the model's n_ctx={task.hparams.n_ctx}")
    with cache_writes(cache_dir):
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


def load_named_task(checkpoint: str | Path) -> tuple[LanguageModelTask, Any, dict[str, Any]]:
    """:func:`load_task`, with an error that names the ``checkpoint=`` option."""
    try:
        return load_task(checkpoint)
    except ZooError as e:
        raise ZooError(f"checkpoint={checkpoint}: {e}") from None


def text_documents(paths: str | Sequence[str]) -> list[str]:
    """Every document of the files ``paths`` names (a file, folder or glob, or a list of them),
    read as the ``files`` source reads them: ``.txt`` one document per file, ``.jsonl`` and
    ``.parquet`` one per record (column ``text``), line endings normalised, ends stripped."""
    source = build_source({"name": "files", "paths": paths})
    return list(source.stream())


def text_loader(docs: Sequence[str], tokenizer: Any, n_ctx: int, layout: str, batch_size: int) -> DataLoader:
    """Batches that score every token of ``docs`` (tokenised with ``tokenizer``) in the
    model's layout, as :mod:`zoo.data.layouts` cuts a split.

    Packed: the documents as one stream, each after an end-of-text token (so every one of its
    tokens, the first included, is predicted), in windows of ``n_ctx + 1``. Left-padded: one
    sample per document, its first ``n_ctx`` tokens.
    """
    eot, pad = tokenizer.convert_tokens_to_ids(EOT), tokenizer.convert_tokens_to_ids(PAD)
    ids = [enc.ids for enc in tokenizer.backend_tokenizer.encode_batch(list(docs), add_special_tokens=False)]
    offsets = np.cumsum([0] + [len(d) + 1 for d in ids])
    stream = np.asarray([t for d in ids for t in (*d, eot)], dtype=np.int64)
    n_bytes = sum(len(d.encode("utf-8", "surrogatepass")) for d in docs)
    lut = token_byte_lengths(tokenizer)
    if layout == "left_padded":
        ds: Any = LeftPaddedDataset(TokenizedSplit("text", stream, offsets, n_bytes, Path(".")), n_ctx, lut, pad, eot)
    else:
        led = np.concatenate([[eot], stream])
        ds = PackedDataset(TokenizedSplit("text", led, offsets + 1, n_bytes, Path(".")), n_ctx, lut, pad, drop_last=False)
    return DataLoader(ds, batch_size=batch_size, shuffle=False)


def _counted(loader: Any, max_batches: int | None) -> dict[str, Any]:
    """Tokens and bytes the batches of ``loader`` score (the first ``max_batches``)."""
    tokens = bytes_ = 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        bytes_ += int(batch["target_bytes"].sum())
    return {"tokens": tokens, "bytes": bytes_, "bytes_per_token": bytes_ / max(tokens, 1)}


def evaluate_text(
    checkpoint: str | Path, text: str | Sequence[str], max_batches: int | None = None,
    accelerator: str = "auto", compressors: Sequence[str] = DEFAULT_COMPRESSORS,
) -> dict[str, Any]:
    """Score EVERY document of the files ``text`` names (no split) with the model's own
    tokenizer: the metrics of :func:`evaluate`, plus the compressors on the same bytes."""
    task, tokenizer, run = load_named_task(checkpoint)
    docs = text_documents(text)
    data = dict(run.get("data") or {})
    layout = str(data.get("layout") or "packed")
    loader = text_loader(docs, tokenizer, int(task.hparams.n_ctx), layout,
                         int(data.get("eval_batch_size") or data.get("batch_size") or 16))
    row: dict[str, Any] = score(task, loader, "test", max_batches, accelerator)
    row.update(_counted(loader, max_batches))
    if layout == "left_padded" or max_batches is not None:  # only part of each document is scored
        scored = scored_bytes(loader, tokenizer, max_batches)
    else:
        scored = "\n".join(docs).encode("utf-8", "surrogatepass")
    for c in compressors:
        row[c] = compressed_bits_per_byte(scored, c)
    row.update(checkpoint=str(checkpoint), split="all", sources=[str(text)], documents=len(docs))
    return row


def evaluate(
    checkpoint: str | Path,
    split: str = "val",
    data: Mapping[str, Any] | None = None,
    max_batches: int | None = None,
    accelerator: str = "auto",
    compressors: Sequence[str] = DEFAULT_COMPRESSORS,
    *,
    group: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``split`` and return the metrics plus the compressors' BPB on the same text.

    ``data`` replaces keys of the run's ``data:`` section (e.g. ``{"sources": [...]}``);
    ``group`` and ``overrides`` are ``data=NAME`` and the ``data.KEY=VALUE`` arguments.
    """
    task, dm = prepare(checkpoint, split, data, group=group, overrides=overrides)
    loader = dm.eval_dataloader(split)
    row: dict[str, Any] = score(task, loader, split, max_batches, accelerator)
    row.update(_counted(loader, max_batches))
    if dm.layout == "left_padded":  # only each document's first n_ctx tokens are scored
        text = dm.scored_text(loader, max_batches)
    else:
        text = dm.split_text(split, max_bytes=row["bytes"] if max_batches is not None else None)
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
    *,
    group: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Score ``split`` once per storage mode (:mod:`zoo.quantize`): weights in fp32, bf16,
    fp16 or bitsandbytes int8/nf4/fp4, the EACD's vector in any vector format. Each row has
    the mode, the model's stored size in bytes, its BPB (charging the vector at the bits of
    the format it was evaluated in) and the change from the full-precision reference.
    """
    task, dm = prepare(checkpoint, split, data, group=group, overrides=overrides)
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
    if "documents" in row:  # text=
        lines = [f"{row['checkpoint']} on {row['documents']:,} documents of {'+'.join(row['sources'])}"]
    else:
        lines = [f"{row['checkpoint']} on {'+'.join(row['sources'])}/{row['split']}"]
    for key, label in METRIC_LABELS.items():
        if key in row:
            lines.append(f"  {label:34s} {row[key]:10.4f}")
    lines.append(f"  {'tokens / bytes scored':34s} {row['tokens']:,} / {row['bytes']:,} "
                 f"({row['bytes_per_token']:.2f} bytes/token)")
    for c in COMPRESSORS:
        if c in row:
            lines.append(f"  {COMPRESSOR_LABELS[c] + ' (bits per byte)':34s} {row[c]:10.4f}")
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    raw = key_values(argv, OPTIONS)  # strings kept as typed
    group = raw.get("data")
    args = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in argv if not a.startswith("data=")]))
    assert isinstance(args, dict)
    if "checkpoint" not in args:
        raise ZooError("checkpoint=PATH is required (a .ckpt from zoo.fit or an exported model folder)")
    # every option is checked before any work is done (and before a result could be lost)
    max_batches = number(args, "max_batches", None, minimum=1)
    accelerator = choice(args, "accelerator", "cpu" if "quantize" in raw else "auto", ACCELERATORS)
    target = json_target(raw)
    compressors = DEFAULT_COMPRESSORS
    if "compressors" in raw:
        compressors = tuple(c.strip() for c in raw["compressors"].split(",") if c.strip())
        bad = [c for c in compressors if c not in COMPRESSORS]
        if bad or not compressors:
            raise ZooError(f"compressors must be a comma-separated list of {', '.join(COMPRESSORS)}; got {raw['compressors']!r}")
    if "text" in raw:
        clash = next((k for k in ("split", "data", "quantize") if k in args or k in raw), None)
        if clash:
            raise ZooError(f"text= scores every document of the files: drop {clash}= "
                           "(data options, splits and quantize= apply to a data source)")
        try:  # the files exist, before the model loads
            build_source({"name": "files", "paths": raw["text"]})
        except ZooError as e:
            raise ZooError(f"text={raw['text']}: {e}") from None
        result: Any = evaluate_text(raw["checkpoint"], raw["text"], max_batches, accelerator, compressors)
        emit(result, format_row(result), target)
        return
    common = dict(split=str(args.get("split", "val")), group=group, overrides=args.get("data"),
                  max_batches=max_batches, accelerator=accelerator)
    if "quantize" in raw:
        result = evaluate_quantized(raw["checkpoint"], raw["quantize"], **common)
        text = f"{raw['checkpoint']} on {'+'.join(result[0]['sources'])}/{result[0]['split']}\n" + modes_table(result)
    else:
        result = evaluate(raw["checkpoint"], compressors=compressors, **common)
        text = format_row(result)
    emit(result, text, target)


def main(argv: Sequence[str] | None = None) -> None:
    run_command(_main, __doc__, argv)


if __name__ == "__main__":
    main()
