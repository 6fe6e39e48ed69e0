"""The config schema: every option of a recipe, its type, its default and its allowed values.

A run's config is ``recipes/base/default.yaml`` (the defaults, with comments) composed with a
recipe and the command line; this module is its schema. Each section is a dataclass whose
fields carry the same defaults as the YAML (``tests/test_recipes.py`` keeps the two equal)
and, in ``metadata``, the checks a value must pass. :func:`validate` checks a composed config
against it and raises a one-line :class:`~zoo.errors.ZooError` naming the key, what it must
be and what it got, e.g. ``optim.min_lr_ratio must be a number in [0, 1]; got -0.5``.

The sections that vary by config group stay open: ``model`` (only its sizes are checked:
positive integers), ``trainer`` (keys must be ``lightning.Trainer`` arguments, read from
Lightning's source without importing it; common ones are range-checked) and ``logger``.

This module imports neither torch nor Lightning nor Hydra: ``python -m zoo.fit`` validates
before any heavy import, so a bad value fails in well under a second. Constants other
modules share (:data:`DEFAULT_VOCAB_SIZE`, :data:`DEFAULT_N_CTX`, :class:`OptimOptions`)
are defined here once.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import math
import operator
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ZooError, did_you_mean

#: the paper's vocabulary (tokens, incl. the 256 bytes and the special tokens)
DEFAULT_VOCAB_SIZE = 8192
#: tokens per sample (the model's context)
DEFAULT_N_CTX = 256
#: the smallest byte-level BPE: 256 bytes + <|endoftext|> + <|pad|> (zoo.data.tokenizer)
MIN_VOCAB_SIZE = 258

# allowed names: defined here once; the modules that use them import them from here
LAYOUTS = ("packed", "left_padded")  # zoo.data.layouts
OPTIMIZERS = ("adamw", "adamw8bit", "sgld", "psgld")  # zoo.lit.language_model (sgld, psgld: zoo.optim_sgld)
SWA_ANNEALING = ("cos", "linear")  # lightning StochasticWeightAveraging
SCHEDULES = ("cosine", "linear", "constant")  # zoo.lit.language_model
NONFINITE_ACTIONS = ("stop", "skip")  # zoo.callbacks
LOSS_KINDS = ("ce", "entropy_l1", "entropy_clip")  # the built-in objectives of zoo.objectives
SPLITS = ("train", "val", "test")  # zoo.data.sources
COMPRESSORS = ("gzip", "bz2", "xz", "zstd", "ppmd")  # zoo.compression
#: what reports and zoo.evaluate compute unless asked (zstd -22 and PPMd cost seconds a MB)
DEFAULT_COMPRESSORS = COMPRESSORS  # PPMd is the classical text compressor to beat

#: ``compile: auto`` compiles a run of at least this many optimizer steps: on the 2-core CPU
#: the first compiled steps (training and evaluation graphs) cost about 45 s, repaid after
#: several hundred steps (docs/performance.md)
COMPILE_AUTO_MIN_STEPS = 2000

#: model options that are sizes (at any depth: encoder.d_model, moe.d_ff, ...): positive ints
MODEL_SIZE_KEYS = frozenset(
    {"d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "kernel", "heads", "n_experts", "k", "compression", "r"}
)


def option(default: Any = dataclasses.MISSING, **check: Any) -> Any:
    """A schema field: its default and its checks.

    Checks: ``ge``/``gt``/``le``/``lt`` (bounds), ``choices`` (allowed values; for a list,
    allowed items), ``length`` (a list's exact length).
    """
    if isinstance(default, list | dict | tuple):
        frozen = default
        return field(default_factory=lambda: type(frozen)(frozen), metadata=check)
    return field(default=default, metadata=check)


def section(cls: type) -> Any:
    return field(default_factory=cls)


# --------------------------------------------------------------------------- the sections
@dataclass
class TokenizerOptions:
    path: str | None = option(None)  # an existing tokenizer.json (or folder); null: train a BPE
    vocab_size: int = option(DEFAULT_VOCAB_SIZE, ge=MIN_VOCAB_SIZE)
    train_bytes: int = option(50_000_000, gt=0)


@dataclass
class DataOptions:
    sources: Any = option("???")  # a list of sources, chosen by the data group (open: zoo.data.sources)
    layout: str = option("packed", choices=LAYOUTS)
    n_ctx: int = option(DEFAULT_N_CTX, gt=0)
    batch_size: int = option(16, gt=0)
    eval_batch_size: int | None = option(32, gt=0)
    num_workers: int = option(0, ge=0)
    num_proc: int | None = option(None, gt=0)
    streaming: bool = option(False)
    heldout_documents: int = option(50_000, gt=0)
    pin_memory: bool | None = option(None)
    cache_dir: str | None = option(None)
    tokenizer: TokenizerOptions = section(TokenizerOptions)


@dataclass
class OptimOptions:
    """The optimiser and its learning-rate schedule (``zoo.lit.language_model``)."""

    name: str = option("adamw", choices=OPTIMIZERS)
    lr: float = option(1.0e-3, gt=0)
    weight_decay: float = option(0.1, ge=0)
    betas: tuple[float, float] = option((0.9, 0.95), ge=0, lt=1, length=2)
    eps: float = option(1.0e-8, gt=0)
    warmup_steps: int = option(100, ge=0)
    schedule: str = option("cosine", choices=SCHEDULES)
    min_lr_ratio: float = option(0.1, ge=0, le=1)
    fused: bool = option(False)
    # sgld / psgld: the Langevin temperature T (noise sqrt(2 lr T) N(0, I) per step; 0: plain SGD / RMSprop)
    temperature: float = option(1.0e-6, ge=0)


@dataclass
class SWAOptions:
    """``swa:``: Lightning's ``StochasticWeightAveraging`` (``zoo.training.swa_callbacks``)."""

    enabled: bool = option(False)
    lr: float | None = option(None, gt=0)  # the SWA learning rate; null: the run's optim.lr x optim.min_lr_ratio
    # the first averaged epoch: an integer (epoch number, 1-based) or a fraction of trainer.max_epochs in (0, 1)
    epoch_start: float = option(0.8, gt=0)
    annealing_epochs: int = option(1, gt=0)  # epochs over which the lr moves to swa.lr
    annealing_strategy: str = option("cos", choices=SWA_ANNEALING)


@dataclass
class CheckpointOptions:
    every_n_train_steps: int = option(100, gt=0)
    every_n_minutes: float | None = option(None, gt=0)


@dataclass
class ReportOptions:
    splits: list[str] = option(list(SPLITS), choices=SPLITS)
    compressors: list[str] = option(list(DEFAULT_COMPRESSORS), choices=COMPRESSORS)


@dataclass
class LossOptions:
    """The training objective (``zoo.objectives``)."""

    kind: str = option("ce")  # LOSS_KINDS, or one a plug-in registers (checked in validate)
    alpha: float = option(2.5, gt=0)


@dataclass
class EntropyOptions:
    """``entropy:`` (on when either key is set): per-token estimates in the batches and/or a document budget."""

    estimates: str | None = option(None)  # a folder written by python -m zoo.entropy estimate
    train_documents: int | None = option(None, gt=0)


@dataclass
class WeightEntropyOptions:
    """``weight_entropy:`` (on when ``every_n_steps`` is set): the ``zoo.entropy.weights.WeightEntropy`` callback."""

    every_n_steps: int | None = option(None, gt=0)  # null: off
    bins: int = option(256, ge=2)
    plot: bool = option(True)


@dataclass
class ZooConfig:
    """A whole run's config (what ``python -m zoo.fit recipe=NAME --cfg job`` prints)."""

    name: str = option("???")
    seed: int = option(1234, ge=0, le=2**32 - 1)
    out_dir: str = option("runs")
    resume: str | None = option(None)
    init_from: str | None = option(None)
    # torch.compile the model: true, false, or auto (compile runs of COMPILE_AUTO_MIN_STEPS+ steps)
    compile: Any = option("auto", choices=("auto", True, False))
    data: DataOptions = section(DataOptions)
    optim: OptimOptions = section(OptimOptions)
    checkpoint: CheckpointOptions = section(CheckpointOptions)
    nonfinite: str = option("stop", choices=NONFINITE_ACTIONS)
    report: ReportOptions = section(ReportOptions)
    loss: LossOptions = section(LossOptions)
    entropy: EntropyOptions | None = section(EntropyOptions)
    weight_entropy: WeightEntropyOptions | None = section(WeightEntropyOptions)
    swa: SWAOptions = section(SWAOptions)
    # open sections: they vary by config group
    trainer: dict[str, Any] = option({})
    model: dict[str, Any] = option({})
    logger: dict[str, Any] = option({})


#: sections whose keys vary by config group (checked by their own rules, not by a dataclass)
OPEN_SECTIONS = ("trainer", "model", "logger")


def defaults() -> dict[str, Any]:
    """The schema's defaults as plain data (the schema sections of base/default.yaml)."""
    return _plain(dataclasses.asdict(ZooConfig()))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def keys(cls: type = ZooConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (sections and their options)."""
    out = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        out.append(path)
        sub = _section_class(_hints(cls)[f.name])
        if sub is not None:
            out.extend(keys(sub, f"{path}."))
    return out


def section_class(path: str) -> type | None:
    """The dataclass of a dotted section path (``"data.tokenizer"``), or None if not one."""
    cls: type | None = ZooConfig
    for part in path.split(".") if path else []:
        if cls is None or part not in _hints(cls):
            return None
        cls = _section_class(_hints(cls)[part])
    return cls


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_class(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X`` or ``X | None``), if any."""
    for t in (tp, *typing.get_args(tp)):
        if dataclasses.is_dataclass(t):
            return t  # type: ignore[return-value]
    return None


# --------------------------------------------------------------------------- validation
def validate(config: Mapping[str, Any], reference: Mapping[str, Any] | None = None) -> None:
    """Raise a one-line :class:`ZooError` for the first option of ``config`` that breaks the schema.

    ``config`` is a composed config (a ``DictConfig`` or plain dict, interpolations resolved
    here). ``reference``, the recipe's own config, types the open sections' options: an option
    whose recipe value is a number must stay a number, a bool a bool, a list a list.
    """
    config = _container(config)
    _check_section(config, ZooConfig, "")
    trainer = config.get("trainer")
    _check_trainer(trainer if isinstance(trainer, Mapping) else {})
    _check_model_sizes(config.get("model") or {}, "model")
    _check_loss_kind(config.get("loss"))
    _check_swa(config.get("swa"), config.get("trainer"))
    if reference is not None:
        reference = _container(reference)
        pairs = [(reference.get(name), config.get(name), f"{name}.") for name in OPEN_SECTIONS]
        pairs.append(({"sources": (reference.get("data") or {}).get("sources")},
                      {"sources": (config.get("data") or {}).get("sources")}, "data."))
        for old, new, prefix in pairs:
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                _check_like(old, new, prefix)


def _check_swa(swa: Any, trainer: Any) -> None:
    """``swa.epoch_start``: an epoch number (an integer >= 1), or a fraction in (0, 1) of
    ``trainer.max_epochs``, which must then be set (a run by steps has no fraction of epochs)."""
    if not isinstance(swa, Mapping) or not swa.get("enabled"):
        return
    start = swa.get("epoch_start", 0.8)
    if not isinstance(start, int | float) or isinstance(start, bool):
        return  # the section check names it
    max_epochs = (trainer or {}).get("max_epochs", -1) if isinstance(trainer, Mapping) else -1
    if start > 1 and start != int(start):
        raise ZooError(f"swa.epoch_start must be an epoch number (an integer >= 1) or a fraction in (0, 1); got {start}")
    if start < 1 and (max_epochs is None or max_epochs < 1):
        raise ZooError(f"swa.epoch_start={start} is a fraction of trainer.max_epochs, which is {max_epochs} "
                       "(a run by steps): give an epoch number (swa.epoch_start=2) or set trainer.max_epochs")


def _container(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping) and not hasattr(config, "_get_node"):
        return dict(config)
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        out = OmegaConf.to_container(config, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as e:
        raise ZooError(f"config does not resolve: {str(e).splitlines()[0]}") from None
    assert isinstance(out, dict)
    return out


def _check_section(value: Any, cls: type, prefix: str) -> None:
    if not isinstance(value, Mapping):
        raise ZooError(f"{prefix.rstrip('.') or 'the config'} is a config section; got the value {value!r}")
    hints = _hints(cls)
    for key in value:
        if key not in hints:
            where = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
            raise ZooError(
                f"unknown config key '{prefix}{key}'{did_you_mean(str(key), hints)}; keys of {where}: {', '.join(hints)}"
            )
    for f in dataclasses.fields(cls):
        if f.name not in value:
            continue  # absent: the code's default applies (a recipe may leave a key out)
        path, v, tp = f"{prefix}{f.name}", value[f.name], hints[f.name]
        sub = _section_class(tp)
        if sub is not None:
            if v is None and _optional(tp):
                continue
            _check_section(v, sub, f"{path}.")
        elif f.name not in OPEN_SECTIONS or prefix:
            check_value(path, v, tp, f.metadata)


def _optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def check_value(path: str, value: Any, tp: Any, check: Mapping[str, Any]) -> None:
    """Raise a :class:`ZooError` if ``value`` is not of type ``tp`` or breaks ``check``."""
    if value is None and _optional(tp):
        return
    if value == "???" and tp in (Any, str):
        return  # mandatory, set by a group or the recipe (Hydra says so if it stays unset)
    base = next((t for t in typing.get_args(tp) if t is not type(None)), tp) if _optional(tp) else tp
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        ok = isinstance(value, list | tuple) and ("length" not in check or len(value) == check["length"])
        item = typing.get_args(base)[0]
        ok = ok and all(_fits(v, item, check) for v in value)
    elif base is Any:
        ok = "choices" not in check or any(value is c or (isinstance(c, str) and value == c) for c in check["choices"])
    else:
        ok = _fits(value, base, check)
    if not ok:
        raise ZooError(f"{path} must be {describe(tp, check)}; got {value!r}")


def _fits(value: Any, tp: Any, check: Mapping[str, Any]) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return False
    elif tp is str:
        if not isinstance(value, str):
            return False
    if "choices" in check and value not in check["choices"]:
        return False
    for op, holds in (("ge", operator.ge), ("gt", operator.gt), ("le", operator.le), ("lt", operator.lt)):
        if op in check and not holds(value, check[op]):
            return False
    return True


def describe(tp: Any, check: Mapping[str, Any]) -> str:
    """What a value must be, in words: ``a number in [0, 1]``, ``a positive integer``, ..."""
    optional = _optional(tp)
    base = next((t for t in typing.get_args(tp) if t is not type(None)), tp) if optional else tp
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        item = typing.get_args(base)[0]
        n = f"{check['length']} " if "length" in check else ""
        if "choices" in check:
            words = f"a list with items from {', '.join(map(str, check['choices']))}"
        else:
            words = f"a list of {n}{_describe_scalar(item, check, plural=True)}"
    else:
        words = _describe_scalar(base, check)
    return f"{words} or null" if optional else words


def _describe_scalar(tp: Any, check: Mapping[str, Any], plural: bool = False) -> str:
    if "choices" in check:
        return f"one of {', '.join(str(c).lower() if isinstance(c, bool) else str(c) for c in check['choices'])}"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "strings" if plural else "a string"
    noun = {int: "integer", float: "number"}.get(tp, getattr(tp, "__name__", str(tp)))
    lo = ("[", check["ge"]) if "ge" in check else ("(", check["gt"]) if "gt" in check else None
    hi = (check["le"], "]") if "le" in check else (check["lt"], ")") if "lt" in check else None
    if lo == ("(", 0) and hi is None:
        words = f"positive {noun}"
    elif lo and hi:
        words = f"{noun} in {lo[0]}{lo[1]}, {hi[0]}{hi[1]}"
    elif lo:
        words = f"{noun} {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    elif hi:
        words = f"{noun} {'<=' if hi[1] == ']' else '<'} {hi[0]}"
    else:
        words = noun
    if plural:
        return words.replace("integer", "integers", 1).replace("number", "numbers", 1)
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


# --------------------------------------------------------------------------- open sections
def _int_or_fraction(lo_int: int, zero_fraction: bool) -> Any:
    """A check for ``int >= lo_int`` (a count) or ``float`` in (0, 1] / [0, 1] (a fraction)."""

    def check(v: Any) -> bool:
        if isinstance(v, bool):
            return False
        if isinstance(v, int):
            return v >= lo_int
        return isinstance(v, float) and (0 <= v if zero_fraction else 0 < v) and v <= 1

    return check


#: trainer options checked here: key -> (type, checks) as for a schema field, or (None, predicate, words)
TRAINER_OPTIONS: dict[str, tuple[Any, ...]] = {
    "max_steps": (None, lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v > 0),
                  "a positive integer, or -1 (no limit)"),  # 0 would train nothing
    "max_epochs": (int | None, {"ge": -1}),
    "num_nodes": (int, {"gt": 0}),
    "log_every_n_steps": (int, {"gt": 0}),
    "accumulate_grad_batches": (int, {"gt": 0}),
    "num_sanity_val_steps": (int, {"ge": -1}),
    "check_val_every_n_epoch": (int | None, {"gt": 0}),
    "gradient_clip_val": (float | None, {"ge": 0}),
    "enable_progress_bar": (bool | None, {}),
    "val_check_interval": (None, _int_or_fraction(1, False),
                           "a positive integer (steps) or a number in (0, 1] (a fraction of an epoch), or null"),
    "limit_val_batches": (None, _int_or_fraction(0, True),
                          "an integer >= 0 (batches) or a number in [0, 1] (a fraction), or null"),
}


@functools.cache
def trainer_arguments() -> frozenset[str] | None:
    """The keyword arguments of ``lightning.Trainer.__init__``, read from Lightning's source
    (importing Lightning would import torch: seconds); None if the source is not found."""
    spec = importlib.util.find_spec("lightning")  # locates the package, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "pytorch" / "trainer" / "trainer.py"
    try:
        tree = ast.parse(source.read_text())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    a = item.args
                    return frozenset(x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs) if x.arg != "self")
    return None


def _check_trainer(trainer: Mapping[str, Any]) -> None:
    allowed = trainer_arguments()
    for key, value in trainer.items():
        if allowed is not None and key not in allowed:
            raise ZooError(f"trainer.{key} is not a Lightning Trainer argument{did_you_mean(str(key), allowed)}")
        rule = TRAINER_OPTIONS.get(key)
        if rule is None:
            continue
        if rule[0] is None:
            if value is not None and not rule[1](value):
                raise ZooError(f"trainer.{key} must be {rule[2]}; got {value!r}")
        else:
            check_value(f"trainer.{key}", value, rule[0], rule[1])


def _check_loss_kind(loss: Any) -> None:
    """``loss.kind`` is a built-in objective; with plug-ins (``$ZOO_PLUGINS``), which may
    register more, the objective registry checks it when the task is built."""
    import os

    kind = loss.get("kind") if isinstance(loss, Mapping) else None
    if kind is None or os.environ.get("ZOO_PLUGINS") or kind in LOSS_KINDS:
        return
    raise ZooError(f"loss.kind must be one of {', '.join(LOSS_KINDS)}{did_you_mean(str(kind), LOSS_KINDS)}; got {kind!r}")


def _check_model_sizes(model: Any, prefix: str) -> None:
    """Every size option of the model (at any depth) is a positive integer (or null: the default)."""
    if not isinstance(model, Mapping):
        return
    for key, value in model.items():
        path = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            _check_model_sizes(value, path)
        elif key in MODEL_SIZE_KEYS and value is not None:
            check_value(path, value, int, {"gt": 0})


#: open-section keys whose value may legitimately change type from the recipe's
LOOSE_KEYS = frozenset({"trainer.devices", "trainer.val_check_interval", "trainer.precision", "trainer.deterministic",
                        "trainer.limit_val_batches", "trainer.gradient_clip_val"})


def _check_like(old_section: Mapping[str, Any], new_section: Mapping[str, Any], prefix: str) -> None:
    """An option of an open section keeps the kind of the recipe's value (a number stays a number)."""
    for key, new in new_section.items():
        path = f"{prefix}{key}"
        if key not in old_section or path in LOOSE_KEYS:
            continue
        old = old_section[key]
        if old is None or new is None or old == "???":
            continue
        if isinstance(old, Mapping):
            if not isinstance(new, Mapping):
                raise ZooError(f"{path} is a config section; got the value {new!r}")
            _check_like(old, new, f"{path}.")
            continue
        if isinstance(old, list) and old and isinstance(old[0], Mapping) and isinstance(new, list):
            for i, (o, n) in enumerate(zip(old, new, strict=False)):
                if isinstance(o, Mapping) and isinstance(n, Mapping):
                    _check_like(o, n, f"{path}.{i}.")
            continue
        if isinstance(old, bool):
            ok, kind = isinstance(new, bool), "true or false"
        elif isinstance(old, int | float):
            ok, kind = isinstance(new, int | float) and not isinstance(new, bool), "a number"
        elif isinstance(old, list):
            ok, kind = isinstance(new, list), "a list"
        else:
            ok, kind = True, ""
        if not ok:
            raise ZooError(f"{path} must be {kind} (like {old!r}); got {new!r}")
