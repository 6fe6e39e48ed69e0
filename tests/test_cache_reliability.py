"""Issue 15 (reliability) for the token cache and the readers: damage is found, and said in one line.

A real tiny corpus (the ``markov`` source, byte-level tokenizer) is prepared once; each test
damages a copy of its real shards: a changed byte in the head, tail or middle of a shard,
out-of-vocabulary token ids, a deleted ``meta.json``, temporaries left by a killed build.
Then a 20 MB single-line ``.txt`` file must be refused in seconds and bounded memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zoo.data import cache
from zoo.data.datamodule import TextDataModule
from zoo.errors import ZooError

REPO = Path(__file__).resolve().parents[1]
MARKOV = {"name": "markov", "n_documents": 2000, "length": 300, "seed": 5}
BYTES = {"vocab_size": 258, "train_bytes": 20_000}
HEAD = 64 << 10  # the bytes hashed at each end of a shard (cache.EDGE_BYTES)


def datamodule(cache_dir: Path) -> TextDataModule:
    return TextDataModule([MARKOV], n_ctx=32, batch_size=4, tokenizer=BYTES, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared cache folder (tokenizer + token cache) that the tests copy, never change."""
    root = tmp_path_factory.mktemp("prepared")
    dm = datamodule(root)
    dm.prepare_data()
    dm.setup()
    return root


@pytest.fixture
def copy(prepared, tmp_path) -> tuple[TextDataModule, Path]:
    """A private copy of the prepared cache: the datamodule and the source's token folder."""
    root = tmp_path / "cache"
    shutil.copytree(prepared, root)
    dm = datamodule(root)
    folder = cache.source_dir(dm.sources[0], dm.tokenizer, root)
    assert cache.is_complete(folder)
    return dm, folder


def train_bin(folder: Path) -> Path:
    (path,) = sorted((folder / "shards").glob("*.train.bin"))
    assert path.stat().st_size > 4 * HEAD  # head, middle and tail are distinct
    return path


def poke(path: Path, offset: int, value: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value)


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert e.type is ZooError and "\n" not in message, (e.type, message)
    return message


def test_build_records_head_and_tail_hashes(copy) -> None:
    _, folder = copy
    record = json.loads(next((folder / "shards").glob("*.done.json")).read_text())
    train = record["splits"]["train"]
    assert {"head_blake2b", "tail_blake2b", "max_id"} <= set(train)
    assert train["max_id"] < 258


@pytest.mark.parametrize("where", ["head", "tail"])
def test_a_changed_byte_in_a_shard_head_or_tail_is_found_at_open(copy, where) -> None:
    _, folder = copy
    path = train_bin(folder)
    size = path.stat().st_size
    poke(path, 10 if where == "head" else size - 10, b"\x03\x00")
    start = time.perf_counter()
    with pytest.raises(Exception) as e:
        cache.load_split(folder / "train")  # cheap open: no full read
    message = one_line(e)
    assert f"{path.name} does not match its checksum ({where})" in message and f"delete {folder}" in message
    assert time.perf_counter() - start < 5


def test_a_changed_byte_in_the_middle_is_found_on_verify(copy) -> None:
    _, folder = copy
    path = train_bin(folder)
    poke(path, path.stat().st_size // 2, b"\x03\x00")
    cache.load_split(folder / "train")  # the cheap open reads only head and tail
    with pytest.raises(Exception) as e:
        cache.load_split(folder / "train", verify=True)
    assert f"{path.name} does not match its checksum" in one_line(e)


def test_out_of_vocabulary_ids_are_named_not_an_index_error(copy) -> None:
    dm, folder = copy
    path = train_bin(folder)
    # in the head: found at open, before the checksum says "changed"
    poke(path, 2, np.asarray([60000], np.uint16).tobytes())
    with pytest.raises(Exception) as e:
        cache.load_split(folder / "train", vocab_size=len(dm.tokenizer))
    message = one_line(e)
    assert "token id 60000" in message and "258" in message and f"delete {folder}" in message
    with pytest.raises(Exception) as e:
        dm.setup()
    assert "token id 60000" in one_line(e)


def test_out_of_vocabulary_ids_in_the_middle_stop_the_sample_not_the_embedding(copy) -> None:
    dm, folder = copy
    path = train_bin(folder)
    itemsize = 2
    middle = (path.stat().st_size // 2) // itemsize
    poke(path, middle * itemsize, np.asarray([60000], np.uint16).tobytes())
    dm.setup()  # the cheap open does not read the middle
    ds = dm.dataset("train")
    with pytest.raises(Exception) as e:
        for i in range(len(ds)):
            ds[i]
    message = one_line(e)
    assert "token id 60000" in message and str(folder / "train") in message
    with pytest.raises(Exception) as e:
        cache.load_split(folder / "train", verify=True, vocab_size=258)
    assert "token id 60000" in one_line(e)


def test_a_deleted_meta_json_is_rebuilt(copy) -> None:
    dm, folder = copy
    shards_before = {p.name: p.stat().st_mtime_ns for p in (folder / "shards").iterdir()}
    reference = (folder / "train" / "meta.json").read_bytes()
    (folder / "train" / "meta.json").unlink()
    dm.prepare_data()
    dm.setup()
    assert (folder / "train" / "meta.json").read_bytes() == reference
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "shards").iterdir()} == shards_before  # not re-tokenised
    assert len(dm.dataset("train")) > 0


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_killed_builds_are_cleaned(copy) -> None:
    dm, folder = copy
    hours = 3600
    dead = dead_pid()
    now = time.time()
    files = {
        "dead-old": (folder / "shards" / f".000000.train.bin.tmp-{dead}", now - 2 * hours),
        "dead-fresh": (folder / "shards" / f".000001.train.bin.tmp-{dead}", now),  # maybe another node's
        "alive-old": (folder / "shards" / f".000002.train.bin.tmp-{os.getpid()}", now - 2 * hours),
        "anyone-ancient": (folder / f".plan.json.tmp-{os.getpid()}", now - 30 * hours),
        "split-dead-old": (folder / "train" / f".meta.json.tmp-{dead}", now - 2 * hours),
    }
    for path, mtime in files.values():
        path.write_bytes(b"x" * 100)
        os.utime(path, (mtime, mtime))
    (folder / "shards" / "notes.txt").write_text("not ours")  # never touched
    cache.load_split(folder / "train")
    left = {k for k, (p, _) in files.items() if p.exists()}
    assert left == {"dead-fresh", "alive-old"}
    assert (folder / "shards" / "notes.txt").read_text() == "not ours"
    assert cache.load_split(folder / "train", verify=True).n_tokens > 0


# ------------------------------------------------------------------------------------ huge documents


@pytest.fixture(scope="module")
def one_huge_line(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.txt"
    with open(path, "w") as f:
        for _ in range(20):
            f.write("abcdefghij " * 95_325)  # about 1 MiB, no newline: one 20 MiB line
    return path


@pytest.mark.parametrize("txt_split", ["paragraph", "file"])
def test_a_huge_document_is_refused_in_seconds_and_bounded_memory(one_huge_line, txt_split) -> None:
    code = (
        "import resource, sys, time\n"
        "from zoo.data.sources import build_source\n"
        "from zoo.errors import ZooError\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"src = build_source({{'name': 'files', 'paths': {str(one_huge_line)!r}, 'txt_split': {txt_split!r}}})\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    for unit in src.units():\n"
        "        for _ in src.unit_documents(unit): pass\n"
        "    print('no error')\n"
        "except ZooError as e:\n"
        "    print('error:', e)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base\n"
        "print('seconds', time.perf_counter() - start, 'grown_kb', grown)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("error: ") and "max_document_bytes" in lines[0] and str(one_huge_line) in lines[0]
    seconds, grown_kb = float(lines[1].split()[1]), int(lines[1].split()[3])
    assert seconds < 5 and grown_kb < 40_000, lines[1]  # less than 40 MB more than at the start


def test_max_document_bytes_is_an_option(one_huge_line, tmp_path) -> None:
    from zoo.data.sources import build_source

    src = build_source({"name": "files", "paths": str(one_huge_line), "max_document_bytes": 32 << 20})
    docs = [d for u in src.units() for d in src.unit_documents(u)]
    assert len(docs) == 1 and len(docs[0]) > 20_000_000
    default = build_source({"name": "files", "paths": str(one_huge_line)})
    assert src.fingerprint() == default.fingerprint()  # a bound, not content: the cache key stays
    with pytest.raises(ZooError, match="max_document_bytes must be an integer >= 1"):
        build_source({"name": "files", "paths": str(one_huge_line), "max_document_bytes": 0})
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text(json.dumps({"text": "x" * 3000}) + "\n" + json.dumps({"text": "ok"}) + "\n")
    src = build_source({"name": "files", "paths": str(jsonl), "max_document_bytes": 1000})
    with pytest.raises(ZooError, match=r"big.jsonl, line 1: longer than max_document_bytes=1000"):
        [d for u in src.units() for d in src.unit_documents(u)]


@pytest.mark.slow
def test_prepare_command_refuses_a_huge_line_in_one_line(one_huge_line, tmp_path) -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "zoo.data", "prepare", "data=files",
                           f"data.sources.0.paths={one_huge_line}", "data.sources.0.txt_split=paragraph",
                           "data.tokenizer.vocab_size=258", "data.tokenizer.train_bytes=100000"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "ZOO_CACHE": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "max_document_bytes" in proc.stderr and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "max_document_bytes" in errors[0], proc.stderr
    assert time.perf_counter() - start < 120


@pytest.mark.slow
def test_a_full_disk_during_preparation_is_one_line_and_keeps_what_is_done(tmp_path) -> None:
    """Shards written by worker processes hit a file size limit (RLIMIT_FSIZE: writes past it
    fail with EFBIG, as on a full disk): one line naming the cache and the free space, no
    traceback; run again without the limit, the same command finishes."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "the sea rises and falls over the old harbour wall while gulls cry".split()
    for i in range(3):
        text = "\n\n".join(" ".join(words[(j + k + i) % len(words)] for k in range(40)) for j in range(1500))
        (corpus / f"part{i}.txt").write_text(text)
    args = [sys.executable, "-m", "zoo.data", "prepare", "data=files", f"data.sources.0.paths={corpus}",
            "data.sources.0.txt_split=paragraph", "data.tokenizer.vocab_size=300", "num_proc=2"]
    env = {**os.environ, "ZOO_CACHE": str(tmp_path / "cache")}

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "cannot write the token cache" in errors[0] and "free on its disk" in errors[0], errors
    assert "Traceback" not in proc.stderr
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
