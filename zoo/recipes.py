"""Recipes: the Hydra configs in the top-level ``recipes/`` folder.

``recipes/NAME.yaml`` is one recipe (a primary config). It composes the shared groups in
``recipes/base``, ``recipes/trainer``, ``recipes/data``, ``recipes/model`` and
``recipes/logger`` and overrides any key. This module finds the folder, lists what is in
it, and composes a recipe with command-line overrides, turning Hydra's errors about
unknown names into messages that list what exists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zoo.errors import ZooError, did_you_mean, unknown

#: config groups a recipe composes (folders of recipes/), besides ``base``
GROUPS = ("trainer", "data", "model", "logger")


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


def compose(recipe: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a recipe with overrides (as ``python -m zoo.fit`` would), without running it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    check_recipe(recipe)
    with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
        try:
            return hydra_compose(config_name=recipe, overrides=list(overrides))
        except HydraException as e:
            error = e
    raise explain(error, recipe) from None  # outside the Hydra context: explain() composes too


def explain(error: Exception, recipe: str) -> ZooError:
    """Turn a Hydra composition error into a message that says what exists."""
    msg = str(error)
    m = re.search(r"Could not find '([^/']+)/([^']+)'", msg) or re.search(
        r"In '[^']*': Could not find '([^/']+)/([^']+)'", msg
    )
    if m and m.group(1) in GROUPS:
        return unknown(f"{m.group(1)} option", m.group(2), list_group(m.group(1)))
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' is not in struct", msg)
    if m:
        key = m.group(1)
        parent, _, leaf = key.rpartition(".")
        try:
            cfg = compose(recipe)
            node = OmegaConf.select(cfg, parent) if parent else cfg
            keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        except ZooError:
            keys = []
        where = f"'{parent}'" if parent else "the top level"
        hint = did_you_mean(leaf, keys)
        listing = f"; keys of {where}: {', '.join(keys)}" if keys else ""
        return ZooError(
            f"unknown config key '{key}'{hint}{listing}. "
            f"To add a new key on purpose, write +{key}=VALUE"
        )
    return ZooError(f"bad override for recipe '{recipe}': {msg}")


#: keys whose value may legitimately change type from the recipe's default
LOOSE_KEYS = frozenset({"trainer.devices", "trainer.val_check_interval", "trainer.precision"})


def check_types(default: DictConfig, given: DictConfig, prefix: str = "") -> None:
    """Raise a :class:`ZooError` where an override's type does not fit the recipe's value.

    A number must stay a number (an int may become a float), a bool a bool, a list a list
    and a section a section; keys whose default is null accept anything.
    """
    for key in given:
        path = f"{prefix}{key}"
        if key not in default or path in LOOSE_KEYS:
            continue
        old = OmegaConf.select(default, str(key), throw_on_missing=False)
        new = OmegaConf.select(given, str(key), throw_on_missing=False)
        if old is None or new is None or OmegaConf.is_missing(default, key):
            continue
        if isinstance(old, DictConfig):
            if not isinstance(new, DictConfig):
                raise ZooError(f"{path} is a config section; got the value {new!r}")
            check_types(old, new, f"{path}.")
            continue
        if isinstance(old, bool):
            ok = isinstance(new, bool)
        elif isinstance(old, int | float):
            ok = isinstance(new, int | float) and not isinstance(new, bool)
        elif OmegaConf.is_list(old):
            ok = OmegaConf.is_list(new)
        else:
            ok = True
        if not ok:
            kind = "a list" if OmegaConf.is_list(old) else {"bool": "true or false", "int": "a number", "float": "a number"}.get(type(old).__name__, type(old).__name__)
            raise ZooError(f"{path} must be {kind} (like {old!r}); got {new!r}")
