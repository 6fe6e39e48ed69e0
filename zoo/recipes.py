"""Recipes: the Hydra configs in the top-level ``recipes/`` folder.

``recipes/NAME.yaml`` is one recipe (a primary config). It composes the shared groups in
``recipes/base``, ``recipes/trainer``, ``recipes/data``, ``recipes/model`` and
``recipes/logger`` (and ``recipes/scale``, the CPU size several recipes share) and overrides any key. This module finds the folder, lists what is in
it, and composes a recipe with command-line overrides: unknown names (recipes, group options,
keys) are refused before Hydra runs, with a message that lists what exists, and the composed
config is validated against :mod:`zoo.schema`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import zoo.schema as schema
from zoo.errors import ZooError, did_you_mean, unknown

#: config groups a recipe composes (folders of recipes/), besides ``base``
GROUPS = ("trainer", "data", "model", "logger", "scale")


def recipes_dir() -> Path:
    """The recipes folder: ``$ZOO_RECIPES``, else ``recipes/`` beside the ``zoo`` package."""
    env = os.environ.get("ZOO_RECIPES")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "recipes"
    if not path.is_dir():
        raise ZooError(
            f"recipes folder not found at {path}; install zoo from its source tree "
            "(pip install -e .) or set ZOO_RECIPES to the folder"
        )
    return path


def list_recipes() -> list[str]:
    """Names accepted by ``recipe=NAME``."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def list_group(group: str) -> list[str]:
    """Options of a config group, e.g. ``list_group("model")``."""
    return sorted(p.stem for p in (recipes_dir() / group).glob("*.yaml"))


def recipe_summary(name: str) -> str:
    """The first comment line of a recipe file (its one-line description)."""
    for line in (recipes_dir() / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def check_recipe(name: str) -> None:
    """Raise a :class:`ZooError` listing the recipes if ``name`` is not one."""
    if name not in list_recipes():
        raise unknown("recipe", name, list_recipes())


def compose(recipe: str, overrides: Sequence[str] = (), validate: bool = True) -> DictConfig:
    """Compose a recipe with overrides (as ``python -m zoo.fit`` would), without running it.

    Unknown recipes, group options and keys are refused before Hydra composes (with a message
    that lists what exists); with ``validate`` the result is checked against
    :mod:`zoo.schema` (types and ranges). Either raises a one-line :class:`ZooError`.
    """
    return compose_overrides(recipe, overrides, validate)[0]


def compose_overrides(recipe: str, overrides: Sequence[str] = (), validate: bool = True) -> tuple[DictConfig, list[str]]:
    """:func:`compose`, also returning the overrides as Hydra must get them (see :func:`check_overrides`)."""
    check_recipe(recipe)
    overrides, reference = check_overrides(recipe, overrides)
    cfg = _hydra_compose(recipe, overrides)
    if validate:
        schema.validate(cfg, reference)
    return cfg, overrides


def run_dir(recipe: str, overrides: Sequence[str] = ()) -> Path:
    """The run folder Hydra would give this run now: ``hydra.run.dir`` of the composed recipe
    (``hydra.*`` overrides included), resolved (``${now:...}`` is the current time)."""
    cfg = _hydra_compose(recipe, overrides, hydra=True)
    return Path(str(OmegaConf.select(cfg, "hydra.run.dir")))


def _hydra_compose(recipe: str, overrides: Sequence[str], hydra: bool = False) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
        try:
            return hydra_compose(config_name=recipe, overrides=list(overrides), return_hydra_config=hydra)
        except HydraException as e:  # what the checks before could not tell: Hydra's own words
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
    raise ZooError(f"bad override for recipe '{recipe}': {first}")


def split_override(override: str) -> tuple[str, str, str | None]:
    """``(prefix, key, value)`` of a Hydra override: ``+model.moe.k=2`` -> ``("+", "model.moe.k", "2")``."""
    key, eq, value = override.partition("=")
    prefix = key[: len(key) - len(key.lstrip("+~"))]
    return prefix, key[len(prefix):], value if eq else None


def check_overrides(recipe: str, overrides: Sequence[str]) -> tuple[list[str], DictConfig]:
    """Check every override against the recipe before Hydra sees them.

    A group option (``model=NAME``) must be a file of its group; a key (``optim.lr=...``) must
    exist in the recipe as composed with the group choices (write ``+key=VALUE`` to add one).
    A key of a section the schema knows but the recipe leaves null (``entropy.estimates=DIR``
    where ``entropy: null``) is turned into ``+key=VALUE``. Returns the overrides to give
    Hydra and the reference config (the recipe with the group choices and ``+``/``~`` ones).
    """
    groups = {p.name for p in recipes_dir().iterdir() if p.is_dir()}
    for o in overrides:
        prefix, key, value = split_override(o)
        if not prefix and key in groups and value is not None and value not in list_group(key):
            if value.replace("_", "").replace("-", "").isalnum():  # a plain name (not null, a list, ...)
                raise unknown(f"{key} option", value, list_group(key))
    structural = [o for o in overrides if split_override(o)[0] or split_override(o)[1] in groups]
    reference = _hydra_compose(recipe, structural)
    tree = OmegaConf.to_container(reference, resolve=False)
    out = []
    for o in overrides:
        prefix, key, value = split_override(o)
        if not prefix and key not in groups and value is not None and "@" not in key:
            if _path_needs_adding(tree, key):
                o = f"+{o}"
        out.append(o)
    return out, reference


def _path_needs_adding(tree: Any, key: str) -> bool:
    """Whether ``key`` is a schema key under a section that is null here (so ``+key`` sets it);
    raises a :class:`ZooError` if ``key`` is not in ``tree`` at all."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                n = len(node)
                raise ZooError(f"{where} has {n} entr{'y' if n == 1 else 'ies'} (indices 0..{n - 1}); got '{key}'")
            node = node[int(part)]
            continue
        if node is None and schema.section_class(where) is not None:
            cls = schema.section_class(where)
            names = [f.name for f in dataclasses.fields(cls)]
            if part in names and i == len(parts) - 1:
                return True
            raise unknown_key(key, names, where, open_section=False)
        if not isinstance(node, dict):
            raise ZooError(f"{where} is the value {node!r}, not a config section; cannot set '{key}'")
        if part not in node:
            top = parts[0]
            raise unknown_key(key, [str(k) for k in node], where,
                              open_section=top in schema.OPEN_SECTIONS or where.startswith("data.sources"))
        node = node[part]
    return False


def unknown_key(key: str, keys: Sequence[str], where: str, open_section: bool) -> ZooError:
    """The error for an override of a key the config does not have."""
    leaf = key.rpartition(".")[2]
    place = f"'{where}'" if where else "the top level"
    listing = f"; keys of {place}: {', '.join(keys)}" if keys else ""
    add = f". To add a new key on purpose, write +{key}=VALUE" if open_section else ""
    return ZooError(f"unknown config key '{key}'{did_you_mean(leaf, keys)}{listing}{add}")
