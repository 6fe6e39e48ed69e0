"""The general corpus: the `python-code`, `docstrings` and `bible` sources, read from what is
really installed, and the `general` data group that mixes them with `edu` and `math`."""

from __future__ import annotations

import inspect
import sysconfig
from pathlib import Path

import pytest
import yaml

from zoo.data.sources import SPLITS, build_source, clean_text
from zoo.data.sources.python_text import module_docstrings
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _splits(source) -> dict[str, list[str]]:
    return {split: list(source.documents(split)) for split in SPLITS}


def test_python_code_reads_the_standard_library_without_its_tests() -> None:
    source = build_source({"name": "python-code"})
    parts = _splits(source)
    docs = [d for split in SPLITS for d in parts[split]]
    assert len(docs) == len(set(docs)) > 500 and all(parts[s] for s in SPLITS)
    assert clean_text((STDLIB / "textwrap.py").read_text()) in docs
    tests = [clean_text(p.read_text()) for p in sorted((STDLIB / "test").glob("test_[a-c]*.py"))[:20]]
    assert tests and not set(tests) & set(docs)  # test/ is skipped
    assert clean_text((STDLIB / "encodings" / "cp1252.py").read_text()) not in docs  # generated tables
    assert "python " in source.fingerprint()  # the interpreter's version is part of the content


def _package(root: Path) -> None:
    (root / "zoo_toy_pkg" / "tests").mkdir(parents=True)
    (root / "zoo_toy_pkg" / "__init__.py").write_text(
        '"""Toy package.\n\n    Second paragraph, indented."""\n\n\n'
        'def area(r):\n    """Area of a circle of radius r.\n\n    .. math:: \\pi r^2\n    """\n'
        '    return 3.14159 * r * r\n\n\nclass Shape:\n    """A shape."""\n\n'
        '    def name(self):\n        """Its name."""\n        return "shape"\n')
    (root / "zoo_toy_pkg" / "tests" / "test_area.py").write_text('"""A test that must not be read, long enough to count."""\n')
    (root / "zoo_toy_pkg" / "empty.py").write_text("x = 1\n")


def test_docstrings_are_each_modules_docstrings_in_order(tmp_path, monkeypatch) -> None:
    _package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = build_source({"name": "docstrings", "packages": ["zoo_toy_pkg"], "min_chars": 1,
                           "val_fraction": 0.0, "test_fraction": 0.0})
    docs = list(source.documents("train"))
    assert docs == ["Toy package.\n\nSecond paragraph, indented.\n\nArea of a circle of radius r.\n\n"
                    ".. math:: \\pi r^2\n\nA shape.\n\nIts name."]
    code = build_source({"name": "python-code", "packages": ["zoo_toy_pkg"], "min_chars": 1,
                         "val_fraction": 0.0, "test_fraction": 0.0})
    assert sorted(code.documents("train")) == sorted(
        clean_text(p.read_text()) for p in (tmp_path / "zoo_toy_pkg").glob("*.py"))


def test_module_docstrings_of_a_real_module() -> None:
    text = module_docstrings((STDLIB / "textwrap.py").read_text())
    import textwrap

    assert text.startswith(inspect.cleandoc(textwrap.__doc__))
    assert inspect.cleandoc(textwrap.dedent.__doc__) in text
    assert module_docstrings("def broken(:\n") == ""


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "docstrings", "packages": ["no_such_package_zoo"]},
     "package 'no_such_package_zoo' is not installed; install it"),
    ({"name": "docstrings", "packages": []}, "packages must be a non-empty list"),
    ({"name": "python-code", "content": "comments"}, "unknown content for source 'python-code' 'comments'; available: code, docstrings"),
    ({"name": "bible", "translation": "nasb"}, "unknown translation for source 'bible' 'nasb'; available: kjv, web"),
])
def test_bad_options_are_one_line_errors(spec, message) -> None:
    with pytest.raises(ZooError, match=message) as info:
        build_source(spec)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def bibles():
    return {t: build_source({"name": "bible", "translation": t}) for t in ("kjv", "web")}


def test_bible_chapters_are_clean_and_whole(bibles) -> None:
    kjv = [d for s in SPLITS for d in bibles["kjv"].documents(s)]
    assert len(kjv) == 1189  # the chapters of the 66 books
    first = next(d for d in kjv if d.startswith("Genesis 1\n"))
    assert first.startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth.")
    assert "darkness was upon the face of the deep" in first  # [was]: the word kept, the brackets gone
    assert not any("[" in d or "]" in d for d in kjv)
    assert any(d.startswith("Revelation 22\n") and d.rstrip().endswith("Amen.") for d in kjv)
    web = [d for s in SPLITS for d in bibles["web"].documents(s)]
    assert len(web) == 1189 and not any("`" in d for d in web)
    assert "God's Spirit" in next(d for d in web if d.startswith("Genesis 1\n"))


def test_a_chapter_has_one_split_in_every_translation(bibles) -> None:
    where = {t: [s for s in SPLITS for _ in src.documents(s)] for t, src in bibles.items()}
    in_order = {t: [src._split(d) for d in src.stream()] for t, src in bibles.items()}
    assert in_order["kjv"] == in_order["web"]  # chapter by chapter, in canonical order
    assert sorted(where["kjv"]) == sorted(in_order["kjv"]) and in_order["kjv"].count("val") > 30


def _group(name: str) -> list[dict]:
    return yaml.safe_load((ROOT / "recipes" / "data" / f"{name}.yaml").read_text())["sources"]


@pytest.mark.parametrize("group", ["edu", "math", "edu_es", "edu_fr", "bible", "docstrings", "python_code"])
def test_each_source_group_scores_the_documents_general_holds_out(group) -> None:
    """A per-source group (edu and math included) is its general entries without the weight:
    the same fingerprint, so the same val and test documents."""
    general = _group("general")
    for own in _group(group):
        key = ("name", "language", "translation")
        same = [dict(s) for s in general if all(s.get(k) == own.get(k) for k in key)]
        assert len(same) == 1 and same[0].pop("weight") > 0
        assert build_source(same[0]).fingerprint() == build_source(own).fingerprint()
    assert sum(s["weight"] for s in general) == pytest.approx(1.0)


@pytest.mark.slow
def test_general_is_over_50_mb_in_five_genres() -> None:
    sizes: dict[str, int] = {}
    for spec in _group("general"):
        spec = {k: v for k, v in spec.items() if k != "weight"}
        source = build_source(spec)
        sizes[spec["name"]] = sizes.get(spec["name"], 0) + sum(source.text_bytes(s) for s in SPLITS)
    assert sum(sizes.values()) > 50e6, sizes
    assert all(size > 4e6 for size in sizes.values()), sizes  # every kind brings megabytes
