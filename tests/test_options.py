"""Every option of every command, given a bad value, is refused in one line (exit 2, the
option named, no traceback), before any work.

Two tables drive it:

* ``zoo.fit``: every scalar option of the config schema (zoo/schema.py), derived from the
  schema itself, so a new option is covered the day it is added;
* the other commands: every entry of each command's ``OPTIONS`` (``SPECS`` below gives each
  option its kind; a test fails when a command gains an option that has no kind here).

Per kind the bad values are: a wrong type, out of range, empty, and for paths a directory
where a file is wanted, a missing path and an unwritable one. The commands run in-process
(their real ``main``), which keeps the few hundred cases within seconds.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest

from zoo import schema
from zoo.errors import ZooError
from zoo.recipes import compose

# ---------------------------------------------------------------------------------- zoo.fit


def _scalar_options() -> list[tuple[str, object, dict]]:
    out = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            sub = next((t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)), None)
            if sub is not None:
                walk(sub, f"{prefix}{f.name}.")
            elif f.name not in schema.OPEN_SECTIONS or prefix:
                out.append((f"{prefix}{f.name}", tp, dict(f.metadata)))

    walk(schema.ZooConfig, "")
    return out


def _bad_values(tp: object, check: dict) -> list[str]:
    """Overrides (as typed on the command line) that break the option's type or range."""
    base = next((t for t in typing.get_args(tp) if t is not type(None)), tp)
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        return ["abc"] + (["[nope]"] if "choices" in check else [])
    bad = []
    if base is bool:
        bad.append("maybe")
    elif base in (int, float):
        bad += ["abc", "[1]"] + (["1.5"] if base is int else ["nan"])
        if "ge" in check:
            bad.append(str(check["ge"] - 1))
        if "gt" in check:
            bad.append(str(check["gt"]))
        if "le" in check:
            bad.append(str(check["le"] + 1))
        if "lt" in check:
            bad.append(str(check["lt"]))
    elif base is str:
        bad.append("[1, 2]")
        if "choices" in check:
            bad += ["nope", "''"]
    return bad


FIT_CASES = [(key, bad) for key, tp, check in _scalar_options() for bad in _bad_values(tp, check)]


def test_the_fit_table_covers_every_scalar_option() -> None:
    keys = {k for k, _ in FIT_CASES}
    assert {"optim.min_lr_ratio", "data.n_ctx", "data.tokenizer.vocab_size", "checkpoint.every_n_train_steps",
            "loss.alpha", "weight_entropy.every_n_steps", "seed", "nonfinite"} <= keys
    assert len(FIT_CASES) > 100


@pytest.mark.parametrize("key, bad", FIT_CASES, ids=[f"{k}={b}" for k, b in FIT_CASES])
def test_fit_refuses_a_bad_value_of_every_option(key, bad) -> None:
    with pytest.raises(ZooError) as e:
        compose("quickstart", [f"{key}={bad}"])
    message = str(e.value)
    assert key in message and "\n" not in message, message


# ---------------------------------------------------------------------------------- the other commands

#: kind -> bad values; ``{dir}`` is an existing directory, ``{file}`` an existing file
BAD = {
    "count": ["abc", "-1", "0", "", "1.5"],  # a positive integer
    "count0": ["abc", "-1", "", "1.5"],  # an integer >= 0
    "number0": ["abc", "-1", "nan", ""],  # a number >= 0
    "choice": ["nope", ""],
    "bool": ["maybe", ""],
    "model": ["/nonexistent/zoo-model", "{dir}", ""],  # a model folder, .ckpt or published name
    "text": ["/nonexistent/zoo-*.txt", "{dir}", ""],  # files to read: a glob that matches nothing, an empty folder
    "json": ["{dir}", "/nonexistent/zoo-dir/x.json", "{file}/x.json"],  # a file to write
    "out_dir": ["{file}", "{file}/sub"],  # a folder to create or write into
    "data": ["nope", ""],  # a data group of recipes/data
    "name": ["Not A Name!", ""],
    "free": [],  # any text is fine (a prompt, a description)
}

#: command -> (module, arguments that make the rest of the command line valid, {option: kind})
SPECS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "evaluate": ("zoo.evaluate", ["checkpoint={published}/llama-edu", "max_batches=1"], {
        "checkpoint": "model", "split": "choice", "data": "data", "max_batches": "count", "json": "json",
        "accelerator": "choice", "quantize": "choice", "text": "text", "compressors": "choice"}),
    "compress": ("zoo.compress", ["{published}/llama-edu", "{file}", "{tmp}/out.zoo"], {
        "rows": "count", "path": "choice", "segments": "choice", "weights": "choice", "vector_format": "choice",
        "device": "choice", "overwrite": "bool", "json": "json"}),
    "decompress": ("zoo.decompress", ["{published}/llama-edu", "{file}", "{tmp}/out.bin"], {
        "device": "choice", "overwrite": "bool", "json": "json"}),
    "generate": ("zoo.generate", ["llama-edu", "max_new_tokens=2"], {
        "prompt": "free", "max_new_tokens": "count", "temperature": "number0", "top_k": "count0", "seed": "count0",
        "n": "count"}),
    "export": ("zoo.export", ["llama-edu", "out={tmp}/exported"], {"out": "out_dir", "dtype": "choice", "overwrite": "bool"}),
    "publish": ("zoo.publish", ["name=zoo-options-test", "run=/nonexistent/zoo-run"], {
        "run": "model", "name": "name", "precision": "choice", "precision_reason": "free", "bf16_tolerance": "number0",
        "eval": "data", "check_batches": "count", "description": "free", "table": "bool"}),
    "diversity": ("zoo.diversity", ["data=edu", "words=100", "semantic=false"], {
        "data": "data", "split": "choice", "words": "count", "seed": "count0", "json": "json", "semantic": "choice",
        "embed_documents": "count", "bleu_documents": "count", "max_topics": "count", "png": "json"}),
    "data": ("zoo.data.__main__", ["info", "data=edu"], {
        "recipe": "choice", "data": "data", "num_proc": "count", "node_rank": "count0", "num_nodes": "count",
        "verify": "bool", "seed": "count0"}),
    "entropy estimate": ("zoo.entropy.__main__", ["estimate", "checkpoint={published}/llama-edu", "out={tmp}/estimates",
                                                  "max_documents=2"], {
        "checkpoint": "model", "out": "out_dir", "split": "choice", "data": "data", "max_documents": "count",
        "batch_size": "count", "accelerator": "choice", "json": "json"}),
    "geometry entropy": ("zoo.geometry.__main__", ["entropy", "checkpoint={published}/llama-edu", "tokens=64"], {
        "checkpoint": "model", "data": "data", "split": "choice", "tokens": "count", "alpha": "number0",
        "matrix": "choice", "json": "json", "out": "out_dir"}),
    "flatness": ("zoo.flatness.__main__", ["checkpoint={published}/llama-edu", "batches=1", "batch_size=1", "top_k=1",
                                           "lanczos_steps=2", "trace_samples=1", "llc_steps=0"], {
        "checkpoint": "model", "data": "data", "split": "choice", "batches": "count", "batch_size": "count",
        "top_k": "count", "lanczos_steps": "count0", "trace_samples": "count", "trace_method": "choice",
        "density_runs": "count0", "density_steps": "count", "z": "number0", "llc_steps": "count0",
        "llc_chains": "count", "llc_lr": "number0", "llc_gamma": "number0", "llc_nbeta": "number0", "seed": "count0",
        "json": "json", "out": "out_dir"}),
}


def command_options(module: str, argv: list[str]) -> tuple[str, ...]:
    mod = importlib.import_module(module)
    if module == "zoo.entropy.__main__":
        return tuple(mod.COMMANDS[argv[0]])
    return tuple(mod.OPTIONS)


def test_every_option_of_every_command_has_a_kind() -> None:
    for command, (module, base, kinds) in SPECS.items():
        assert set(command_options(module, base)) == set(kinds), command


def _cases() -> list[tuple[str, str, str]]:
    return [(command, option, bad) for command, (_, _, kinds) in SPECS.items()
            for option, kind in kinds.items() for bad in BAD[kind]]


CASES = _cases()


@pytest.mark.parametrize("command, option, bad", CASES, ids=[f"{c}:{o}={b!r}" for c, o, b in CASES])
def test_every_command_refuses_a_bad_value_of_every_option(command, option, bad, tmp_path, capsys, monkeypatch,
                                                           cache_dir) -> None:
    module, base, _ = SPECS[command]
    published = Path(__file__).resolve().parent.parent / "checkpoints"
    # publish writes into the zoo: give it an empty one; the others read the published models
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "zoo" if command == "publish" else published))
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    fill = {"tmp": str(tmp_path), "dir": str(tmp_path / "a-dir"), "file": str(tmp_path / "a-file"),
            "published": str(published)}
    value = bad.format(**fill)
    argv = [a.format(**fill) for a in base if not a.startswith(f"{option}=")] + [f"{option}={value}"]
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2, err[-2000:]
    assert len(lines) == 1 and option in lines[0], err[-2000:]
