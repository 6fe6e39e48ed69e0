"""A model folder on disk, and the zoo of published ones: one idea per module.

* :mod:`zoo.hub.checksums` — the sha256 of files, computed and compared in one place
  (a folder's ``sha256.json`` and the manifest's lists both go through it);
* :mod:`zoo.hub.folder` — a model folder (``save_pretrained`` / ``load_pretrained``), a
  Lightning ``.ckpt`` read safely, and LoRA adapter folders;
* :mod:`zoo.hub.manifest` — ``checkpoints/`` and its ``manifest.json``;
* :mod:`zoo.hub.registry` — every model config and published checkpoint by name
  (``zoo.list_models``, ``zoo.create_model``, ``zoo.load``, ``zoo.model_info``);
* :mod:`zoo.hub.listing` — the text table of ``python -m zoo.models``;
* :mod:`zoo.hub.card` — ``card.md`` (front matter + prose) and the zoo table (``docs/zoo.md``);
* :mod:`zoo.hub.publish` — publishing a run into ``checkpoints/`` (precision, evaluation, card, manifest);
* :mod:`zoo.hub.export` — a Llama-based model as a plain ``transformers`` folder.

This package imports none of them itself, so ``import zoo.hub.checksums`` stays light and
the submodules can import each other without a cycle through the package.
"""
