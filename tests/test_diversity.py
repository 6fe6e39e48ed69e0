"""``zoo.diversity``: each measure on texts whose values are known by hand, and the CLI."""

from __future__ import annotations

import json
import math

import pytest

from zoo.diversity import (
    diversity,
    hill_numbers,
    main,
    mtld,
    sample_documents,
    shannon_bits,
    words_of,
)


def test_words_split_prose_and_latex() -> None:
    assert words_of("The cat, the HAT.") == ["the", "cat", ",", "the", "hat", "."]
    assert words_of(r"\frac{1}{2}") == ["\\", "frac", "{", "1", "}", "{", "2", "}"]


def test_measures_on_known_texts() -> None:
    docs = [["a", "b", "a", "b"], ["a", "c"]]
    d = diversity(docs)
    assert d["words"] == 6 and d["ttr"] == pytest.approx(3 / 6) and d["distinct_1"] == d["ttr"]
    # bigrams within documents: ab, ba, ab | ac -> 3 distinct of 4
    assert d["distinct_2"] == pytest.approx(3 / 4)
    assert d["distinct_4"] == pytest.approx(1.0)  # one 4-gram
    p = [3 / 6, 2 / 6, 1 / 6]
    h1 = -sum(x * math.log2(x) for x in p)
    assert d["H_1"] == pytest.approx(h1) and d["H_2"] == pytest.approx(shannon_bits([2, 1, 1]))
    assert d["hill_0"] == 3 and d["hill_1"] == pytest.approx(2**h1) and d["hill_2"] == pytest.approx(1 / sum(x * x for x in p))
    # Hill numbers of a uniform distribution all equal the number of types
    assert hill_numbers([5, 5, 5, 5]) == pytest.approx({"hill_0": 4, "hill_1": 4, "hill_2": 4})


def test_mtld() -> None:
    assert mtld(["x"] * 100) == 2.0  # a factor ends at every 2nd word (TTR 1/2 <= 0.72): 100 / 50
    varied = [f"w{i}" for i in range(200)]
    assert mtld(varied) == 200  # never drops below the threshold: no factor completes
    cycle = ["a", "b", "c", "d"] * 50
    assert mtld(varied) > mtld(cycle) > mtld(["x"] * 200)


def test_sample_is_seeded_and_capped() -> None:
    texts = [f"doc {i} " + "word " * 10 for i in range(50)]
    a, b = sample_documents(texts, 100, seed=1), sample_documents(texts, 100, seed=1)
    assert a == b and sum(map(len, a)) == 100
    assert sample_documents(texts, 100, seed=2) != a


def test_cli_table_and_json(capsys, tmp_path) -> None:
    main(["data=edu,markov", "words=3000", f"json={tmp_path / 'd.json'}"])
    out = capsys.readouterr().out
    assert "| measure | edu | markov |" in out and "MTLD" in out and "Hill q=2" in out
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["edu"]["words"] == 3000 and data["edu"]["ttr"] > data["markov"]["ttr"] * 0  # both present
    with pytest.raises(SystemExit):
        main(["data=nope"])
    assert "unknown data group or source 'nope'" in capsys.readouterr().err
