"""What the ``python -m zoo.*`` commands share: the skeleton, ``key=value`` arguments, data options.

:func:`run_command` is every command's ``main``: ``--help`` prints the command's docstring,
and a :class:`~zoo.errors.ZooError` (input the user can fix) prints one ``error: ...`` line
and exits with status 2, never a traceback. Every command takes ``key=value`` arguments;
:func:`key_values` checks them against the command's options (a one-line error with
did-you-mean otherwise), :func:`number` reads a numeric one with its range,
:func:`emit` prints a result as a table or JSON (``json=-``, ``json=PATH``), and
:func:`data_options` turns ``data=NAME`` (a group from ``recipes/data``) plus ``data.KEY=VALUE``
overrides into the ``data:`` section a :class:`~zoo.data.datamodule.TextDataModule` takes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from zoo.errors import ZooError, unknown

HELP = ("-h", "--help", "help")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Inside: a :class:`ZooError` prints one ``error: ...`` line on stderr and exits with 2."""
    try:
        yield
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run_command(body: Callable[[list[str]], Any], doc: str | Callable[[], str] | None,
                argv: Sequence[str] | None = None, *, help_when_empty: bool = True,
                interrupt_note: str | None = None) -> None:
    """Run a command's ``body(argv)`` with the shared conventions (module docstring).

    ``doc``: the help text (or a function that makes it). ``help_when_empty``: no arguments
    prints the help (for commands that need some). ``interrupt_note``: what Ctrl-C leaves
    behind, printed instead of a traceback (exit 130).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if (help_when_empty and not args) or (args and args[0] in HELP):
        print((doc() if callable(doc) else doc) or "")
        return
    try:
        with user_errors():
            body(args)
    except KeyboardInterrupt:
        if interrupt_note is None:
            raise
        print(f"interrupted: {interrupt_note}", file=sys.stderr)
        raise SystemExit(130) from None


def number(args: Mapping[str, Any], key: str, default: Any, kind: type = int,
           minimum: float | None = None, maximum: float | None = None) -> Any:
    """``args[key]`` (or ``default``) as ``kind`` (``int`` or ``float``) within
    [``minimum``, ``maximum``]; a one-line :class:`ZooError` naming the key otherwise."""
    value = args.get(key, default)
    if value is None:
        return None
    what = "an integer" if kind is int else "a finite number"
    if isinstance(value, str):
        try:
            value = kind(value)
        except ValueError:
            raise ZooError(f"{key} must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise ZooError(f"{key} must be {what}, got {value!r}")
    if not math.isfinite(value):  # NaN compares False with every bound: refuse it (and inf) here
        raise ZooError(f"{key} must be {what}{_bounds(minimum, maximum)}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ZooError(f"{key} must be {what}{_bounds(minimum, maximum)}, got {value!r}")
    return kind(value)


TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def flag(args: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """``args[key]`` as a bool (``true``/``false``, ``1``/``0``, ``yes``/``no``); a one-line
    :class:`ZooError` naming the key for anything else."""
    value = args.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise ZooError(f"{key} must be true or false, got {value!r}")


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is None and maximum is None:
        return ""
    return (f" >= {minimum}" if maximum is None else f" <= {maximum}" if minimum is None
            else f" in [{minimum}, {maximum}]")


def choice(args: Mapping[str, Any], key: str, default: str, allowed: Sequence[str]) -> str:
    """``args[key]`` (or ``default``), one of ``allowed``; a one-line :class:`ZooError` otherwise."""
    value = str(args.get(key, default))
    if value not in allowed:
        raise unknown(key, value, allowed)
    return value


def json_target(args: Mapping[str, Any], key: str = "json") -> str | None:
    """The ``json=`` target of :func:`emit`, checked before any work is done: ``-`` (print
    JSON), or a file path whose folder exists and is writable and that is not a folder."""
    target = args.get(key)
    if target in (None, "", "-"):
        return target or None
    path = Path(str(target)).expanduser()
    if path.is_dir():
        raise ZooError(f"{key}={target}: {path} is a folder, not a file; give a file path (or json=- to print JSON)")
    folder = path.parent
    if not folder.is_dir():
        raise ZooError(f"{key}={target}: no folder {folder} to write it in")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ZooError(f"{key}={target}: {path} is not writable")
    return str(target)


def emit(result: Any, text: str, target: str | None) -> None:
    """Print ``text`` (or, for ``json=-``, the JSON of ``result``); ``json=PATH`` also writes it."""
    if target == "-":
        print(json.dumps(result, indent=1))
        return
    print(text)
    if target:
        Path(target).write_text(json.dumps(result, indent=1))


def key_values(argv: Sequence[str], allowed: Iterable[str], what: str = "option",
               empty_ok: Iterable[str] = ()) -> dict[str, str]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b.c": "x"}``, values as typed; every key's first
    dotted part must be in ``allowed``, and only the keys in ``empty_ok`` (free text such as
    a prompt) may be given an empty value."""
    allowed, empty_ok = tuple(allowed), set(empty_ok)
    args: dict[str, str] = {}
    for a in argv:
        if "=" not in a:
            raise ZooError(f"arguments are key=value; got {a!r}")
        key, value = a.split("=", 1)
        if key.split(".")[0] not in allowed:
            raise unknown(what, key, allowed)
        if value == "" and key not in empty_ok:
            raise ZooError(f"{key}= has no value; give one, or leave {key}= out for its default")
        args[key] = value
    return args


def writable_folder(args: Mapping[str, Any], key: str) -> Path | None:
    """``args[key]`` as a folder a command will create or write into, checked before any work:
    not an existing file, under no file, and writable where it exists. ``None`` if not given."""
    if args.get(key) in (None, ""):
        return None
    path = Path(str(args[key])).expanduser()
    if path.exists() and not path.is_dir():
        raise ZooError(f"{key}={args[key]}: {path} is a file, not a folder; give a folder")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ZooError(f"{key}={args[key]}: {existing} is a file, so no folder can be made below it")
    if existing is not None and not os.access(existing, os.W_OK):
        raise ZooError(f"{key}={args[key]}: {existing} is not writable")
    return path


def flatten_keys(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"sources": {"0": {"x": 1}}}`` -> ``{"sources.0.x": 1}`` (what a dotlist parses into)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


#: what an unset (``???``) data option must be, by its last key, for the error that names it
MANDATORY_HINTS = {"paths": "a file, folder or glob", "data_files": "a file, folder, glob or hf:// path"}


def data_options(group: str | None, overrides: Mapping[str, Any] | None = None,
                 base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``data:`` section a command runs on, built as ``zoo.fit`` builds it.

    ``base`` (a run's own ``data:`` section; none: ``{}``), then the options of group
    ``recipes/data/<group>.yaml`` replacing the keys it sets (``data=files`` replaces the
    run's ``sources`` and keeps its ``n_ctx``), then ``overrides`` (the ``data.KEY=VALUE``
    arguments, nested as OmegaConf parses a dotlist) on top, key by key:
    ``sources.0.data_files=...`` changes one option of the first source. An option left
    unset (``???``) is a one-line :class:`ZooError` naming it.
    """
    import copy

    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from zoo.recipes import list_group, recipes_dir

    data: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if group is not None:
        if group not in list_group("data"):
            raise unknown("data option", group, list_group("data"))
        data.update(yaml.safe_load((recipes_dir() / "data" / f"{group}.yaml").read_text()))
    cfg = OmegaConf.create(data)
    for key, value in flatten_keys(overrides or {}).items():
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
    for key, value in flatten_keys(_indexed(out)).items():
        if value == "???":
            hint = MANDATORY_HINTS.get(key.rsplit(".", 1)[-1])
            raise ZooError(f"data.{key} must be set{f' ({hint})' if hint else ''}: add data.{key}=...")
    return out


def _indexed(tree: Any) -> Any:
    """Lists as ``{"0": ..., "1": ...}`` (so :func:`flatten_keys` names ``sources.0.paths``)."""
    if isinstance(tree, Mapping):
        return {k: _indexed(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return {str(i): _indexed(v) for i, v in enumerate(tree)}
    return tree
