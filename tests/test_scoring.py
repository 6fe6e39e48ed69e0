"""The scoring commands (``zoo.evaluate``, ``zoo.entropy``, ``zoo.generate``, ``zoo.diversity``)
on real models and real files: bad input gives one line, ``data.`` overrides work the same way
everywhere, ``text=`` scores whole files exactly, and a read-only cache is only read."""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.cli import data_options, number
from zoo.compression import compressed_bits_per_byte
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parent.parent
LLAMA_EDU = ROOT / "checkpoints" / "llama-edu"
MIXER_EDU = ROOT / "checkpoints" / "mixer-edu"

# (what the user did wrong, module, arguments ({tmp} is a fresh folder), fragment of the message)
BAD_SCORING = [
    ("evaluate max_batches not a number", "zoo.evaluate", [f"checkpoint={LLAMA_EDU}", "max_batches=abc"],
     "max_batches must be an integer, got 'abc'"),
    ("evaluate max_batches negative", "zoo.evaluate", [f"checkpoint={LLAMA_EDU}", "max_batches=-1"],
     "max_batches must be an integer >= 1, got -1"),
    ("evaluate max_batches zero", "zoo.evaluate", [f"checkpoint={LLAMA_EDU}", "max_batches=0"],
     "max_batches must be an integer >= 1, got 0"),
    ("evaluate unknown accelerator", "zoo.evaluate", [f"checkpoint={LLAMA_EDU}", "accelerator=tpu"],
     "unknown accelerator 'tpu'"),
    ("evaluate json in a missing folder", "zoo.evaluate", [f"checkpoint={LLAMA_EDU}", "json=/nonexistent/x.json"],
     "json=/nonexistent/x.json: no folder /nonexistent to write it in"),
    ("evaluate json is a folder", "zoo.evaluate", [f"checkpoint={LLAMA_EDU}", "json={tmp}"],
     "is a folder, not a file"),
    ("evaluate text matches nothing", "zoo.evaluate", [f"checkpoint={LLAMA_EDU}", "text={tmp}/*.txt"],
     "matches no file"),
    ("evaluate text with a split", "zoo.evaluate", [f"checkpoint={LLAMA_EDU}", "text={tmp}", "split=val"],
     "text= scores every document of the files: drop split="),
    ("entropy max_documents not a number", "zoo.entropy",
     ["estimate", f"checkpoint={LLAMA_EDU}", "out={tmp}", "max_documents=abc"],
     "max_documents must be an integer, got 'abc'"),
    ("entropy batch_size zero", "zoo.entropy", ["estimate", f"checkpoint={LLAMA_EDU}", "out={tmp}", "batch_size=0"],
     "batch_size must be an integer >= 1, got 0"),
    ("entropy json is a folder", "zoo.entropy", ["estimate", f"checkpoint={LLAMA_EDU}", "out={tmp}", "json={tmp}"],
     "is a folder, not a file"),
    ("generate temperature nan", "zoo.generate", ["llama-edu", "temperature=nan"],
     "temperature must be a finite number >= 0, got nan"),
    ("generate temperature nan (mixer)", "zoo.generate", [str(MIXER_EDU), "temperature=nan"],
     "temperature must be a finite number >= 0, got nan"),
    ("generate temperature inf", "zoo.generate", ["llama-edu", "temperature=inf"],
     "temperature must be a finite number >= 0, got inf"),
    ("generate max_new_tokens negative", "zoo.generate", ["llama-edu", "max_new_tokens=-1"],
     "max_new_tokens must be an integer >= 1, got -1"),
    ("generate max_new_tokens zero", "zoo.generate", ["llama-edu", "max_new_tokens=0"],
     "max_new_tokens must be an integer >= 1, got 0"),
    ("generate n zero", "zoo.generate", ["llama-edu", "n=0"], "n must be an integer >= 1, got 0"),
    ("diversity unset files paths", "zoo.diversity", ["data=files"],
     "data.sources.0.paths must be set (a file, folder or glob)"),
    ("diversity unknown data option", "zoo.diversity", ["data=files", "data.sources.3.paths=x"],
     "data.sources has 1 entry"),
]


def run_module(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("what, module, args, message", BAD_SCORING, ids=[b[0] for b in BAD_SCORING])
def test_bad_scoring_input_is_one_line(what, module, args, message, tmp_path, capsys, cache_dir) -> None:
    """Each row runs the command's real ``main`` in this process (as ``python -m`` does, without
    the seconds of imports per row): exit status 2, one ``error:`` line, nothing written."""
    out = tmp_path / "out"
    out.mkdir()
    main = importlib.import_module(module if module != "zoo.entropy" else "zoo.entropy.__main__").main
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{tmp}", str(out)) for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], err[-3000:]
    assert not any(out.iterdir()), "nothing is written before the input is checked"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_number_refuses_non_finite_values(value) -> None:
    with pytest.raises(ZooError, match="must be a finite number"):
        number({"x": value}, "x", 1.0, float)
    with pytest.raises(ZooError, match="x must be an integer"):
        number({"x": value}, "x", 1)


def test_generate_api_refuses_what_the_cli_refuses() -> None:
    from zoo.generate import generate_ids
    from zoo.hub.folder import load_pretrained

    for folder in (LLAMA_EDU, MIXER_EDU):
        model, _, _ = load_pretrained(folder)
        with pytest.raises(ZooError, match="max_new_tokens must be an integer >= 1"):
            generate_ids(model, [0], max_new_tokens=0)
        with pytest.raises(ZooError, match="temperature must be a finite number"):
            generate_ids(model, [0], max_new_tokens=2, temperature=float("nan"))


# --------------------------------------------------------------------------------------------
# data options: one implementation, nested overrides onto the run's own data section

RUN_DATA = {"sources": [{"name": "edu", "min_chars": 32}], "layout": "packed", "n_ctx": 256,
            "tokenizer": {"path": None, "vocab_size": 4096}}


def test_data_options_apply_overrides_to_the_runs_data() -> None:
    got = data_options(None, {"sources": {"0": {"min_chars": 5}}, "eval_batch_size": 3}, base=RUN_DATA)
    assert got["sources"] == [{"name": "edu", "min_chars": 5}] and got["n_ctx"] == 256 and got["eval_batch_size"] == 3
    assert RUN_DATA["sources"][0]["min_chars"] == 32  # the base is not changed


def test_data_group_replaces_the_runs_sources_then_overrides_apply() -> None:
    got = data_options("files", {"sources": {"0": {"paths": "my.txt"}}}, base=RUN_DATA)
    assert [s["name"] for s in got["sources"]] == ["files"] and got["sources"][0]["paths"] == "my.txt"
    assert got["n_ctx"] == 256 and got["layout"] == "packed"  # what the group does not set stays the run's


def test_an_unset_mandatory_value_names_the_option() -> None:
    with pytest.raises(ZooError, match=r"^data.sources.0.paths must be set \(a file, folder or glob\)"):
        data_options("files")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A jsonl of 60 distinct documents, enough for a window of 257 tokens in every split."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = [json.dumps({"text": f"Document number {i} says that {i} plus {i} makes {2 * i}. " * 4}) for i in range(60)]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "docs.jsonl"


SPLIT_EVERYWHERE = ["data.sources.0.val_fraction=0.4", "data.sources.0.test_fraction=0.3"]


@pytest.mark.slow
def test_evaluate_and_entropy_take_nested_data_overrides(corpus, tmp_path, cache_dir) -> None:
    args = ["data=files", f"data.sources.0.paths={corpus}", *SPLIT_EVERYWHERE]
    proc = run_module("zoo.evaluate", [f"checkpoint={LLAMA_EDU}", *args, "json=-"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout)
    assert row["sources"] == ["files"] and row["bpb"] > 0 and row["tokens"] > 0
    proc = run_module("zoo.entropy", ["estimate", f"checkpoint={LLAMA_EDU}", f"out={tmp_path / 'est'}", "split=val",
                                      "max_documents=2", "batch_size=8", *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens of 2 documents" in proc.stdout


def test_diversity_takes_data_groups_and_overrides(tmp_path, cache_dir) -> None:
    from zoo.diversity import main

    for i, text in enumerate(["alpha beta gamma", "alpha delta"]):
        (tmp_path / f"{i}.txt").write_text(text)
    out = tmp_path / "d.json"
    main(["data=files", f"data.sources.0.paths={tmp_path}/*.txt", "data.sources.0.val_fraction=0",
          "data.sources.0.test_fraction=0", "words=100", "semantic=false", f"json={out}"])
    (row,) = json.loads(out.read_text()).values()
    assert row["words"] == 5 and row["documents"] == 2 and row["hill_0"] == 4  # alpha beta gamma delta


# --------------------------------------------------------------------------------------------
# the model's tokenizer must be the one it was trained with


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny llama folder with its own tokenizer, and one whose tokenizer.json is too small."""
    import zoo
    from zoo.data.tokenizer import train_bpe
    from zoo.hub.folder import save_pretrained

    folder = tmp_path_factory.mktemp("tiny")
    texts = [f"The quick brown fox {i} jumps over the lazy dog {i * 7}." for i in range(200)]
    tok = train_bpe(texts, vocab_size=300)
    small = train_bpe(texts, vocab_size=280)
    assert len(small) != len(tok)
    out = {}
    for name, t in (("good", tok), ("bad", small)):
        torch.manual_seed(0)
        model = zoo.create_model("llama_tiny", vocab_size=len(tok), n_ctx=64, d_model=32, n_layers=1, n_heads=2)
        spec = {"model": {"family": "llama", "d_model": 32, "n_layers": 1, "n_heads": 2},
                "vocab_size": len(tok), "n_ctx": 64}
        out[name] = save_pretrained(model, t, spec, folder / name)
    save_pretrained(model, small, spec, folder / "other-tokenizer")
    return out


def test_a_tokenizer_of_another_size_is_refused(tiny_models, corpus, tmp_path, cache_dir) -> None:
    from zoo.evaluate import main

    (tmp_path / "a.txt").write_text("The quick brown fox jumps.")
    for args in ([f"checkpoint={tiny_models['bad']}", f"text={tmp_path / 'a.txt'}"],
                 [f"checkpoint={tiny_models['bad']}", "data=files", f"data.sources.0.paths={corpus}", *SPLIT_EVERYWHERE],
                 [f"checkpoint={tiny_models['good']}", "data=files", f"data.sources.0.paths={corpus}", *SPLIT_EVERYWHERE,
                  f"data.tokenizer.path={tiny_models['bad']}"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2


def test_a_tokenizer_of_another_size_message(tiny_models, tmp_path, capsys, cache_dir) -> None:
    from zoo.evaluate import main

    (tmp_path / "a.txt").write_text("The quick brown fox jumps.")
    with pytest.raises(SystemExit):
        main([f"checkpoint={tiny_models['bad']}", f"text={tmp_path / 'a.txt'}"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "tokenizer has 280 tokens but the model's vocabulary has 300" in err, err


# --------------------------------------------------------------------------------------------
# text=: every document of the files, exactly


def direct_bpb(folder: Path, docs: list[str]) -> tuple[float, int, int]:
    """BPB of ``docs`` computed from the model's logits: the documents as one stream, each
    after an end-of-text token, cut into windows of n_ctx + 1 (stride n_ctx), every token but
    the first a target; bits of all targets / UTF-8 bytes of the documents."""
    from zoo.data.tokenizer import EOT
    from zoo.hub.folder import load_pretrained

    model, tok, spec = load_pretrained(folder)
    eot = tok.convert_tokens_to_ids(EOT)
    stream = [eot]
    for d in docs:
        stream += tok(d, add_special_tokens=False).input_ids + [eot]
    n_ctx, nats, targets = spec["n_ctx"], 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, n_ctx):
            window = torch.tensor([stream[start:start + n_ctx + 1]])
            x, y = window[:, :-1], window[:, 1:]
            logits = model(x, torch.ones_like(x))
            nats += float(torch.nn.functional.cross_entropy(logits[0].double(), y[0], reduction="sum"))
            targets += y.numel()
    n_bytes = sum(len(d.encode()) for d in docs)
    return nats / math.log(2) / n_bytes, targets, n_bytes


@pytest.mark.parametrize("folder", ["llama-edu", "tiny"])
def test_text_scores_every_document_exactly(folder, tiny_models, tmp_path, cache_dir) -> None:
    from zoo.evaluate import main

    model = LLAMA_EDU if folder == "llama-edu" else tiny_models["good"]
    docs = ["The quick brown fox jumps over the lazy dog. " * 30 + "The end.",
            "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 25 + "Done."]
    (tmp_path / "texts").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "texts" / f"{i}.txt").write_text(d)
    out = tmp_path / "r.json"
    main([f"checkpoint={model}", f"text={tmp_path / 'texts'}/*.txt", f"json={out}"])
    row = json.loads(out.read_text())
    bpb, targets, n_bytes = direct_bpb(model, docs)
    assert row["documents"] == 2 and row["tokens"] == targets and row["bytes"] == n_bytes
    assert row["bpb"] == pytest.approx(bpb, rel=1e-5)
    assert row["ce"] == pytest.approx(bpb * n_bytes * math.log(2) / targets, rel=1e-5)
    for c in ("gzip", "bz2", "xz", "zstd", "ppmd"):  # all five by default
        assert row[c] == pytest.approx(compressed_bits_per_byte("\n".join(docs).encode(), c))


@pytest.mark.slow
def test_text_from_the_command_line(tmp_path, cache_dir) -> None:
    (tmp_path / "a.txt").write_text("A first small document.")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n{"text": "third"}\n')
    proc = run_module("zoo.evaluate", [f"checkpoint={LLAMA_EDU}", f"text={tmp_path}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 documents" in proc.stdout and "bits per byte" in proc.stdout
    assert all(label in proc.stdout for label in ("gzip -9", "bz2 -9", "xz -9", "zstd -22", "PPMd -o8"))


# --------------------------------------------------------------------------------------------
# a read-only cache


def read_only(folder: Path) -> list[str] | None:
    """A command prefix that runs its command with ``folder`` read-only, or None.

    Not root: ``chmod -R a-w`` (done here). Root ignores file modes, so there the folder is
    bind-mounted read-only in a private mount namespace (``unshare -m``): a real read-only
    file system (EROFS) that only the command sees.
    """
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        return []
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount --bind -o ro {folder} {folder} && ! touch {folder}/.probe"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount --bind -o ro {folder} {folder} && exec "$@"', "sh"]


@pytest.mark.slow
def test_evaluate_reads_a_complete_read_only_cache(corpus, tmp_path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ZOO_CACHE": str(cache)}
    args = [sys.executable, "-m", "zoo.evaluate", f"checkpoint={LLAMA_EDU}", "data=files",
            f"data.sources.0.paths={corpus}", *SPLIT_EVERYWHERE, "json=-"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    prefix = read_only(cache)
    if prefix is None:
        pytest.skip("running as root without unshare/mount: no way to make a folder read-only here")
    try:
        again = subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout)["bpb"] == json.loads(first.stdout)["bpb"]
        other = corpus.parent / "other.jsonl"
        other.write_text("".join(json.dumps({"text": f"another text {i} " * 20}) + "\n" for i in range(60)))
        args[5] = f"data.sources.0.paths={other}"
        new = subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert new.returncode == 2 and "Traceback" not in new.stderr, new.stderr[-3000:]
        err = [ln for ln in new.stderr.splitlines() if ln.startswith("error: ")]
        assert len(err) == 1 and "read-only" in err[0] and str(cache) in err[0], new.stderr[-3000:]
    finally:
        if os.geteuid() != 0:
            subprocess.run(["chmod", "-R", "u+w", str(cache)], check=True)
