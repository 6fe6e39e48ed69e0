"""The shared DataModule: tokenizer, token cache, sample layouts, splits, workers, mixtures."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SMALL_TOKENIZER
from hub_schemas import finemath_table, fineweb_edu_table
from torch.utils.data import DataLoader

from zoo.data import cache, prepare
from zoo.data.datamodule import TextDataModule
from zoo.data.layouts import LeftPaddedDataset, PackedDataset
from zoo.data.tokenizer import (
    EOT,
    PAD,
    load_tokenizer,
    save_tokenizer,
    token_byte_lengths,
    token_bytes,
    train_bpe,
)
from zoo.errors import ZooError


def rows(ds) -> list[bytes]:
    return [ds[i]["input_ids"].numpy().tobytes() for i in range(len(ds))]


# -- tokenizer --------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_exact_byte_counts(edu_dm, tmp_path) -> None:
    tok = edu_dm.tokenizer
    lut = token_byte_lengths(tok)
    texts = ["Plain ASCII text.", "Ünïcödé — “quotes” and emoji 🦒🧮 ∑ x² 日本語", "  spaces\n\nand\tTabs "]
    for text in texts + list(edu_dm.sources[0].documents("val"))[:50]:
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids, "encoding must not be empty"
        assert tok.decode(ids) == text  # lossless byte-level BPE
        assert int(lut[ids].sum()) == len(text.encode("utf-8"))
    assert lut[tok.convert_tokens_to_ids(EOT)] == 0 and lut[tok.convert_tokens_to_ids(PAD)] == 0
    assert len(tok) == SMALL_TOKENIZER["vocab_size"]
    reloaded = load_tokenizer(save_tokenizer(tok, tmp_path))
    assert reloaded(texts[1]).input_ids == tok(texts[1]).input_ids


def test_tokenizer_errors(tmp_path) -> None:
    with pytest.raises(ZooError, match="too small"):
        train_bpe(["abc"], vocab_size=100)
    with pytest.raises(ZooError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ZooError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path / "bad.json")


def test_given_tokenizer_says_once_that_vocab_size_is_not_used(edu_dm, tmp_path, caplog) -> None:
    """A tokenizer file wins over data.tokenizer.vocab_size; a size that differs is named, once."""
    path = save_tokenizer(edu_dm.tokenizer, tmp_path)
    dm = TextDataModule([{"name": "edu"}], tokenizer={"path": str(path), "vocab_size": 4096}, cache_dir=tmp_path)
    with caplog.at_level("INFO", logger="zoo.data.datamodule"):
        assert dm.vocab_size == len(dm.tokenizer) == SMALL_TOKENIZER["vocab_size"]
    said = [r.getMessage() for r in caplog.records if "vocab_size=4096" in r.getMessage()]
    assert len(said) == 1 and f"has {SMALL_TOKENIZER['vocab_size']} tokens" in said[0], said
    caplog.clear()
    same = TextDataModule([{"name": "edu"}], tokenizer={"path": str(path), "vocab_size": SMALL_TOKENIZER["vocab_size"]},
                          cache_dir=tmp_path)
    with caplog.at_level("INFO", logger="zoo.data.datamodule"):
        assert len(same.tokenizer) == SMALL_TOKENIZER["vocab_size"]
    assert not [r for r in caplog.records if "applies only" in r.getMessage()]


# -- cache ------------------------------------------------------------------------------------
def test_cache_is_reused_and_matches_documents(edu_dm) -> None:
    source, tok = edu_dm.sources[0], edu_dm.tokenizer
    path = prepare.split_tokens(source, "val", tok, edu_dm.cache_dir)
    mtime = (path / "meta.json").stat().st_mtime_ns
    assert prepare.split_tokens(source, "val", tok, edu_dm.cache_dir) == path
    assert (path / "meta.json").stat().st_mtime_ns == mtime  # not rebuilt
    split = cache.load_split(path)
    docs = list(source.documents("val"))
    assert len(split) == len(docs)
    assert split.n_bytes == sum(len(d.encode()) for d in docs)
    for i in (0, len(docs) // 2, len(docs) - 1):
        assert tok.decode(split.document(i).tolist()) == docs[i]
        assert split.tokens[split.offsets[i + 1] - 1] == tok.convert_tokens_to_ids(EOT)


def test_damaged_cache_is_reported(edu_dm, tmp_path) -> None:
    import shutil

    src = prepare.split_tokens(edu_dm.sources[0], "test", edu_dm.tokenizer, edu_dm.cache_dir)
    copy = tmp_path / "copy"
    shutil.copytree(src.parent, copy)
    (shard,) = (copy / "shards").glob("*.test.bin")
    original = bytes(shard.read_bytes())
    data = bytearray(original)
    data[:2] = bytes([(data[0] + 1) % 256, data[1]])  # an in-vocabulary change of one token
    shard.write_bytes(data)
    with pytest.raises(ZooError, match=r"does not match its checksum \(head\)"):
        cache.load_split(copy / "test")  # sizes still fit, but the head's hash does not
    if len(original) > 2 * cache.EDGE_BYTES:  # a change between head and tail: only verify=True reads it
        data = bytearray(original)
        data[len(data) // 2] = (data[len(data) // 2] + 1) % 256
        shard.write_bytes(data)
        cache.load_split(copy / "test")
    with pytest.raises(ZooError, match="does not match its checksum"):
        cache.load_split(copy / "test", verify=True)
    shard.write_bytes(data[:100])  # truncated
    with pytest.raises(ZooError, match="damaged.*delete"):
        cache.load_split(copy / "test")
    (copy / "test" / "meta.json").unlink()
    with pytest.raises(ZooError, match="unreadable"):
        cache.load_split(copy / "test")


# -- splits -----------------------------------------------------------------------------------
def test_splits_disjoint_and_stable(edu_dm, cache_dir) -> None:
    tok = edu_dm.tokenizer
    docs = {}
    for split in ("train", "val", "test"):
        data = cache.load_split(prepare.split_tokens(edu_dm.sources[0], split, tok, cache_dir))
        docs[split] = {data.document(i).tobytes() for i in range(len(data))}
    assert not docs["train"] & docs["val"] and not docs["train"] & docs["test"] and not docs["val"] & docs["test"]
    again = TextDataModule([{"name": "edu"}], n_ctx=64, tokenizer=SMALL_TOKENIZER, cache_dir=cache_dir)
    again.setup()
    for split in ("train", "val"):
        a, b = edu_dm.dataset(split), again.dataset(split)
        assert len(a) == len(b)
        for i in (0, 7, len(a) - 1):
            assert torch.equal(a[i]["input_ids"], b[i]["input_ids"])


# -- layouts ----------------------------------------------------------------------------------
def test_packed_layout_scores_every_token_once(edu_dm) -> None:
    data = cache.load_split(prepare.split_tokens(edu_dm.sources[0], "val", edu_dm.tokenizer, edu_dm.cache_dir))
    lut = token_byte_lengths(edu_dm.tokenizer)
    pad = edu_dm.tokenizer.convert_tokens_to_ids(PAD)
    ds = PackedDataset(data, 64, lut, pad, drop_last=False)
    targets = torch.cat([ds[i]["labels"][ds[i]["labels"] != -100] for i in range(len(ds))])
    assert torch.equal(targets, torch.from_numpy(data.tokens[1:].astype(np.int64)))
    total_bytes = sum(int(ds[i]["target_bytes"].sum()) for i in range(len(ds)))
    first_doc_first_token = int(lut[data.tokens[0]])
    assert total_bytes == data.n_bytes - first_doc_first_token
    s = ds[3]
    assert torch.equal(s["labels"][:-1], s["input_ids"][1:])  # labels are inputs shifted by one
    last = ds[len(ds) - 1]
    assert (last["labels"] == -100).any() and (last["target_bytes"][last["labels"] == -100] == 0).all()
    assert len(PackedDataset(data, 64, lut, pad, drop_last=True)) == (data.n_tokens - 1) // 64


def test_left_padded_layout(edu_dm) -> None:
    tok = edu_dm.tokenizer
    data = cache.load_split(prepare.split_tokens(edu_dm.sources[0], "val", tok, edu_dm.cache_dir))
    pad, eot = tok.convert_tokens_to_ids(PAD), tok.convert_tokens_to_ids(EOT)
    ds = LeftPaddedDataset(data, 512, token_byte_lengths(tok), pad, eot)
    short = next(i for i in range(len(data)) if len(data.document(i)) < 100)
    s, doc = ds[short], data.document(short)
    n_pad = 512 - len(doc)
    assert (s["input_ids"][:n_pad] == pad).all() and s["input_ids"][n_pad] == eot
    assert (s["attention_mask"][:n_pad] == 0).all() and (s["attention_mask"][n_pad:] == 1).all()
    assert (s["labels"][:n_pad] == -100).all()
    assert s["labels"][n_pad:].tolist() == doc.tolist()  # every document token is a target
    assert s["labels"][-1] == doc[-1]  # the last position holds the document's last token
    assert int(s["target_bytes"].sum()) == len(tok.decode(doc.tolist()).encode())
    long = next(i for i in range(len(data)) if len(data.document(i)) > 600)
    assert ds[long]["labels"].tolist() == data.document(long)[:512].tolist()



def test_scored_text_is_what_a_left_padded_evaluation_scores(cache_dir) -> None:
    """The compressors' text for a left-padded split is each document's first n_ctx tokens,
    byte for byte what the BPB's denominator counts (not the whole documents)."""
    dm = TextDataModule([{"name": "edu"}], n_ctx=64, batch_size=8, layout="left_padded",
                        tokenizer=SMALL_TOKENIZER, cache_dir=cache_dir)
    dm.prepare_data()
    loader = dm.eval_dataloader("val")
    text = dm.scored_text(loader, max_batches=3)
    batches = [b for _, b in zip(range(3), loader, strict=False)]
    n_rows = sum(len(b["labels"]) for b in batches)
    assert len(text) == sum(int(b["target_bytes"].sum()) for b in batches) + n_rows - 1  # + newlines
    assert len(text) < len(dm.split_text("val"))
    first = batches[0]["labels"][0]
    ids = first[first >= 0].tolist()
    assert text.startswith(dm.tokenizer.decode(ids).encode())
    table = token_bytes(dm.tokenizer)
    sample = "naïve café — 日本 🙂"
    assert b"".join(table[i] for i in dm.tokenizer(sample)["input_ids"]) == sample.encode()

# -- workers, mixtures, parquet ---------------------------------------------------------------
def test_two_workers_yield_no_duplicates(edu_dm) -> None:
    ds = edu_dm.dataset("val")
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    seen = [row.numpy().tobytes() for batch in loader for row in batch["input_ids"]]
    assert len(seen) == len(ds)
    assert sorted(seen) == sorted(rows(ds))  # each sample exactly once across both workers
    assert len(set(seen)) == len(set(rows(ds)))


def test_mixture_follows_weights(cache_dir, tmp_path) -> None:
    (tmp_path / "notes.jsonl").write_text("".join(f'{{"text": "note {i}: {"x" * (i % 50)}"}}\n' for i in range(3000)))
    sources = [{"name": "edu", "weight": 0.7}, {"name": "files", "paths": str(tmp_path / "*.jsonl"), "weight": 0.3}]
    dm = TextDataModule(sources, n_ctx=64, tokenizer=SMALL_TOKENIZER, cache_dir=cache_dir)
    dm.prepare_data()
    train = dm.dataset("train")
    share = np.bincount(train.which, minlength=2) / len(train)
    assert abs(share[0] - 0.7) < 0.01 and abs(share[1] - 0.3) < 0.01
    assert len(dm.dataset("val")) == sum(len(p) for p in dm.dataset("val").datasets)  # all of both
    digest = hashlib.sha1(b"".join(train[i]["input_ids"].numpy().tobytes() for i in range(50))).hexdigest()
    dm2 = TextDataModule(sources, n_ctx=64, tokenizer=SMALL_TOKENIZER, cache_dir=cache_dir)
    dm2.setup()
    t2 = dm2.dataset("train")
    assert digest == hashlib.sha1(b"".join(t2[i]["input_ids"].numpy().tobytes() for i in range(50))).hexdigest()


@pytest.mark.parametrize("name, table", [("fineweb-edu", fineweb_edu_table), ("finemath", finemath_table)])
def test_hub_schema_parquet_through_datamodule(name, table, tmp_path, cache_dir) -> None:
    pq.write_table(table(0, 400), tmp_path / "part-0.parquet")
    dm = TextDataModule(
        [{"name": name, "data_files": str(tmp_path / "*.parquet"), "val_fraction": 0.1, "test_fraction": 0.1}],
        n_ctx=32, batch_size=4, tokenizer={"vocab_size": 300}, cache_dir=cache_dir,
    )
    dm.prepare_data()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32) and (batch["target_bytes"] > 0).any()


def test_bad_datamodule_settings(cache_dir) -> None:
    with pytest.raises(ZooError, match="layout"):
        TextDataModule([{"name": "edu"}], layout="sideways")
    with pytest.raises(ZooError, match="data.sources is empty"):
        TextDataModule([])
    with pytest.raises(ZooError, match="unknown data source 'wiki'.*available: .*edu"):
        TextDataModule([{"name": "wiki"}])
    with pytest.raises(ZooError, match="n_ctx"):
        TextDataModule([{"name": "edu"}], n_ctx=0)
    with pytest.raises(ZooError, match="tokenizer option"):
        TextDataModule([{"name": "edu"}], tokenizer={"vocab": 10})
