"""One training run: data, model, logger, checkpoints, Trainer, final report and export.

:func:`train` is what ``python -m zoo.fit`` runs once Hydra has composed the recipe; tests
and notebooks call it directly with a config from :func:`zoo.recipes.compose`.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from zoo.callbacks import (
    AtomicCheckpointIO,
    LoggedStepsThroughput,
    NonFiniteGuard,
    RNGState,
    SaveOnInterrupt,
    remove_stale_temporaries,
)
from zoo.compression import COMPRESSOR_LABELS, compressed_bits_per_byte
from zoo.data.datamodule import TextDataModule
from zoo.data.tokenizer import tokenizer_fingerprint
from zoo.errors import ZooError, did_you_mean
from zoo.hub.folder import (
    load_pretrained,
    model_state,
    read_checkpoint,
    save_adapter,
    save_pretrained,
    tokenizer_from_checkpoint,
)
from zoo.lit.language_model import LanguageModelTask
from zoo.loggers import build_logger
from zoo.metrics import SIDE_INFO_FREE_BPB
from zoo.models import build_model, parameter_counts
from zoo.models.adapters import (
    base_model_config,
    is_adapted,
    load_base_state,
    merge_adapter,
)
from zoo.progress import progress_callbacks
from zoo.schema import COMPILE_AUTO_MIN_STEPS

log = logging.getLogger("zoo.fit")


class ZooMetadata(Callback):
    """Stores the run's resolved config and tokenizer inside every ``.ckpt``, so a checkpoint
    alone is enough to evaluate or export the model."""

    def __init__(self, config: Mapping[str, Any], tokenizer_json: str) -> None:
        self.config, self.tokenizer_json = dict(config), tokenizer_json

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["zoo"] = {"config": self.config, "tokenizer": self.tokenizer_json}


def build_trainer(trainer_cfg: Mapping[str, Any], **extra: Any) -> L.Trainer:
    """``L.Trainer(**trainer_cfg, **extra)`` with a clear error for keys it does not take."""
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in trainer_cfg:
        if key not in allowed:
            raise ZooError(
                f"trainer.{key} is not a Lightning Trainer argument{did_you_mean(key, allowed)}"
            )
    try:
        return L.Trainer(**trainer_cfg, **extra)
    except (ValueError, TypeError, MisconfigurationException) as e:  # Lightning's message is clear
        raise ZooError(f"invalid trainer configuration: {e}") from e


STRATEGY_ALIASES = ("fsdp", "fsdp2")


def build_strategy(name: Any, model: Any, trainer_cfg: Mapping[str, Any]) -> Any:
    """Lightning strategy for ``trainer.strategy``; ``fsdp`` and ``fsdp2`` wrap the model family's
    own block classes (``model.block_classes``), every other name goes to Lightning as it is.

    * ``fsdp``: ``FSDPStrategy`` with one FSDP unit per block (GPU only).
    * ``fsdp2``: ``ModelParallelStrategy`` (data parallel over all devices, no tensor
      parallelism); the LightningModule applies ``fully_shard`` per block in
      ``configure_model``. Runs on CPU (gloo) too. Checkpoints are consolidated into one file,
      so they load in a single process.
    """
    if not isinstance(name, str) or name not in STRATEGY_ALIASES:
        return name
    blocks = set(getattr(model, "block_classes", ()))
    if not blocks:
        raise ZooError(f"trainer.strategy={name}: model {type(model).__name__} declares no block_classes to shard")
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy=blocks, state_dict_type="full")
    from lightning.pytorch.strategies import ModelParallelStrategy

    devices = trainer_cfg.get("devices", 1)
    if not isinstance(devices, int) or devices < 1:
        import torch

        devices = torch.cuda.device_count() if trainer_cfg.get("accelerator") in ("gpu", "cuda", "auto") else 1
    world = max(devices, 1) * int(trainer_cfg.get("num_nodes", 1))
    return ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1, save_distributed_checkpoint=False)


def init_weights_from(task: LanguageModelTask, source: str, tokenizer: Any) -> None:
    """Copy weights from a zoo ``.ckpt`` or exported model folder into ``task.model``.

    The source must have been trained with the same tokenizer as this run: the same vocabulary
    size with other merges would load without complaint and silently mean other tokens.
    """
    path = Path(source).expanduser()
    if not path.exists():  # a published name (checkpoints/NAME), e.g. init_from=llama-edu
        from zoo.hub.registry import list_models, resolve

        folder = resolve(source)
        if folder is None:
            published = list_models(pretrained=True)
            raise ZooError(
                f"init_from={source}: no such checkpoint file, model folder or published model"
                f"{did_you_mean(str(source), published)}; published models: {', '.join(published) or 'none'}"
            )
        path = folder
    if path.is_dir():
        model, source_tokenizer, _ = load_pretrained(path)
        state = model.state_dict()
    else:
        ckpt = read_checkpoint(path)
        state, source_tokenizer = model_state(ckpt), tokenizer_from_checkpoint(ckpt)
    hint = path / "tokenizer.json" if path.is_dir() else "the tokenizer it was trained with"
    check_tokenizer(f"init_from={source}", source_tokenizer, tokenizer, f"train with its tokenizer: data.tokenizer.path={hint}")
    try:
        load_base_state(task.model, state)  # an adapted model: into its frozen base
    except RuntimeError as e:
        raise ZooError(f"init_from={source}: weights do not fit this model ({str(e).splitlines()[0]})") from e


def check_tokenizer(what: str, source: Any, tokenizer: Any, advice: str) -> None:
    """Refuse weights trained with another tokenizer than this run's: the same vocabulary size
    with other merges would load without complaint and silently mean other tokens."""
    if tokenizer_fingerprint(source) != tokenizer_fingerprint(tokenizer):
        raise ZooError(
            f"{what} was trained with a different tokenizer than this run's "
            f"({len(source)} vs {len(tokenizer)} tokens); {advice}"
        )


GPU_ACCELERATORS = ("gpu", "cuda")


def check_devices(trainer_cfg: Mapping[str, Any]) -> None:
    """Refuse a GPU trainer on a machine without a CUDA GPU at once, before any data, logger
    or run folder exists (Lightning would say it only after all of them)."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator in GPU_ACCELERATORS:
        import torch

        if not torch.cuda.is_available():
            raise ZooError(
                f"trainer.accelerator={accelerator}: no CUDA GPU is available on this machine; on CPUs "
                "use trainer=cpu (one process) or trainer=ddp_cpu (DDP over CPU processes)"
            )


def should_compile(config: Mapping[str, Any]) -> bool:
    """``compile``: ``true``/``false``, or ``auto``: compile a run of at least
    :data:`zoo.schema.COMPILE_AUTO_MIN_STEPS` steps, long enough to repay the compilation."""
    choice = config.get("compile", "auto")
    if choice == "auto":
        steps = int(dict(config.get("trainer") or {}).get("max_steps", -1) or -1)
        return steps >= COMPILE_AUTO_MIN_STEPS
    return bool(choice)


def check_resume(source: str, ckpt: Mapping[str, Any], task: LanguageModelTask, tokenizer: Any) -> None:
    """Refuse a checkpoint this run cannot continue: another tokenizer, or weights of another
    model (another family, other sizes) than the one this run builds. Checked before Lightning
    loads it, which would fail with the whole list of mismatched keys."""
    new_run = "start a new run (another out_dir= or name=)"
    check_tokenizer(f"resume={source}", tokenizer_from_checkpoint(ckpt), tokenizer,
                    f"resume with the data options it was trained with, or {new_run}")
    held, built = ckpt["state_dict"], task.state_dict()
    if held.keys() == built.keys() and all(tuple(held[k].shape) == tuple(built[k].shape) for k in built):
        return
    hp = dict(ckpt.get("hyper_parameters") or {})
    there = {**{f"model.{k}": v for k, v in dict(hp.get("model") or {}).items()},
             "vocab_size": hp.get("vocab_size"), "n_ctx": hp.get("n_ctx")}
    here = {**{f"model.{k}": v for k, v in dict(task.hparams["model"]).items()},
            "vocab_size": task.hparams["vocab_size"], "n_ctx": task.hparams["n_ctx"]}
    keys = ["model.family"] if there.get("model.family") != here.get("model.family") else sorted(set(there) | set(here))
    diff = [f"{k}: {there.get(k)} there, {here.get(k)} here" for k in keys
            if there.get(k) != here.get(k)] or ["the same options, other parameters"]
    if any(".hf." in k for k in held) and not any(".hf." in k for k in built):
        diff = ["saved by an older zoo, whose Llama kept q/k/v unfused: its optimizer state cannot continue"]
    raise ZooError(
        f"resume={source}: the checkpoint holds another model than this run builds ({'; '.join(diff)}); "
        f"to train this model {new_run}, or start it from those weights with init_from=PATH"
    )


def check_enough_data(dm: TextDataModule, world: int) -> None:
    """Refuse a run whose train split has not one global batch of samples (a long ``data.n_ctx``
    on a small corpus): it would train nothing and end without a checkpoint."""
    if dm.streaming:
        return
    n, batch = len(dm.dataset("train")), dm.batch_size * world
    if n < batch:
        raise ZooError(
            f"data.n_ctx={dm.n_ctx}: the train split holds {n} sample(s) of {dm.n_ctx + 1} tokens, fewer than "
            f"one batch of {batch} (data.batch_size={dm.batch_size} x {world} process(es)); "
            "lower data.n_ctx or data.batch_size, or use more data"
        )


def prepare_command(config: Mapping[str, Any]) -> str:
    """The command that prepares this run's data beforehand (named when a job should not)."""
    return f"python -m zoo.data prepare recipe={config['name']} (with this run's data=... and data.KEY=... options)"


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train, checkpoint, report and export one run; returns the final report."""
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    check_devices(config["trainer"])  # before anything is created
    started = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    remove_stale_temporaries(ckpt_dir, started)  # writes an earlier, killed run left half done
    resume, resume_ckpt = resume_checkpoint(config.get("resume"), ckpt_dir)
    L.seed_everything(config["seed"], workers=True)

    if config["model"].get("adapter") is not None and not config.get("init_from"):
        raise ZooError("model.adapter trains an adapter on a trained model: set init_from=PATH (its folder or .ckpt)")
    data_cfg = dict(config["data"])
    entropy = {k: v for k, v in (config.get("entropy") or {}).items() if v is not None}
    if entropy:  # estimates in the batches and/or a document budget (zoo.entropy)
        from zoo.entropy.data import EntropyDataModule

        dm = EntropyDataModule(seed=config["seed"], entropy=entropy, **data_cfg)
    else:
        dm = TextDataModule(seed=config["seed"], prepare_command=prepare_command(config), **data_cfg)
    dm.prepare_data()
    task = LanguageModelTask(
        model=config["model"], vocab_size=dm.vocab_size, n_ctx=dm.n_ctx, optim=config["optim"],
        loss=config.get("loss"),
    )
    if config.get("init_from"):
        init_weights_from(task, config["init_from"], dm.tokenizer)
    if resume_ckpt is not None:
        label = f"auto ({resume})" if config["resume"] == "auto" else config["resume"]
        check_resume(label, resume_ckpt, task, dm.tokenizer)
        del resume_ckpt  # Lightning reads it again (into the strategy's devices)
    n = parameter_counts(task.model)
    rank_zero_info(
        f"model: {config['model'].get('family')}{' + LoRA adapter' if is_adapted(task.model) else ''} — "
        f"{n['total']:,} parameters ({n['trainable']:,} trainable, {n['active']:,} active per token)"
    )
    rank_zero_info("data:\n" + dm.describe())
    if should_compile(config):  # torch.compile in place: parameter names, checkpoints, export unchanged
        task.model.compile()
        rank_zero_info("model compiled with torch.compile (the first steps include compilation)")

    check_enough_data(dm, 1)  # before a logger run exists; again below for several processes
    logger = build_logger(config["logger"], run_dir, config["name"], config)
    best = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-{step}", monitor="val/bpb", mode="min", save_top_k=1,
        auto_insert_metric_name=False,
    )
    ck = config["checkpoint"]
    minutes = ck.get("every_n_minutes")
    last = ModelCheckpoint(  # last.ckpt, every N steps or minutes: at most that much work is lost
        dirpath=ckpt_dir, filename="step-{step}", save_top_k=0, save_last=True,
        every_n_train_steps=None if minutes else ck["every_n_train_steps"],
        train_time_interval=timedelta(minutes=minutes) if minutes else None,
    )
    callbacks: list[Callback] = [
        best, last, ZooMetadata(config, dm.tokenizer.backend_tokenizer.to_str()), RNGState(),
        SaveOnInterrupt(ckpt_dir / "last.ckpt"), NonFiniteGuard(config.get("nonfinite", "stop")),
    ]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        callbacks.append(LoggedStepsThroughput(  # tokens/s and samples/s over the last 20 steps
            batch_size_fn=lambda b: b["input_ids"].shape[0], length_fn=lambda b: b["input_ids"].numel(),
            steps=20, log_every_n_steps=int(config["trainer"].get("log_every_n_steps") or 50),
        ))
    weight_entropy = dict(config.get("weight_entropy") or {})
    if weight_entropy.get("every_n_steps"):  # per-layer weight entropy over training + a PNG (zoo.entropy.weights)
        from zoo.entropy.weights import WeightEntropy

        callbacks.append(WeightEntropy(out_dir=run_dir, **weight_entropy))
    swa = swa_callback(config)  # swa.enabled: stochastic weight averaging; the report scores the average
    if swa is not None:
        callbacks.append(swa)
    trainer_cfg = dict(config["trainer"])
    # output to a file (nohup, a job log): progress as log lines instead of a live bar that draws nothing there
    callbacks += progress_callbacks(trainer_cfg.get("enable_progress_bar"))
    vci, max_steps = trainer_cfg.get("val_check_interval"), trainer_cfg.get("max_steps", -1)
    if isinstance(vci, int) and 0 < max_steps < vci:  # validate (and keep a best checkpoint) at least once
        trainer_cfg["val_check_interval"] = max_steps
    trainer_cfg["strategy"] = build_strategy(trainer_cfg.get("strategy", "auto"), task.model, trainer_cfg)
    trainer = build_trainer(
        trainer_cfg, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the DataModule shards by rank itself (zoo.data.sharding)
    )

    world = trainer.world_size
    if world > 1:
        check_enough_data(dm, world)
    rank_zero_info(
        f"global batch: {dm.batch_size} samples x {world} process(es) x {trainer.accumulate_grad_batches} "
        f"accumulation = {dm.batch_size * world * trainer.accumulate_grad_batches} samples "
        f"({dm.batch_size * world * trainer.accumulate_grad_batches * dm.n_ctx:,} tokens) per optimizer step"
    )
    trainer.fit(task, datamodule=dm, ckpt_path=resume, weights_only=True)

    # final report: the best checkpoint (by val BPB) on train (capped to val's size), val, test
    splits = list(config["report"]["splits"])
    if dm.streaming and "train" in splits:
        rank_zero_info("report: no train row in streaming mode (the stream has no fixed sample); val and test")
        splits.remove("train")
    task.report_stages = [f"report_{s}" for s in splits]
    n_val = len(dm.dataset("val"))
    loaders = [dm.eval_dataloader(s, max_samples=n_val if s == "train" else None) for s in splits]
    scored = best.best_model_path or None
    if swa is not None:  # the averaged weights (not the best live ones) are the run's result
        scored = save_averaged_weights(trainer, task, swa, ckpt_dir / "swa.ckpt") or scored
    results = []
    if loaders:
        results = trainer.test(task, dataloaders=loaders, ckpt_path=scored, verbose=False)
    merged: dict[str, float] = {}
    for r in results:
        merged.update({k: float(v) for k, v in r.items()})
    report = build_report(dm, splits, merged, config["report"]["compressors"], n_val)
    report["best_checkpoint"] = scored or best.best_model_path
    report["run_dir"] = str(run_dir)
    if trainer.is_global_zero:
        (run_dir / "report.json").write_text(json.dumps(report, indent=1))
        spec = {"model": config["model"], "vocab_size": dm.vocab_size, "n_ctx": dm.n_ctx,
                "layout": dm.layout, "run": config}
        # export from the (consolidated) checkpoint file, not from the live module: under
        # sharded strategies the live parameters are shards
        exported = build_model(config["model"], dm.vocab_size, dm.n_ctx)
        source = scored or str(ckpt_dir / "last.ckpt")
        exported.load_state_dict(model_state(read_checkpoint(source)))
        if is_adapted(exported):  # the adapter alone, then the model with it merged in
            spec["model"] = base_model_config(config["model"])
            save_adapter(exported, run_dir / "adapter", spec, base=config.get("init_from"))
            exported = merge_adapter(exported)
        save_pretrained(exported, dm.tokenizer, spec, run_dir / "model", metrics=report)
        print(format_report(report))
    return report


def swa_callback(config: Mapping[str, Any]) -> Callback | None:
    """Lightning's ``StochasticWeightAveraging`` for the ``swa:`` section (``None`` when off).

    It averages the weights once per epoch from ``swa.epoch_start`` on, with the learning rate
    annealed (``annealing_strategy`` over ``annealing_epochs``) to ``swa.lr`` (null:
    ``optim.lr x optim.min_lr_ratio``) in place of the run's schedule; its state (the average
    and its count) is part of every checkpoint, so ``resume=`` continues the average.
    """
    swa = dict(config.get("swa") or {})
    if not swa.get("enabled"):
        return None
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    optim = dict(config.get("optim") or {})
    lr = swa.get("lr") or float(optim.get("lr", 1e-3)) * float(optim.get("min_lr_ratio", 0.1))
    start = swa.get("epoch_start", 0.8)
    start = int(start) if start >= 1 else float(start)  # Lightning: an int is an epoch number, a float a fraction
    return StochasticWeightAveraging(swa_lrs=lr, swa_epoch_start=start,
                                     annealing_epochs=int(swa.get("annealing_epochs", 1)),
                                     annealing_strategy=swa.get("annealing_strategy", "cos"))


def save_averaged_weights(trainer: L.Trainer, task: LanguageModelTask, swa: Callback, path: Path) -> str | None:
    """Put the SWA average into ``task`` and save it as ``path`` (the checkpoint the report
    scores and the export reads); ``None`` if nothing was averaged (training ended before
    ``swa.epoch_start``). Lightning moves the average in itself only when training reaches
    ``trainer.max_epochs``; a run that stops on ``max_steps`` first gets it here."""
    average, count = getattr(swa, "_average_model", None), getattr(swa, "n_averaged", None)
    if average is None or count is None or int(count) == 0:
        rank_zero_info("swa: training ended before swa.epoch_start; nothing was averaged, the report scores "
                       "the best checkpoint")
        return None
    swa.transfer_weights(average, task)  # type: ignore[attr-defined]
    trainer.save_checkpoint(path)
    rank_zero_info(f"swa: the average of {int(count)} epoch(s) saved as {path}; the report scores it")
    return str(path)


def build_report(dm: TextDataModule, splits: Sequence[str], metrics: Mapping[str, float],
                 compressors: Sequence[str], n_train_samples: int) -> dict[str, Any]:
    """Per split: the model's metrics and the classical compressors' BPB on the same text."""
    out: dict[str, Any] = {"splits": {}}
    val_bytes = dm.split_bytes("val")
    for s in splits:
        row = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith(f"final/{s}/")}
        if dm.layout == "left_padded":  # only each document's first n_ctx tokens are scored
            text = dm.scored_text(dm.eval_dataloader(s, max_samples=n_train_samples if s == "train" else None))
        else:
            text = dm.split_text(s, max_bytes=val_bytes if s == "train" else None)
        row["text_bytes"] = len(text)
        for c in compressors:
            row[c] = compressed_bits_per_byte(text, c)
        out["splits"][s] = row
    return out


def format_report(report: Mapping[str, Any]) -> str:
    """The final table: model BPB beside the compressors on each split."""
    rows = report["splits"]
    comp = [c for c in COMPRESSOR_LABELS if any(c in r for r in rows.values())]
    head = f"{'split':6s} {'BPB':>7s} {'CE nats':>8s} {'PPL':>8s} {'H bits':>7s} " + " ".join(
        f"{COMPRESSOR_LABELS[c]:>8s}" for c in comp
    )
    lines = ["", "bits per byte (model vs classical compressors on the same text)", head, "-" * len(head)]
    for split, r in rows.items():
        lines.append(
            f"{split:6s} {r.get('bpb', float('nan')):7.4f} {r.get('ce', float('nan')):8.4f} "
            f"{r.get('ppl', float('nan')):8.2f} {r.get('entropy', float('nan')):7.3f} "
            + " ".join(f"{r[c]:8.4f}" for c in comp)
        )
    if "val" in rows and "xz" in rows["val"]:
        v = rows["val"]
        lines.append(f"\nval BPB {v.get('bpb', float('nan')):.4f}  vs  xz -9 {v['xz']:.4f}")
        if SIDE_INFO_FREE_BPB in v:
            lines.append(
                f"(BPB includes the side information's cost (the encoder's vector); without it: "
                f"{v[SIDE_INFO_FREE_BPB]:.4f})"
            )
    lines.append(f"run folder: {report.get('run_dir')}")
    return "\n".join(lines)


def resume_checkpoint(resume: str | None, ckpt_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    """The checkpoint ``resume=`` points to (``auto``: this run's ``last.ckpt``), read safely.

    Returns ``(path, checkpoint)``, or ``(None, None)`` to start fresh. Every checkpoint goes
    through :func:`read_checkpoint` before Lightning opens it, so a truncated, foreign or
    unsafe file is refused in one line.
    """
    if not resume:
        return None, None
    if resume == "auto":
        last = ckpt_dir / "last.ckpt"
        if not last.is_file():
            rank_zero_info("resume=auto: no checkpoint of an earlier run found; starting fresh")
            return None, None
        rank_zero_info(f"resuming from {last}")
        return str(last), read_checkpoint(last)
    path = Path(resume).expanduser()
    if not path.is_file():
        raise ZooError(f"resume={resume}: no such checkpoint file")
    return str(path), read_checkpoint(path)  # refuse unsafe or foreign checkpoints before Lightning opens them


@rank_zero_only
def rank_zero_info(msg: str) -> None:
    log.info(msg)
