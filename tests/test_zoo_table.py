"""The zoo table: docs/zoo.md is generated from the cards, README.md keeps a static copy of the
same table, and no code rewrites the README (so both are checked here instead)."""

from __future__ import annotations

import re
from pathlib import Path

import zoo
from zoo.hub.card import README_END, README_START, readme_table, zoo_page, zoo_page_path, zoo_table

ROOT = Path(__file__).resolve().parent.parent
FIX = "run: python -m zoo.publish table, then paste the table of docs/zoo.md between README.md's zoo-table markers"


def test_docs_zoo_page_is_generated_from_the_cards() -> None:
    assert zoo_page_path() == ROOT / "docs" / "zoo.md"
    text = (ROOT / "docs" / "zoo.md").read_text()
    assert text.startswith("<!-- generated from checkpoints/*/card.md by `python -m zoo.publish table`")
    assert text == zoo_page(), FIX
    for name in zoo.list_models(pretrained=True):
        assert f"[`{name}`](../checkpoints/{name}/card.md)" in text


def test_readme_table_equals_the_generated_one() -> None:
    text = (ROOT / "README.md").read_text()
    assert README_START in text and README_END in text
    assert readme_table(text) == zoo_table().strip(), FIX
    for name in zoo.list_models(pretrained=True):
        assert re.search(rf"\[`{re.escape(name)}`\]\(checkpoints/{re.escape(name)}/card\.md\)", text)
    assert len(text.encode()) <= 12_000


def test_publishing_the_table_never_rewrites_the_readme(tmp_path, monkeypatch) -> None:
    from zoo.hub.publish import update_zoo_page

    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "checkpoints"))
    (tmp_path / "checkpoints").mkdir()
    readme = tmp_path / "README.md"
    stale = f"intro\n{README_START}\nold\n{README_END}\nrest\n"
    readme.write_text(stale)
    logged: list[str] = []
    page = update_zoo_page(log=logged.append)
    assert page == tmp_path / "docs" / "zoo.md" and "(none published yet)" in page.read_text()
    assert readme.read_text() == stale
    assert any("differs" in line and "zoo-table markers" in line for line in logged)
