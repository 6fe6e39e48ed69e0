"""Issue 15 (reliability) for the Python API and model folders: every bad input is one ZooError line.

The model-folder cases run on a copy of real published folders in a temporary
``$ZOO_CHECKPOINTS`` (the repository's ``checkpoints/`` is never touched), each broken in one
way: the broken folder is refused by name with one line, and every other folder still lists
and loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo.errors import ZooError
from zoo.hub.checksums import folder_checksums, write_checksums
from zoo.hub.manifest import MANIFEST

#: subprocess runs of the commands, seconds each: part of the slow suite (python -m pytest -m slow)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "checkpoints"
#: the published folders copied into the temporary zoo (small ones)
COPIED = ("llama-edu", "mixer-edu")


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert e.type is ZooError and "\n" not in message, (e.type, message)
    return message


# ------------------------------------------------------------------------------------ the API


@pytest.mark.parametrize("call, fragment", [
    (lambda: zoo.load(None), "zoo.load: name_or_path must be a published name or a model-folder path; got None"),
    (lambda: zoo.create_model("llama_tiny", vocab_size=0), "vocab_size must be an integer >= 258; got 0"),
    (lambda: zoo.create_model("llama_tiny", vocab_size="x"), "vocab_size must be an integer >= 258; got 'x'"),
    (lambda: zoo.create_model("llama_tiny", d_model="abc"), "model.d_model must be a positive integer; got 'abc'"),
    (lambda: zoo.create_model("llama_tiny", n_heads=0), "model.n_heads must be a positive integer; got 0"),
    (lambda: zoo.create_model("llama_tiny", n_ctx=-1), "n_ctx must be a positive integer; got -1"),
    (lambda: zoo.create_model("llama_tiny", d_model=30, n_heads=4), "bad model config for family 'llama'"),
    (lambda: zoo.create_model(None), "zoo.create_model: name must be a registered name"),
    (lambda: zoo.list_models(123), "zoo.list_models: pattern must be a string (shell-style, e.g. '*edu'); got 123"),
    (lambda: zoo.model_info(5), "zoo.model_info: name must be a registered name"),
], ids=["load-None", "vocab0", "vocab-str", "d_model-str", "n_heads0", "n_ctx-1", "heads-not-dividing",
        "create-None", "list-123", "info-5"])
def test_api_bad_input_is_one_zoo_error_line(call, fragment) -> None:
    with pytest.raises(Exception) as e:
        call()
    assert fragment in one_line(e)


def test_build_model_checks_sizes_like_the_recipes() -> None:
    """build_model is the one place sizes are checked (the same messages as a recipe's model:)."""
    from zoo.models import build_model

    cfg = {"family": "llama", "d_model": 32, "n_layers": 1, "n_heads": 2}
    assert build_model(cfg, 258, 1) is not None
    for bad, fragment in [({**cfg, "n_layers": -1}, "model.n_layers must be a positive integer; got -1"),
                          ({**cfg, "n_kv_heads": 1.5}, "model.n_kv_heads must be a positive integer; got 1.5")]:
        with pytest.raises(Exception) as e:
            build_model(bad, 300, 16)
        assert fragment in one_line(e)
    with pytest.raises(Exception) as e:
        build_model(cfg, 1, 16)
    assert "vocab_size must be an integer >= 2; got 1" in one_line(e)


# ------------------------------------------------------------------------------------ model folders


@pytest.fixture
def zoo_root(tmp_path, monkeypatch) -> Path:
    """A temporary ``$ZOO_CHECKPOINTS`` with copies of two published folders and their manifest entries."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    manifest = json.loads((CHECKPOINTS / MANIFEST).read_text())
    for name in COPIED:
        shutil.copytree(CHECKPOINTS / name, root / name)
    manifest["models"] = {k: v for k, v in manifest["models"].items() if k in COPIED}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    monkeypatch.setenv("ZOO_CHECKPOINTS", str(root))
    return root


def reseal(root: Path, name: str) -> None:
    """Rewrite ``name``'s sha256.json and manifest entry, so only the intended damage remains."""
    write_checksums(root / name)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["models"][name]["files"] = folder_checksums(root / name)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))


def add_broken(root: Path, name: str = "broken-edu") -> Path:
    """A third published folder (a copy of mixer-edu) to break."""
    shutil.copytree(root / "mixer-edu", root / name)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["models"][name] = dict(manifest["models"]["mixer-edu"])
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return root / name


def models_command(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ZOO_CHECKPOINTS": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "zoo.models"], env=env, capture_output=True, text=True, timeout=300)


def others_still_work(root: Path, broken: str | None = None) -> None:
    """Every copied folder loads and lists, and ``python -m zoo.models`` prints the table."""
    names = zoo.list_models(pretrained=True)
    assert set(COPIED) <= set(names)
    model, tokenizer = zoo.load("mixer-edu")
    assert not model.training and len(tokenizer) > 0
    proc = models_command(root)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert all(name in proc.stdout for name in COPIED)
    if broken is not None:
        assert f"warning: {broken}:" in proc.stdout + proc.stderr


def test_config_yaml_with_a_python_tag_never_runs(zoo_root, tmp_path) -> None:
    folder = add_broken(zoo_root)
    marker = tmp_path / "pwned"
    text = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(f"evil: !!python/object/apply:os.system ['touch {marker}']\n" + text)
    reseal(zoo_root, folder.name)
    with pytest.raises(Exception) as e:
        zoo.load("broken-edu")
    message = one_line(e)
    assert "config.yaml" in message and "not plain YAML" in message
    with pytest.raises(Exception) as e:
        zoo.load(folder)  # by path too
    assert "config.yaml" in one_line(e)
    others_still_work(zoo_root, "broken-edu")
    assert not marker.exists()


def test_config_yaml_without_a_model_section(zoo_root) -> None:
    folder = add_broken(zoo_root)
    lines = (folder / "config.yaml").read_text().replace("model: &id001", "modell: &id001")
    (folder / "config.yaml").write_text(lines)
    reseal(zoo_root, folder.name)
    with pytest.raises(Exception) as e:
        zoo.load("broken-edu")
    assert "config.yaml has no model: section" in one_line(e)
    with pytest.raises(Exception) as e:
        zoo.create_model("broken-edu")
    assert "config.yaml has no model: section" in one_line(e)
    others_still_work(zoo_root, "broken-edu")


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "is not valid JSON"),
    ('["model.safetensors"]', "must be a JSON object of file name -> sha256"),
])
def test_invalid_sha256_json(zoo_root, content, fragment) -> None:
    folder = add_broken(zoo_root)
    (folder / "sha256.json").write_text(content)
    manifest = json.loads((zoo_root / MANIFEST).read_text())
    manifest["models"][folder.name]["files"] = folder_checksums(folder)
    (zoo_root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    with pytest.raises(Exception) as e:
        zoo.load("broken-edu")
    message = one_line(e)
    assert "sha256.json" in message and fragment in message
    others_still_work(zoo_root)


@pytest.mark.parametrize("manifest, fragment", [
    ({"format": 1, "models": []}, "'models' must be an object of name -> entry"),
    ([], "must be a JSON object"),
])
def test_malformed_manifest(zoo_root, manifest, fragment) -> None:
    """A manifest broken as a whole: loading by name says so in one line (listing still works,
    with a warning; a folder path loads without the manifest)."""
    (zoo_root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Exception) as e:
        zoo.load("llama-edu")
    message = one_line(e)
    assert "manifest.json" in message and fragment in message
    assert set(COPIED) <= set(zoo.list_models(pretrained=True))
    proc = models_command(zoo_root)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "warning:" in proc.stdout + proc.stderr and "manifest.json" in proc.stdout + proc.stderr
    model, _ = zoo.load(zoo_root / "llama-edu")
    assert not model.training


def test_null_manifest_entry_breaks_only_its_model(zoo_root) -> None:
    folder = add_broken(zoo_root)
    manifest = json.loads((zoo_root / MANIFEST).read_text())
    manifest["models"][folder.name] = None
    (zoo_root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Exception) as e:
        zoo.load("broken-edu")
    assert "manifest.json: the entry of broken-edu is null, not an object" in one_line(e)
    others_still_work(zoo_root, "broken-edu")


def test_repository_checkpoints_untouched() -> None:
    """The tests above work on copies: git sees no change under checkpoints/."""
    proc = subprocess.run(["git", "status", "--porcelain", "checkpoints/"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout


# ------------------------------------------------------------------------------------ export and publish


def test_export_to_a_file_or_below_one_is_one_line(tmp_path) -> None:
    from zoo.hub.export import export

    tok_dir = CHECKPOINTS / "llama-edu"
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    for out, fragment in [(a_file, "is a file, not a folder"), (a_file / "hf", "cannot write there"),
                          (Path("/proc/zoo-export-test"), "cannot write there")]:
        with pytest.raises(Exception) as e:
            export(tok_dir, out)
        assert f"out={out}" in one_line(e) and fragment in str(e.value)
    assert a_file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def cli(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], env=full, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


# (what the user did wrong, command, arguments, the message fragment); {tmp} is a temporary folder
HUB_BAD_INPUT = [
    ("publish bf16_tolerance not a number", "zoo.publish", ["name=x-edu", "bf16_tolerance=abc"],
     "bf16_tolerance must be a finite number, got 'abc'"),
    ("publish bf16_tolerance negative", "zoo.publish", ["name=x-edu", "bf16_tolerance=-1"],
     "bf16_tolerance must be a finite number >= 0, got -1.0"),
    ("publish check_batches not a number", "zoo.publish", ["name=x-edu", "check_batches=abc"],
     "check_batches must be an integer, got 'abc'"),
    ("publish check_batches zero", "zoo.publish", ["name=x-edu", "check_batches=0"],
     "check_batches must be an integer >= 1, got 0"),
    ("export out= a file", "zoo.export", ["llama-edu", "out={tmp}/afile"], "is a file, not a folder"),
    ("export out= below a file", "zoo.export", ["llama-edu", "out={tmp}/afile/hf"], "cannot write there"),
]


@pytest.mark.parametrize("what, module, args, message", HUB_BAD_INPUT, ids=[b[0] for b in HUB_BAD_INPUT])
def test_hub_bad_input_message(what, module, args, message, tmp_path) -> None:
    (tmp_path / "afile").write_text("mine")
    root = tmp_path / "checkpoints"
    shutil.copytree(CHECKPOINTS / "llama-edu", root / "llama-edu")
    shutil.copy(CHECKPOINTS / MANIFEST, root / MANIFEST)
    proc = cli(module, *[a.format(tmp=tmp_path) for a in args], env={"ZOO_CHECKPOINTS": str(root)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "afile").read_text() == "mine"
