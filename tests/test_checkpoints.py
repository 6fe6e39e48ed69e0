"""Every published checkpoint: manifest checksums, card, reproduced val BPB, README table,
and the Lightning round trip (fine-tuning from a published name)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import zoo
from zoo.publish import CARD, README_END, README_START, read_card, zoo_table
from zoo.registry import checkpoints_dir, read_manifest, verify_manifest

PUBLISHED = zoo.list_models(pretrained=True)
ROOT = Path(__file__).resolve().parent.parent


def test_manifest_lists_exactly_the_published_folders() -> None:
    manifest = read_manifest()["models"]
    folders = {p.name for p in checkpoints_dir().iterdir() if p.is_dir() and not p.name.startswith(".")} \
        if checkpoints_dir().is_dir() else set()
    assert set(manifest) == folders == set(PUBLISHED)


@pytest.mark.parametrize("name", PUBLISHED)
def test_checkpoint_matches_manifest_and_card(name) -> None:
    verify_manifest(name)  # every file listed, with its sha256; nothing unlisted
    folder = checkpoints_dir() / name
    assert {"model.safetensors", "config.yaml", "tokenizer.json", CARD, "sha256.json"} <= {p.name for p in folder.iterdir()}
    card = read_card(folder)
    assert card["name"] == name and card["command"].startswith("python -m zoo.fit recipe=")
    assert card["file_bytes"] == (folder / "model.safetensors").stat().st_size
    model, tokenizer = zoo.load(name)
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    pc = card["precision_check"]
    if card["weights"] == "bfloat16":  # bf16 only where it kept val BPB within the stated tolerance
        assert abs(pc["bf16_bpb"] - pc["fp32_bpb"]) <= pc["tolerance"]
    for data in ("edu", "math"):
        assert data in card["eval"] and card["eval"][data]["bpb"] > 0 and card["eval"][data]["xz"] > 0


@pytest.mark.parametrize("name", PUBLISHED)
def test_checkpoint_reproduces_its_card_bpb(name, cache_dir) -> None:
    """A fresh zoo.evaluate of the published weights on the card's check (the val split of the
    model's own training data, first ``max_batches`` batches) agrees with the card."""
    from zoo.evaluate import evaluate

    check = read_card(checkpoints_dir() / name)["check"]
    row = evaluate(checkpoints_dir() / name, split="val", max_batches=check["max_batches"], accelerator="cpu")
    assert row["tokens"] == check["tokens"] and row["bytes"] == check["bytes"]
    assert abs(row["bpb"] - check["bpb"]) <= check["tolerance"], (row["bpb"], check["bpb"])


def test_readme_table_is_generated_from_the_cards() -> None:
    text = (ROOT / "README.md").read_text()
    assert README_START in text and README_END in text
    section = text[text.index(README_START) + len(README_START): text.index(README_END)]
    assert section.strip() == zoo_table().strip(), "run: python -m zoo.publish readme"
    for name in PUBLISHED:
        assert re.search(rf"\[`{re.escape(name)}`\]", section)


@pytest.mark.parametrize("name", [n for n in PUBLISHED if n == "llama-edu"])
def test_fine_tune_from_a_published_name(name, cache_dir, tmp_path) -> None:
    """The Lightning round trip: python -m zoo.fit recipe=quickstart init_from=llama-edu."""
    from zoo.config import compose
    from zoo.training import train

    cfg = compose("quickstart", [
        f"init_from={name}", "logger=none", "trainer.max_steps=1", "trainer.limit_val_batches=1",
        "report.splits=[]", "trainer.enable_progress_bar=false", f"data.tokenizer.path={checkpoints_dir() / name}",
    ])
    train(cfg, tmp_path / "run")
    tuned, _ = zoo.load(tmp_path / "run" / "model")
    base, _ = zoo.load(name)
    diff = max((a - b).abs().max().item() for a, b in zip(tuned.parameters(), base.parameters(), strict=True))
    assert 0 < diff < 0.05  # started from the published weights, moved one step
