"""The model registry: every model config and every published checkpoint, by name.

Two kinds of names:

* **model configs** (``recipes/model/*.yaml``: ``llama_tiny``, ``mixer_paper``, ...): an
  architecture; :func:`create_model` builds it randomly initialised, with any size overridden.
* **published checkpoints** (``checkpoints/NAME/``: ``llama-edu``, ``mixer-edu``, ...):
  trained weights with their tokenizer, card and measured metrics; :func:`load` (or
  ``create_model(name, pretrained=True)``) returns them, checked against
  ``checkpoints/manifest.json`` and the folder's ``sha256.json`` (:mod:`zoo.hub.manifest`,
  :mod:`zoo.hub.checksums`).

>>> import zoo
>>> zoo.list_models("*edu")                     # doctest: +SKIP
['eacd-mixer-edu', 'eacd-transformer-edu', 'llama-edu', 'mixer-edu']
>>> model, tokenizer = zoo.load("llama-edu")    # doctest: +SKIP
>>> model(tokenizer("The sea", return_tensors="pt").input_ids).shape   # doctest: +SKIP

Loading never runs code from the files (safetensors + YAML + tokenizer JSON only).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from zoo.errors import ZooError, did_you_mean
from zoo.hub.folder import load_pretrained, read_spec
from zoo.hub.manifest import checkpoints_dir, manifest_record, read_manifest, verify_manifest
from zoo.models import build_model, count_parameters
from zoo.schema import DEFAULT_N_CTX, DEFAULT_VOCAB_SIZE, MIN_VOCAB_SIZE, check_value

log = logging.getLogger(__name__)
_warned: set[str] = set()  # problems already reported in this process (each is said once)


def _model_configs_dir() -> Path | None:
    from zoo.recipes import recipes_dir

    try:
        path = recipes_dir() / "model"
    except ZooError:
        return None
    return path if path.is_dir() else None


@dataclass(frozen=True)
class ModelInfo:
    """One registered name: what builds it and, for a published model, what it measured."""

    name: str
    family: str
    kind: str  # "config" (architecture only) | "pretrained" (a published checkpoint)
    model: dict[str, Any]  # the ``model:`` config section (what build_model takes)
    vocab_size: int
    n_ctx: int
    path: Path
    description: str = ""
    data: str = ""  # training data of a published model
    metrics: dict[str, Any] = field(default_factory=dict)  # the manifest entry's summary
    parameters: int | None = None  # of a published model (from the manifest)
    files: dict[str, str] = field(default_factory=dict)  # file -> sha256 (published models)
    error: str = ""  # a published folder that cannot be read: why (loading it raises this)

    @property
    def pretrained(self) -> bool:
        return self.kind == "pretrained"

    @property
    def file_bytes(self) -> int | None:
        weights = self.path / "model.safetensors"
        return weights.stat().st_size if self.pretrained and weights.is_file() else None


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def data_description(run: dict[str, Any] | None) -> str:
    """``edu`` / ``edu 70% + math 30%`` from a run config's ``data.sources``; sources of one
    name (edu in three languages, say) are summed into one share."""
    sources = ((run or {}).get("data") or {}).get("sources") or []
    names = [str(s.get("name", "?")) for s in sources]
    weights = [s.get("weight") for s in sources]
    if len(names) > 1 and all(w is not None for w in weights):
        shares: dict[str, float] = {}
        for name, weight in zip(names, weights, strict=True):
            shares[name] = shares.get(name, 0.0) + float(weight)
        total = sum(shares.values()) or 1.0
        return " + ".join(f"{n} {100 * w / total:.0f}%" for n, w in shares.items())
    return " + ".join(dict.fromkeys(names))


def _configs() -> dict[str, ModelInfo]:
    folder = _model_configs_dir()
    out: dict[str, ModelInfo] = {}
    if folder is None:
        return out
    for path in sorted(folder.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        if not isinstance(cfg, dict) or "family" not in cfg:
            continue
        out[path.stem] = ModelInfo(
            name=path.stem, family=str(cfg["family"]), kind="config", model=cfg,
            vocab_size=DEFAULT_VOCAB_SIZE, n_ctx=DEFAULT_N_CTX, path=path, description=_first_comment(path),
        )
    return out


def published_models() -> tuple[dict[str, ModelInfo], list[str]]:
    """Every folder of ``checkpoints/`` as a :class:`ModelInfo`, and one line per problem.

    One broken folder (a ``config.yaml`` that is not plain YAML or has no ``model:``, a
    ``null`` manifest entry) or a broken manifest never hides the others: the folder is kept
    with its :attr:`ModelInfo.error` (loading it by name raises that message) and the
    problem is returned as a line to warn with.
    """
    root = checkpoints_dir()
    out: dict[str, ModelInfo] = {}
    problems: list[str] = []
    if not root.is_dir():
        return out, problems
    try:
        manifest = read_manifest(root)
    except ZooError as e:
        problems.append(f"{e} (listed without the manifest's metrics; loading by name checks the manifest)")
        manifest = {"models": {}}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config = folder / "config.yaml"
        if not (config.is_file() and (folder / "model.safetensors").is_file()):
            continue  # being written, or not a model folder
        try:
            spec = read_spec(folder)
            entry = manifest_record(manifest, folder.name, root) or {}
            out[folder.name] = ModelInfo(
                name=folder.name, family=str(spec["model"].get("family")), kind="pretrained",
                model=dict(spec["model"]), vocab_size=spec["vocab_size"], n_ctx=spec["n_ctx"],
                path=folder, description=str(entry.get("description", "")),
                data=str(entry.get("data") or data_description(spec.get("run"))),
                metrics=dict(entry.get("metrics") or {}), files=dict(entry.get("files") or {}),
                parameters=entry.get("parameters"),
            )
        except (ZooError, ValueError, TypeError, AttributeError) as e:
            error = str(e) if isinstance(e, ZooError) else f"{folder}: unreadable config or manifest entry ({e})"
            out[folder.name] = ModelInfo(name=folder.name, family="?", kind="pretrained", model={}, vocab_size=0,
                                         n_ctx=0, path=folder, error=error)
            problems.append(f"{folder.name}: {error} (listed, but it cannot be loaded)")
    return out, problems


def _published() -> dict[str, ModelInfo]:
    """:func:`published_models`, each problem logged once as a ``warning:`` line."""
    out, problems = published_models()
    for problem in problems:
        if problem not in _warned:
            _warned.add(problem)
            log.warning("warning: %s", problem)
    return out


def registry() -> dict[str, ModelInfo]:
    """Every registered name -> :class:`ModelInfo` (model configs, then published models).

    Read from disk on each call (a few small files), so newly published models appear at once.
    """
    return {**_configs(), **_published()}


def list_models(pattern: str = "*", pretrained: bool | None = None) -> list[str]:
    """Registered names matching the shell-style ``pattern`` (case-insensitive), sorted.

    ``pretrained=True`` lists only published checkpoints, ``False`` only model configs.
    """
    if not isinstance(pattern, str):
        raise ZooError(f"zoo.list_models: pattern must be a string (shell-style, e.g. '*edu'); got {pattern!r}")
    if pretrained not in (None, True, False):
        raise ZooError(f"zoo.list_models: pretrained must be True, False or None; got {pretrained!r}")
    names = []
    for name, info in registry().items():
        if pretrained is not None and info.pretrained != pretrained:
            continue
        if fnmatch.fnmatch(name.lower(), pattern.lower()):
            names.append(name)
    return sorted(names)


def _unknown(name: str, choices: list[str], what: str = "model") -> ZooError:
    return ZooError(
        f"unknown {what} '{name}'{did_you_mean(name, choices)}; available: {', '.join(sorted(choices))}"
        + (" (or give the path of a model folder)" if what == "model" else "")
    )


def _check_name(name: Any, caller: str) -> str:
    if not isinstance(name, str) or not name:
        raise ZooError(f"{caller}: name must be a registered name (see zoo.list_models()); got {name!r}")
    return name


def _usable(info: ModelInfo) -> ModelInfo:
    """``info``, unless it is a published folder that cannot be read (then its one-line error)."""
    if info.error:
        raise ZooError(info.error)
    return info


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered name (a clear error with a suggestion if unknown).

    A published folder that cannot be read is returned with its :attr:`~ModelInfo.error` set.
    """
    _check_name(name, "zoo.model_info")
    reg = registry()
    if name not in reg:
        raise _unknown(name, list(reg))
    return reg[name]


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a registered model as a plain ``nn.Module``.

    Args:
        name: a model config (``llama_tiny``) or a published model (``llama-edu``).
        pretrained: load the published weights (only for published models, with no overrides).
        **overrides: ``vocab_size``, ``n_ctx`` and any option of the model's config
            (``d_model=64``, ``encoder={"n_layers": 2}``, ...).

    Without ``pretrained`` a published name gives its architecture, randomly initialised.
    """
    _check_name(name, "zoo.create_model")
    info = _usable(model_info(name))
    if pretrained:
        _require_weights(info)
        if overrides:
            raise ZooError(
                f"create_model('{name}', pretrained=True) takes no overrides ({', '.join(overrides)}): "
                "the trained weights only fit the architecture they were trained with"
            )
        model, _ = load(name)
        return model
    vocab_size = overrides.pop("vocab_size", info.vocab_size)
    n_ctx = overrides.pop("n_ctx", info.n_ctx)
    check_value("vocab_size", vocab_size, int, {"ge": MIN_VOCAB_SIZE})  # a zoo tokenizer's size
    return build_model(_merge(info.model, overrides), vocab_size, n_ctx)


def _require_weights(info: ModelInfo) -> None:
    """Refuse a model config where trained weights are asked for, naming what exists."""
    if not info.pretrained:
        published = list_models(pretrained=True)
        raise ZooError(
            f"'{info.name}' is a model config with no trained weights; zoo.create_model('{info.name}') builds "
            f"it randomly initialised; published models: {', '.join(published) or 'none yet'}"
        )


def resolve(name_or_path: str | os.PathLike) -> Path | None:
    """The folder a published name or a model-folder path stands for (``None``: neither)."""
    path = _as_path(name_or_path, "zoo.hub.registry.resolve")
    if path.is_dir():
        return path
    info = _published().get(str(name_or_path))
    return info.path if info else None


def _as_path(name_or_path: Any, caller: str) -> Path:
    if not isinstance(name_or_path, str | os.PathLike) or not str(name_or_path):
        raise ZooError(f"{caller}: name_or_path must be a published name or a model-folder path; got {name_or_path!r}")
    return Path(name_or_path).expanduser()


def load(name_or_path: str | os.PathLike, verify: bool = True) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)``: a published model by name, or any exported model folder.

    The model is a plain ``nn.Module`` in eval mode, in float32 whatever precision its
    weights are stored in; the tokenizer a ``transformers`` fast tokenizer. With ``verify``
    (the default) every file is checked against its sha256 first.
    """
    path = _as_path(name_or_path, "zoo.load")
    if not path.is_dir():
        name = str(name_or_path)
        reg = registry()
        info = reg.get(name)
        if info is None:
            raise _unknown(name, list(reg))
        _require_weights(_usable(info))
        if verify:
            verify_manifest(name)
        path = info.path
    model, tokenizer, _ = load_pretrained(path, verify=verify)
    return model, tokenizer


def architecture_parameters(info: ModelInfo) -> int:
    """Parameters of a registered model without allocating it (built on the meta device)."""
    import torch

    with torch.device("meta"):
        model = build_model(info.model, info.vocab_size, info.n_ctx)
    return count_parameters(model)
