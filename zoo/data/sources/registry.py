"""The source registry: names a recipe can use in ``data.sources``, and how to build them.

A source kind registers itself with :func:`register_source`, once per name it answers to
(a name may preset options, as ``fineweb-edu`` presets the hub dataset's path)::

    @register_source("my-corpus", min_chars=64)
    class MyCorpus(Source): ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from zoo.data.sources.base import COMMON_OPTIONS, Source
from zoo.errors import ZooError, did_you_mean, unknown
from zoo.plugins import load_plugins

_REGISTRY: dict[str, tuple[type[Source], dict[str, Any]]] = {}


def register_source(name: str, **preset: Any) -> Callable[[type[Source]], type[Source]]:
    """Class decorator: make ``cls`` buildable as source ``name``, with ``preset`` options."""

    def add(cls: type[Source]) -> type[Source]:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"data source '{name}' is registered twice ({_REGISTRY[name][0].__name__}, {cls.__name__})")
        unknown_keys = set(preset) - set(cls.OPTIONS) - set(COMMON_OPTIONS)
        if unknown_keys:
            raise ValueError(f"preset option(s) {sorted(unknown_keys)} are not options of {cls.__name__}")
        _REGISTRY[name] = (cls, dict(preset))
        return cls

    return add


def list_sources() -> list[str]:
    """Names accepted by :func:`build_source`, sorted (plug-ins of ``$ZOO_PLUGINS`` included)."""
    load_plugins()
    return sorted(_REGISTRY)


def source_options(name: str) -> dict[str, Any]:
    """Every option of source ``name`` with its default (common options included)."""
    if name not in _REGISTRY:
        raise unknown("data source", name, _REGISTRY)
    cls, preset = _REGISTRY[name]
    return {**COMMON_OPTIONS, **cls.OPTIONS, **preset}


def _plain(value: Any) -> Any:
    """Turn OmegaConf containers (from Hydra recipes) into dicts/lists, leaving the rest alone."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def build_source(spec: Mapping[str, Any] | str) -> Source:
    """Build a source from ``{"name": <registered name>, **options}`` (a dict or DictConfig).

    Unset options take their defaults (:func:`source_options`); an unknown name or option key
    is a :class:`ZooError` that lists what is allowed. A bare string is taken as the name.
    """
    load_plugins()
    spec = {"name": spec} if isinstance(spec, str) else _plain(spec)
    if not isinstance(spec, Mapping):
        raise ZooError(f"a data source must be a mapping with a 'name' key, got {spec!r}")
    spec = dict(spec)
    if "name" not in spec:
        raise ZooError(f"a data source needs a 'name'; available: {', '.join(list_sources())}")
    name = spec.pop("name")
    if not isinstance(name, str) or name not in _REGISTRY:
        raise unknown("data source", str(name), _REGISTRY)
    options = source_options(name)
    for key in spec:
        if key not in options:
            raise ZooError(
                f"unknown option '{key}' for data source '{name}'{did_you_mean(str(key), options)}; "
                f"allowed: {', '.join(sorted(options))}"
            )
    options.update(spec)
    cls, _ = _REGISTRY[name]
    return cls(name, options)

