"""One-pass, sharded, resumable preparation (zoo.data.prepare) and its command (zoo.data)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hub_schemas import fineweb_edu_table

from zoo.data import cache, prepare
from zoo.data.datamodule import TextDataModule
from zoo.data.sources import build_source
from zoo.data.tokenizer import save_tokenizer
from zoo.errors import ZooError

UNIT = 40_000  # bytes of text per unit: many small shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three FineWeb-edu-schema parquet files, 200 rows per row group (about 40 units)."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        pq.write_table(fineweb_edu_table(i * 6000, 6000), folder / f"part-{i}.parquet", row_group_size=200)
    return folder


@pytest.fixture(scope="module")
def tokenizer_file(corpus, tmp_path_factory) -> Path:
    dm = TextDataModule([{"name": "fineweb-edu", "data_files": str(corpus / "*.parquet")}],
                        tokenizer={"vocab_size": 400, "train_bytes": 300_000},
                        cache_dir=tmp_path_factory.mktemp("tok"))
    return save_tokenizer(dm.tokenizer, tmp_path_factory.mktemp("tokfile") / "tokenizer.json")


def prepare_cmd(corpus: Path, tokenizer_file: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "zoo.data", "prepare", "data=fineweb_edu",
            f"data.sources.0.data_files={corpus}/*.parquet", "data.sources.0.max_documents=null",
            f"data.sources.0.unit_bytes={UNIT}", "data.sources.0.val_fraction=0.05",
            "data.sources.0.test_fraction=0.05", f"data.tokenizer.path={tokenizer_file}", *extra]


def run(cmd: list[str], cache_dir: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "ZOO_CACHE": str(cache_dir)}
    env.pop("NODE_RANK", None)
    env.pop("NUM_NODES", None)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, **kw)


def snapshot(cache_dir: Path) -> dict[str, bytes]:
    """Every file of the token cache, by path relative to it."""
    root = cache_dir / "tokens"
    return {str(p.relative_to(root)): p.read_bytes() for p in cache.iter_shard_files(root)}


@pytest.fixture(scope="module")
def reference(corpus, tokenizer_file, tmp_path_factory) -> dict[str, bytes]:
    """An uninterrupted one-process build."""
    cache_dir = tmp_path_factory.mktemp("reference")
    out = run(prepare_cmd(corpus, tokenizer_file, "num_proc=1"), cache_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "prepared:" in out.stdout and "train:" in out.stdout
    files = snapshot(cache_dir)
    assert sum(name.endswith(".done.json") for name in files) >= 30  # many shards
    return files


def test_shards_hold_the_documents_of_the_stream_in_order(corpus, tokenizer_file, tmp_path) -> None:
    from zoo.data.tokenizer import load_tokenizer

    source = build_source({"name": "fineweb-edu", "data_files": str(corpus / "*.parquet"), "unit_bytes": UNIT})
    tok = load_tokenizer(tokenizer_file)
    assert len(source.units()) >= 30
    done = prepare.prepare_source(source, tok, tmp_path, num_proc=1, progress=False)
    assert done.complete and done.done_now == len(source.units())
    for split in ("train", "val", "test"):
        data = cache.load_split(done.folder / split, verify=True)
        docs = list(source.documents(split))  # the hash split of the whole stream, as before
        assert len(data) == len(docs) and isinstance(data.tokens, cache.ShardedTokens)
        for i in (0, len(docs) // 3, len(docs) - 1):
            assert tok.decode(data.document(i).tolist()) == docs[i]
        assert data.n_bytes == sum(len(d.encode()) for d in docs)
    # a second call finds the finished cache and does nothing
    assert prepare.prepare_source(source, tok, tmp_path, num_proc=1, progress=False).done_now == 0


def test_parallel_build_equals_the_one_process_build(corpus, tokenizer_file, reference, tmp_path) -> None:
    out = run(prepare_cmd(corpus, tokenizer_file, "num_proc=2"), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert snapshot(tmp_path) == reference


KILL_AT_UNIT = """
import os, signal, sys
from zoo.data import cache
from zoo.data.__main__ import main
write = cache.write_shard
def write_then_die(source, unit, *args, **kw):
    if unit.index == 7:  # half-way through writing unit 7: its temporary files exist
        cache._SplitWriter.close = lambda self: os.kill(os.getpid(), signal.SIGKILL)
    return write(source, unit, *args, **kw)
cache.write_shard = write_then_die
main(sys.argv[1:])
"""


@pytest.mark.slow  # a killed multi-process preparation (~20 s)
def test_killed_preparation_resumes_to_a_byte_identical_cache(corpus, tokenizer_file, reference, tmp_path) -> None:
    args = prepare_cmd(corpus, tokenizer_file, "num_proc=1")[3:]
    killed = run([sys.executable, "-c", KILL_AT_UNIT, *args], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (folder,) = tmp_path.glob("tokens/*")
    assert not cache.is_complete(folder)
    assert len(list(folder.glob("shards/*.done.json"))) == 7  # units 0-6 are whole
    assert list(folder.glob("shards/.*.tmp-*"))  # and unit 7 was cut off mid-write
    out = run(prepare_cmd(corpus, tokenizer_file, "num_proc=1"), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "7 already done" in out.stderr  # resumed, not restarted
    assert snapshot(tmp_path) == reference


@pytest.mark.slow
def test_killed_parallel_preparation_resumes(corpus, tokenizer_file, reference, tmp_path) -> None:
    env = {**os.environ, "ZOO_CACHE": str(tmp_path)}
    proc = subprocess.Popen(prepare_cmd(corpus, tokenizer_file, "num_proc=2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(tmp_path.glob("tokens/*/shards/*.done.json")):
        assert proc.poll() is None, "preparation ended before it could be killed"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # its DataLoader workers notice and exit
    proc.wait()
    out = run(prepare_cmd(corpus, tokenizer_file, "num_proc=2"), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert snapshot(tmp_path) == reference


def test_disjoint_node_shares_make_the_one_process_build(corpus, tokenizer_file, reference, tmp_path) -> None:
    env = {**os.environ, "ZOO_CACHE": str(tmp_path)}
    procs = [subprocess.Popen(prepare_cmd(corpus, tokenizer_file, "num_proc=1"), env={**env, "NODE_RANK": str(r),
                              "NUM_NODES": "2"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    logs = "".join(o[1] for o in outs)
    assert "node 0 of 2" in logs and "node 1 of 2" in logs
    assert snapshot(tmp_path) == reference


def test_node_share_alone_is_not_complete(corpus, tokenizer_file, reference, tmp_path) -> None:
    out = run(prepare_cmd(corpus, tokenizer_file, "num_proc=1", "node_rank=1", "num_nodes=3"), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "its share is done" in out.stdout
    (folder,) = tmp_path.glob("tokens/*")
    plan = json.loads((folder / "plan.json").read_text())
    done = sorted(int(p.name.split(".")[0]) for p in folder.glob("shards/*.done.json"))
    assert done == [u["index"] for u in plan["units"] if u["index"] % 3 == 1]
    # a run (one node) on a partial cache prepares the missing units and nothing else
    dm = TextDataModule([{"name": "fineweb-edu", "data_files": f"{corpus}/*.parquet", "unit_bytes": UNIT,
                          "max_documents": None, "val_fraction": 0.05, "test_fraction": 0.05}],
                        tokenizer={"path": str(tokenizer_file)}, cache_dir=tmp_path, num_proc=1)
    dm.prepare_data()
    assert cache.is_complete(folder)
    assert snapshot(tmp_path) == reference


def test_large_unprepared_corpus_is_refused_inside_a_multi_process_job(corpus, tokenizer_file, tmp_path,
                                                                         monkeypatch) -> None:
    from zoo.data.tokenizer import load_tokenizer

    source = build_source({"name": "fineweb-edu", "data_files": str(corpus / "*.parquet")})
    tok = load_tokenizer(tokenizer_file)
    monkeypatch.setenv("WORLD_SIZE", "8")
    prepare.inline_guard(source, tok, tmp_path, 2, "CMD")  # small: prepared inline
    monkeypatch.setattr(prepare, "SLOW_RATE", 1.0)  # as if it were hours of work
    with pytest.raises(ZooError, match=r"not prepared .* too long to prepare inside a 8-process job.*: CMD"):
        prepare.inline_guard(source, tok, tmp_path, 2, "CMD")
    monkeypatch.setenv("WORLD_SIZE", "1")
    prepare.inline_guard(source, tok, tmp_path, 2, "CMD")  # one process: no barrier to time out


@pytest.mark.slow  # six fresh interpreters (about 45 s); the same checks run in-process elsewhere
def test_prepare_command_errors_are_one_line(tmp_path) -> None:
    for args, message in [
        (["prepare", "data=nope"], "unknown data option 'nope'"),
        (["prepare", "num_proc=0"], "num_proc must be an integer >= 1"),
        (["prepare", "node_rank=2", "num_nodes=2"], "node_rank must be below num_nodes"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["prepare", "data.sources.3.max_documents=5"], "data.sources has 1 entry"),
    ]:
        out = run([sys.executable, "-m", "zoo.data", *args], tmp_path)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    help_text = run([sys.executable, "-m", "zoo.data", "--help"], tmp_path)
    assert help_text.returncode == 0 and "num_nodes" in help_text.stdout
