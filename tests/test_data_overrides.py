"""Every data override the README and docs show works as written, on zoo.fit and on the other
commands, and every option of every source can be overridden without a '+'."""

from __future__ import annotations

import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from hub_schemas import fineweb_edu_table
from omegaconf import OmegaConf

from zoo.cli import data_options
from zoo.data.sources import build_source, source_options
from zoo.recipes import compose, list_group, recipes_dir

ROOT = Path(__file__).resolve().parent.parent
PATH_KEYS = {"paths", "data_files"}


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(file, arguments)`` of every ``python -m zoo.*`` line in README.md and docs/ with a data override."""
    found = []
    # docs/errors.md lists commands that must fail (generated from the error tests): not examples
    for doc in [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "errors.md")]:
        for line in doc.read_text().splitlines():
            line = line.strip().strip("`")
            if "python -m zoo." not in line or "data." not in line:
                continue
            command = line[line.index("python -m zoo."):].split(" #")[0].split("`")[0]
            try:
                words = shlex.split(command)
            except ValueError:
                continue
            if any(w.startswith("data.") for w in words):
                found.append((doc.name, words))
    return found


def test_the_docs_show_data_overrides() -> None:
    keys = {w.split("=")[0] for _, words in documented_commands() for w in words if w.startswith("data.")}
    assert {"data.sources.0.data_files", "data.sources.0.max_documents", "data.sources.0.paths"} <= keys, keys


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("override-files")
    pq.write_table(fineweb_edu_table(0, 50), folder / "shard.parquet")
    (folder / "corpus.jsonl").write_text("".join(f'{{"text": "line {i} of text"}}\n' for i in range(50)))
    return {"data_files": str(folder / "*.parquet"), "paths": str(folder / "*.jsonl")}


@pytest.mark.parametrize("doc,words", documented_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_documented_data_override_works(doc, words, real_files) -> None:
    group = next((w.split("=", 1)[1] for w in words if w.startswith("data=")), None)
    overrides = []
    for w in words:
        if not w.startswith("data."):
            continue
        key, value = w.split("=", 1)
        leaf = key.rsplit(".", 1)[-1]
        if leaf in PATH_KEYS:  # the docs' example paths do not exist here: the same override, real files
            value = real_files[leaf]
        if key == "data.tokenizer.path":
            continue
        overrides.append(f"{key}={value}")
    # zoo.fit composes it (no '+' needed) ...
    cfg = compose("quickstart", ([f"data={group}"] if group else []) + overrides)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for o in overrides:
        key, value = o.split("=", 1)
        got = OmegaConf.select(cfg, key)
        if key.rsplit(".", 1)[-1] not in PATH_KEYS:
            assert str(got) == value or got == yaml.safe_load(value), (key, got, value)
    for spec in data["sources"]:
        spec = {k: v for k, v in spec.items() if k != "weight"}
        build_source(spec)  # every option is known and valid
    # ... and so do the other commands (zoo.evaluate, zoo.data, ...), key by key
    nested = OmegaConf.to_container(OmegaConf.from_dotlist(overrides)).get("data", {})
    assert data_options(group or "edu", nested)["sources"] == data["sources"]


@pytest.mark.parametrize("group", list_group("data"))
def test_every_data_group_lists_every_option_of_its_sources(group) -> None:
    spec = yaml.safe_load((recipes_dir() / "data" / f"{group}.yaml").read_text())
    for entry in spec["sources"]:
        missing = set(source_options(entry["name"])) - set(entry)
        assert not missing, f"recipes/data/{group}.yaml: {entry['name']} does not list {sorted(missing)}"


def test_one_source_option_changes_and_the_rest_stay() -> None:
    cfg = compose("quickstart", ["data=fineweb_edu", "data.sources.0.max_documents=123",
                                 "data.sources.0.data_files=x.parquet"])
    source = cfg.data.sources[0]
    assert source.max_documents == 123 and source.data_files == "x.parquet"
    assert source.config == "sample-10BT" and source.val_fraction == 0.005
    nested = {"sources": {"0": {"max_documents": 123}}}
    assert data_options("fineweb_edu", nested)["sources"][0]["config"] == "sample-10BT"


def test_bad_source_index_is_one_line() -> None:
    from zoo.errors import ZooError

    with pytest.raises(ZooError, match=r"data.sources has 1 entry \(indices 0..0\)"):
        data_options("edu", {"sources": {"2": {"min_chars": 3}}})
