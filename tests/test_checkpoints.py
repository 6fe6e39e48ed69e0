"""Every published checkpoint: manifest checksums, card, reproduced val BPB, and the Lightning
round trip (fine-tuning from a published name); the publish pipeline on a tiny model. (The zoo
table in docs/zoo.md and README.md: tests/test_zoo_table.py.)"""

from __future__ import annotations

import json

import pytest
import torch

import zoo
from zoo.hub.card import CARD, read_card, zoo_page, zoo_page_path
from zoo.hub.manifest import checkpoints_dir, read_manifest, verify_manifest

PUBLISHED = zoo.list_models(pretrained=True)


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


@pytest.mark.parametrize("name", [n for n in PUBLISHED if n == "llama-edu"])
def test_fine_tune_from_a_published_name(name, cache_dir, tmp_path) -> None:
    """The Lightning round trip: python -m zoo.fit recipe=quickstart init_from=llama-edu."""
    from zoo.recipes import compose
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


def test_publish_pipeline_on_a_tiny_model(edu_dm, cache_dir, tmp_path, monkeypatch) -> None:
    """python -m zoo.publish end to end on a tiny random mixer (eval on edu only, to stay fast):
    bf16 decision, card with the rebuilt command, manifest, the zoo page, recard, recompress."""
    from omegaconf import OmegaConf

    from zoo.errors import ZooError
    from zoo.hub.checksums import write_checksums
    from zoo.hub.folder import save_pretrained
    from zoo.hub.publish import publish, recard, recompress, update_zoo_page
    from zoo.models import build_model
    from zoo.recipes import compose

    monkeypatch.setenv("ZOO_CHECKPOINTS", str(tmp_path / "checkpoints"))
    cfg = compose("mixer_clm", ["model.d_model=16", "model.n_layers=1", "data.n_ctx=64",
                                "data.tokenizer.vocab_size=512", "data.tokenizer.train_bytes=1000000",
                                f"data.cache_dir={cache_dir}"])
    run = OmegaConf.to_container(cfg, resolve=True)
    model = build_model(run["model"], edu_dm.vocab_size, 64)
    src = save_pretrained(model, edu_dm.tokenizer, {"model": run["model"], "vocab_size": edu_dm.vocab_size,
                                                    "n_ctx": 64, "layout": "packed", "run": run}, tmp_path / "run" / "model")
    card = publish("tiny-edu", run=str(src), eval_data=["edu"], check_batches=1, table=False, log=lambda *_: None)
    words = card["command"].split()  # rebuilt from the run's config (no .hydra here), checked by composing it
    assert words[:4] == ["python", "-m", "zoo.fit", "recipe=mixer_clm"]
    assert {"model.d_model=16", "model.n_layers=1", "data.n_ctx=64", "data.tokenizer.vocab_size=512"} <= set(words)
    assert "command_note" not in card
    pc = card["precision_check"]
    assert card["weights"] == ("bfloat16" if abs(pc["delta"]) <= pc["tolerance"] else "float32")
    verify_manifest("tiny-edu")
    folder = tmp_path / "checkpoints" / "tiny-edu"
    assert read_card(folder)["check"]["max_batches"] == 1
    readme = tmp_path / "README.md"
    readme.write_text("a README that publishing must not rewrite\n")
    logged: list[str] = []
    page = update_zoo_page(log=logged.append)  # docs/zoo.md beside the checkpoints folder
    assert page == zoo_page_path() == tmp_path / "docs" / "zoo.md" and page.read_text() == zoo_page()
    assert "[`tiny-edu`](../checkpoints/tiny-edu/card.md)" in page.read_text()
    assert readme.read_text() == "a README that publishing must not rewrite\n"
    recard("tiny-edu", table=False, log=lambda *_: None)
    verify_manifest("tiny-edu")
    model2, _ = zoo.load("tiny-edu")
    assert torch.allclose(model2.embed.weight, model.embed.weight.to(torch.bfloat16).float()
                          if card["weights"] == "bfloat16" else model.embed.weight)
    # a card from before zstd and PPMd: recompress scores the model again and adds them
    assert {"gzip", "bz2", "xz", "zstd", "ppmd"} <= set(card["eval"]["edu"])  # published now: all five
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    full = dict(metrics["card"]["eval"]["edu"])
    for c in ("zstd", "ppmd"):
        del metrics["card"]["eval"]["edu"][c]
    metrics_path.write_text(json.dumps(metrics))
    write_checksums(folder)  # as such a card was published
    recompress("tiny-edu", table=False, log=lambda *_: None)
    again = read_card(folder)["eval"]["edu"]
    assert again == pytest.approx(full) and "PPMd -o8" in (folder / "card.md").read_text()
    verify_manifest("tiny-edu")
    metrics = json.loads(metrics_path.read_text())
    metrics["card"]["eval"]["edu"]["bpb"] += 0.01  # a card that does not reproduce is left alone
    metrics_path.write_text(json.dumps(metrics))
    write_checksums(folder)
    with pytest.raises(ZooError, match="does not reproduce, nothing written"):
        recompress("tiny-edu", table=False, log=lambda *_: None)
    assert json.loads(metrics_path.read_text()) == metrics


def test_training_start_and_wall_time_come_from_the_run_log(tmp_path) -> None:
    """A run folder not named by its start time (hydra.run.dir=...) still gets a card date."""
    import datetime as dt
    import os

    from zoo.hub.publish import training_start, training_wall_time

    run = tmp_path / "my-run"
    run.mkdir()
    assert training_start(run) is None and training_wall_time(run) is None
    (run / "fit.log").write_text("[2026-12-02 19:27:30,896][zoo.data.prepare][INFO] - preparing math\n")
    assert training_start(run) == dt.datetime(2026, 12, 2, 19, 27, 30)
    assert training_wall_time(run) is None  # no report.json: the run did not finish
    (run / "report.json").write_text("{}")
    end = dt.datetime(2026, 12, 2, 19, 50, 7).timestamp()
    os.utime(run / "report.json", (end, end))
    assert training_wall_time(run) == 22 * 60 + 37
