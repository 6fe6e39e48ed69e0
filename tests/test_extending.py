"""Extending the zoo from outside the package: a toy model family and a toy data source,
registered through the public API in a module of their own, train with ``python -m zoo.fit``
and score with ``python -m zoo.evaluate`` (``$ZOO_PLUGINS`` names the module). Nothing under
``zoo/`` is touched: this is the path docs/extending.md describes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = textwrap.dedent('''
    """A toy family and a toy source, as a user would write them (docs/extending.md)."""
    import itertools

    import torch
    from torch import nn

    from zoo.data.sources import Source, register_source
    from zoo.models import LanguageModel, register_model


    @register_model("toy-bag", description="Embeds each token, adds the mean of the context so far, then an MLP.")
    class BagOfContext(LanguageModel):
        block_classes = (nn.Linear,)

        def __init__(self, vocab_size: int, n_ctx: int, d_model: int = 32, n_layers: int = 1) -> None:
            super().__init__()
            self.n_ctx = n_ctx
            self.embed = nn.Embedding(vocab_size, d_model)
            self.mlp = nn.Sequential(*[nn.Sequential(nn.Linear(d_model, d_model), nn.GELU()) for _ in range(n_layers)])
            self.head = nn.Linear(d_model, vocab_size)

        def forward(self, input_ids, attention_mask=None):
            x = self.embed(input_ids)
            m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            m = m.unsqueeze(-1).to(x.dtype)
            context = (x * m).cumsum(1) / m.cumsum(1).clamp(min=1)
            return self.head(self.mlp(x + context))


    @register_source("toy-text")
    class ToyText(Source):
        """Sentences from a tiny grammar: subject, verb, object."""

        OPTIONS = {"n_documents": 600}

        def _all_documents(self):
            subjects = ["the cat", "a dog", "my sister", "the old sailor", "every child"]
            verbs = ["sees", "likes", "follows", "draws", "remembers"]
            objects = ["the sea", "a red kite", "the small house", "an owl", "the morning train"]
            combos = itertools.product(subjects, verbs, objects, range(10))
            for i, (s, v, o, k) in enumerate(itertools.islice(combos, int(self.options["n_documents"]))):
                yield f"{s} {v} {o} ({k}). " * (1 + i % 4)

        def _content_key(self):
            return {"generator": "toy-text v1"}
''')


def run(args: list[str], tmp_path: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ZOO_PLUGINS": "toy_plugin", "ZOO_CACHE": str(cache), "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)


@pytest.mark.slow
def test_a_toy_family_and_source_train_and_evaluate_through_the_commands(tmp_path) -> None:
    (tmp_path / "toy_plugin.py").write_text(PLUGIN)
    cache = tmp_path / "cache"
    fit = run(["zoo.fit", "recipe=quickstart", "model.family=toy-bag", "model.d_model=32", "model.n_layers=2",
               "~model.n_heads", "data.sources=[{name:toy-text}]", "data.n_ctx=32", "data.batch_size=8",
               "data.tokenizer.vocab_size=300", "trainer.max_steps=30", "trainer.val_check_interval=15",
               "trainer.enable_progress_bar=false", "optim.warmup_steps=3", "logger=csv",
               "report.splits=[val,test]", "report.compressors=[gzip]", f"out_dir={tmp_path / 'runs'}"],
              tmp_path, cache)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (report_path,) = (tmp_path / "runs").rglob("report.json")
    report = json.loads(report_path.read_text())
    val = report["splits"]["val"]
    assert 0 < val["bpb"] < 8 and val["gzip"] > 0  # scored, beside a compressor on the same text
    assert report["splits"]["test"]["bpb"] > 0
    config = (report_path.parent / "model" / "config.yaml").read_text()
    assert "family: toy-bag" in config and "name: toy-text" in config

    ev = run(["zoo.evaluate", f"checkpoint={report_path.parent / 'model'}", "split=val", "json=-"], tmp_path, cache)
    assert ev.returncode == 0, ev.stderr[-3000:]
    row = json.loads(ev.stdout)
    assert row["bpb"] == pytest.approx(val["bpb"], rel=1e-6) and row["sources"] == ["toy-text"]

    # without the plug-in, the names are unknown, and said so in one line
    env_less = subprocess.run([sys.executable, "-m", "zoo.evaluate", f"checkpoint={report_path.parent / 'model'}"],
                              env={**os.environ, "ZOO_CACHE": str(cache), "ZOO_PLUGINS": ""},
                              capture_output=True, text=True, timeout=300)
    assert env_less.returncode == 2 and "unknown model family 'toy-bag'" in env_less.stderr
    assert "Traceback" not in env_less.stderr


def test_the_shared_task_has_no_family_or_feature_branches() -> None:
    """LanguageModelTask reads the model contract only: no mixture-of-experts, EACD, vector
    or entropy-loss knowledge in its source."""
    source = (ROOT / "zoo" / "lit" / "language_model.py").read_text().lower()
    found = sorted(set(re.findall(r"moe|eacd|vector|router|expert|needs_targets|entropy_(?:l1|clip|aware|gap)", source)))
    assert found == []


def test_registering_a_taken_family_name_is_refused() -> None:
    from torch import nn

    from zoo.models import LanguageModel, register_model

    class Other(LanguageModel):
        def forward(self, input_ids, attention_mask=None):
            return nn.functional.one_hot(input_ids).float()

    with pytest.raises(ValueError, match="already registered"):
        register_model("llama")(Other)
