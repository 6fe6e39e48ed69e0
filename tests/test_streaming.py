"""Streaming mode (data.streaming=true): on-the-fly samples, disjoint shards, exact resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hub_schemas import fineweb_edu_table
from test_resume import assert_same, fit, interrupt, last_ckpt, saved_step, wait_for_step, weights

from zoo.data.datamodule import TextDataModule
from zoo.data.sources import build_source
from zoo.data.streaming import HeldOutSlice, StreamingSamples, training_documents
from zoo.data.tokenizer import EOT, PAD, token_byte_lengths

HELDOUT = 40


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stream")
    for i in range(2):
        pq.write_table(fineweb_edu_table(i * 300, 300), folder / f"part-{i}.parquet", row_group_size=50)
    return folder


def module(parquet: Path, cache_dir: Path, **kw) -> TextDataModule:
    return TextDataModule([{"name": "fineweb-edu", "data_files": f"{parquet}/*.parquet"}], n_ctx=16, batch_size=4,
                          tokenizer={"vocab_size": 300, "train_bytes": 100_000}, cache_dir=cache_dir,
                          streaming=True, heldout_documents=HELDOUT, **kw)


def test_stream_packs_the_documents_after_the_held_out_slice(parquet, cache_dir) -> None:
    dm = module(parquet, cache_dir)
    dm.prepare_data()
    dm.setup()
    tok, source = dm.tokenizer, dm.sources[0]
    eot = tok.convert_tokens_to_ids(EOT)
    stream = np.asarray([t for d in training_documents(source, HELDOUT) for t in (*tok(d)["input_ids"], eot)])
    samples = list(dm.dataset("train"))
    assert len(samples) == (len(stream) - 1) // 16  # every full window, as the cached packed layout
    lut = token_byte_lengths(tok)
    for i in (0, 7, len(samples) - 1):
        window = stream[i * 16:i * 16 + 17]
        assert samples[i]["input_ids"].tolist() == window[:-1].tolist()
        assert samples[i]["labels"].tolist() == window[1:].tolist()
        assert samples[i]["target_bytes"].tolist() == lut[window[1:]].tolist()
    # val and test: the first HELDOUT documents, split in two, tokenised into the cache once
    held = list(training_documents(source, 0))[:HELDOUT]
    val, test = list(dm.eval_sources[0].documents("val")), list(dm.eval_sources[0].documents("test"))
    assert sorted(val + test) == sorted(held) and val and test
    assert len(dm.dataset("val")) > 0 and "streamed" in dm.describe()


def test_stream_state_continues_where_it_stopped(parquet, cache_dir) -> None:
    for layout in ("packed", "left_padded"):
        dm = module(parquet, cache_dir, layout=layout)
        dm.prepare_data()
        dm.setup()
        full = [s["input_ids"] for s in dm.dataset("train")]
        ds: StreamingSamples = dm.dataset("train")
        it = iter(ds)
        for _ in range(23):
            next(it)
        state = ds.state_dict()
        again = StreamingSamples(dm.sources, [1.0], HELDOUT, dm.tokenizer, 16, layout, token_byte_lengths(dm.tokenizer),
                                 dm.tokenizer.convert_tokens_to_ids(PAD))
        again.load_state_dict(state)
        rest = [s["input_ids"] for s in again]
        assert len(rest) == len(full) - 23
        assert all(torch.equal(a, b) for a, b in zip(rest, full[23:], strict=True)), layout


def _rank(rank: int, world: int, port: int, parquet: str, cache_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    dm = TextDataModule([{"name": "fineweb-edu", "data_files": f"{parquet}/*.parquet"}], n_ctx=48, batch_size=3,
                        layout="left_padded", tokenizer={"vocab_size": 300, "train_bytes": 100_000},
                        cache_dir=cache_dir, streaming=True, heldout_documents=HELDOUT, num_workers=2)
    dm.setup()
    seen = []
    for batch in dm.train_dataloader():
        for labels in batch["labels"].tolist():
            seen.append([t for t in labels if t >= 0])
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two processes under DDP, each with two workers: ~35 s
def test_ranks_and_workers_see_disjoint_documents(parquet, cache_dir, tmp_path) -> None:
    dm = TextDataModule([{"name": "fineweb-edu", "data_files": f"{parquet}/*.parquet"}], n_ctx=48, layout="left_padded",
                        tokenizer={"vocab_size": 300, "train_bytes": 100_000}, cache_dir=cache_dir, streaming=True,
                        heldout_documents=HELDOUT)
    dm.prepare_data()  # the tokenizer and the held-out cache exist before the ranks start
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank, args=(2, port, str(parquet), str(cache_dir), str(tmp_path)), nprocs=2)
    ranks = [[tuple(d) for d in json.loads((tmp_path / f"rank{r}.json").read_text())] for r in (0, 1)]
    tok = dm.tokenizer
    expected = [tuple(tok(d)["input_ids"][:48]) for d in training_documents(dm.sources[0], HELDOUT)]
    assert len(set(expected)) == len(expected)  # the documents are distinct
    # each rank's two workers take alternate documents; batches of 3 are cut per worker, the last
    # batch of a worker may be short, so every document is seen once in all
    assert not set(ranks[0]) & set(ranks[1])
    assert all(len(set(r)) == len(r) for r in ranks)
    assert sorted(ranks[0] + ranks[1]) == sorted(expected)


def test_held_out_slice_is_a_source_of_its_own(parquet) -> None:
    source = build_source({"name": "fineweb-edu", "data_files": f"{parquet}/*.parquet"})
    held = HeldOutSlice(source, 10)
    assert held.fingerprint() != source.fingerprint()
    assert HeldOutSlice(source, 11).fingerprint() != held.fingerprint()
    assert not list(held.documents("train"))
    assert len(list(held.documents("val"))) + len(list(held.documents("test"))) == 10


TINY_STREAM = ["data.streaming=true", "data.heldout_documents=300", "report.splits=[val]"]
_UNINTERRUPTED: dict[int, dict[str, torch.Tensor]] = {}


def uninterrupted_stream(workers: int, tmp_path_factory) -> dict[str, torch.Tensor]:
    if workers not in _UNINTERRUPTED:
        out = tmp_path_factory.mktemp(f"stream-uninterrupted-{workers}")
        fit(out, *TINY_STREAM, f"data.num_workers={workers}")
        _UNINTERRUPTED[workers] = weights(last_ckpt(out))
    return _UNINTERRUPTED[workers]


@pytest.mark.parametrize("workers", [pytest.param(0, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_killed_streaming_run_resumes_to_identical_weights(workers, tmp_path_factory, tmp_path, cache_dir) -> None:
    expected = uninterrupted_stream(workers, tmp_path_factory)
    extra = [*TINY_STREAM, f"data.num_workers={workers}"]
    proc = fit(tmp_path, *extra, wait=False)
    wait_for_step(tmp_path, proc, 20)
    interrupt(proc, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert 20 <= saved_step(last_ckpt(tmp_path)) < 60
    fit(tmp_path, *extra, "resume=auto")
    assert_same(weights(last_ckpt(tmp_path)), expected)


def test_streaming_needs_a_fixed_sample_for_evaluation(parquet, cache_dir) -> None:
    from zoo.errors import ZooError

    dm = module(parquet, cache_dir)
    dm.prepare_data()
    with pytest.raises(ZooError, match="streaming=true: the training stream has no fixed evaluation sample"):
        dm.eval_dataloader("train")
    with pytest.raises(ZooError, match="heldout_documents must be an integer >= 2"):
        TextDataModule([{"name": "edu"}], streaming=True, heldout_documents=0)
