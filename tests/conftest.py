"""Shared fixtures: an isolated cache, W&B offline, and one small trained tokenizer per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the user's cache or the network.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token/tokenizer cache for the whole session (so each split is tokenised once)."""
    path = tmp_path_factory.mktemp("zoo-cache")
    os.environ["ZOO_CACHE"] = str(path)
    return path


#: the data settings most tests train with: a small BPE on the embedded edu corpus
SMALL_TOKENIZER = {"vocab_size": 512, "train_bytes": 1_000_000}


@pytest.fixture(scope="session")
def edu_dm(cache_dir):
    """A prepared DataModule over the embedded edu corpus with a 512-token BPE."""
    from zoo.data.datamodule import TextDataModule

    dm = TextDataModule([{"name": "edu"}], n_ctx=64, batch_size=8, tokenizer=SMALL_TOKENIZER, cache_dir=cache_dir)
    dm.prepare_data()
    dm.setup()
    return dm
