"""Weight entropy (histogram and Gaussian) and its callback; the entropy recipes end to end."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from zoo.entropy.weights import WeightEntropy, gaussian_entropy, histogram_entropy, weight_entropy
from zoo.lit.language_model import LanguageModelTask


def test_histogram_and_gaussian_entropy() -> None:
    torch.manual_seed(0)
    uniform = torch.rand(256 * 2000)
    assert histogram_entropy(uniform) == pytest.approx(8.0, abs=0.01)  # every bin equally full
    assert histogram_entropy(torch.ones(100)) == 0.0
    assert histogram_entropy(torch.tensor([0.0, 1.0] * 50)) == pytest.approx(1.0)  # two bins, half each
    sigma = 0.02
    g = torch.randn(100_000) * sigma
    assert gaussian_entropy(g) == pytest.approx(0.5 * math.log2(2 * math.pi * math.e * sigma**2), abs=0.01)
    # a Gaussian's 256-bin histogram entropy does not depend on its scale
    assert histogram_entropy(g) == pytest.approx(histogram_entropy(g * 100), abs=1e-3)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    m = weight_entropy(model)
    assert set(m["layers"]) == {"0.weight", "2.weight"}  # matrices only: no biases, no norm gains
    assert 0 < m["hist"] <= 8 and m["layers"]["0.weight"]["numel"] == 128


def batches(n: int, vocab: int = 40, T: int = 16):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randint(2, vocab, (4, T + 1), generator=g)
        out.append({"input_ids": x[:, :-1], "labels": x[:, 1:], "attention_mask": torch.ones(4, T, dtype=torch.long),
                    "target_bytes": torch.ones(4, T, dtype=torch.long)})
    return out


def test_callback_logs_series_and_writes_the_plot(tmp_path) -> None:
    task = LanguageModelTask({"family": "llama", "d_model": 16, "n_layers": 1, "n_heads": 2}, vocab_size=40, n_ctx=16,
                             optim={"warmup_steps": 1})
    cb = WeightEntropy(every_n_steps=2, out_dir=tmp_path)
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb], log_every_n_steps=1)
    trainer.fit(task, train_dataloaders=DataLoader(batches(6), batch_size=None))
    assert [h["step"] for h in cb.history] == [0, 2, 4, 6]
    assert cb.history[0]["loss"] is None and cb.history[-1]["loss"] > 0
    history = json.loads((tmp_path / "weight_entropy.json").read_text())
    assert len(history) == 4 and "model.embed.weight" in history[0]["layers"] or history[0]["layers"]
    assert (tmp_path / "weight_entropy.png").stat().st_size > 10_000
    logged = (next(tmp_path.rglob("metrics.csv"))).read_text().splitlines()[0]
    assert "weights/hist_entropy" in logged and "weights/gauss_entropy" in logged


@pytest.mark.slow
def test_entropy_recipes_end_to_end(tmp_path, cache_dir, capsys) -> None:
    """recipe entropy_eacd -> python -m zoo.entropy estimate/summary/regress -> recipe
    entropy_aware with the estimates (and the weight-entropy plot), all tiny."""
    from test_fit import tiny

    from zoo.entropy.__main__ import main
    from zoo.training import train

    size = ["model.encoder.d_model=32", "model.encoder.n_layers=1", "model.decoder.d_model=32",
            "model.decoder.n_layers=1", "data.n_ctx=16", "data.batch_size=4", "data.tokenizer.vocab_size=300",
            "data.tokenizer.train_bytes=200000", "trainer.max_steps=4", "trainer.val_check_interval=2",
            "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false", "optim.warmup_steps=2",
            "logger=none", "report.splits=[val]", "report.compressors=[]"]
    from zoo.recipes import compose

    eacd = train(compose("entropy_eacd", size), tmp_path / "eacd")
    out = tmp_path / "estimates"
    main(["estimate", f"checkpoint={eacd['run_dir']}/model", "split=train", "max_documents=20", f"out={out}"])
    text = capsys.readouterr().out
    assert "bits/token" in text
    (folder,) = out.iterdir()
    main(["summary", f"estimates={folder}", "json=-"])
    assert json.loads(capsys.readouterr().out)["documents"] == 20
    main(["regress", f"estimates={folder}", "steps=5", "stack.d_model=16", "stack.n_layers=1", "stack.n_heads=2"])
    assert "R²" in capsys.readouterr().out
    cfg = tiny("entropy_aware", f"entropy.estimates={out}", "entropy.train_documents=20", "data.n_ctx=16",
               "trainer.max_epochs=2", "trainer.max_steps=-1", "weight_entropy.every_n_steps=1", "logger=none",
               "report.compressors=[]")
    report = train(cfg, tmp_path / "aware")
    assert report["splits"]["val"]["bpb"] > 0
    assert (tmp_path / "aware" / "weight_entropy.png").is_file()
