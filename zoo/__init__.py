"""zoo: a Lightning model zoo for language models that measure and approach the entropy of text.

The registry (:mod:`zoo.hub.registry`) is importable from the top level (loaded on first
use, so ``import zoo`` stays light)::

    import zoo
    zoo.list_models()                          # model configs and published checkpoints
    model, tokenizer = zoo.load("llama-edu")   # a published model (plain nn.Module) + tokenizer
    model = zoo.create_model("llama_tiny", vocab_size=4096)   # an architecture, random init
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_REGISTRY_EXPORTS = ("list_models", "create_model", "load", "model_info")  # zoo.hub.registry
_MANIFEST_EXPORTS = ("checkpoints_dir",)  # zoo.hub.manifest
__all__ = ["__version__", *_REGISTRY_EXPORTS, *_MANIFEST_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_EXPORTS:
        from zoo.hub import registry

        return getattr(registry, name)
    if name in _MANIFEST_EXPORTS:
        from zoo.hub import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
