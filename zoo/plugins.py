"""Plug-ins: modules outside the package that register model families or data sources.

A family (:func:`zoo.models.register_model`) or a source (:func:`zoo.data.sources.register_source`)
defined in your own module is known once that module is imported. In Python, import it
before you build anything. For the commands (``python -m zoo.fit`` ...), and for every process
a distributed launcher starts, name the modules in ``$ZOO_PLUGINS``, comma-separated::

    ZOO_PLUGINS=my_project.families,my_project.sources python -m zoo.fit recipe=... model.family=mine
"""

from __future__ import annotations

import importlib
import os

from zoo.errors import ZooError

_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import every module named in ``$ZOO_PLUGINS`` (once each); returns their names."""
    names = [n.strip() for n in os.environ.get("ZOO_PLUGINS", "").split(",") if n.strip()]
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ZooError(f"ZOO_PLUGINS names {name!r}, which cannot be imported ({e}); "
                           "fix the module name or PYTHONPATH") from e
        _loaded.add(name)
    return names
