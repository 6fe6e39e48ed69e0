"""What the ``python -m zoo.*`` commands share: ``key=value`` arguments and data options.

Every command takes ``key=value`` arguments; :func:`key_values` checks them against the
command's options (a one-line :class:`~zoo.errors.ZooError` with did-you-mean otherwise), and
:func:`data_options` turns ``data=NAME`` (a group from ``recipes/data``) plus ``data.KEY=VALUE``
overrides into the ``data:`` section a :class:`~zoo.data.datamodule.TextDataModule` takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from zoo.errors import ZooError, unknown


def key_values(argv: Sequence[str], allowed: Iterable[str], what: str = "option") -> dict[str, str]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b.c": "x"}``, values as typed; every key's first
    dotted part must be in ``allowed``."""
    allowed = tuple(allowed)
    args: dict[str, str] = {}
    for a in argv:
        if "=" not in a:
            raise ZooError(f"arguments are key=value; got {a!r}")
        key, value = a.split("=", 1)
        if key.split(".")[0] not in allowed:
            raise unknown(what, key, allowed)
        args[key] = value
    return args


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"sources": {"0": {"x": 1}}}`` -> ``{"sources.0.x": 1}`` (what a dotlist parses into)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def data_options(group: str | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``data:`` options of group ``recipes/data/<group>.yaml`` (none: ``{}``), then
    ``overrides`` (the ``data.KEY=VALUE`` arguments, nested as OmegaConf parses a dotlist) on
    top, key by key: ``sources.0.data_files=...`` changes one option of the first source, as
    it does on ``zoo.fit``."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from zoo.recipes import list_group, recipes_dir

    data: dict[str, Any] = {}
    if group is not None:
        if group not in list_group("data"):
            raise unknown("data option", group, list_group("data"))
        data.update(yaml.safe_load((recipes_dir() / "data" / f"{group}.yaml").read_text()))
    cfg = OmegaConf.create(data)
    for key, value in _flatten(overrides or {}).items():
        parts = key.split(".")
        if parts[0] == "sources" and len(parts) > 1:
            n = len(cfg.get("sources") or [])
            if not parts[1].isdigit() or int(parts[1]) >= n:
                raise ZooError(f"data.{key}: data.sources has {n} entr{'y' if n == 1 else 'ies'} "
                               f"(indices 0..{n - 1}); choose a data= group with that many sources")
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise ZooError(f"data.{key}={value!r}: {str(e).splitlines()[0]}") from None
    out = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(out, dict)
    return out
