"""Text from installed Python code: source files (code) or their docstrings (technical prose).

Every Python ships its standard library as source, and every installed package its modules,
so this corpus is on every machine that runs the zoo, with no download:

- ``python-code``: the ``.py`` files of the standard library (package name ``stdlib``), one
  document per file. About 10 MB of code for CPython 3.11.
- ``docstrings``: the docstrings of NumPy, SciPy, SymPy and PyTorch, one document per module
  (its docstrings in source order, blank-line separated). About 17 MB of technical and
  mathematical prose in reST, with doctests and LaTeX.

Tests (``test/``, ``tests/``, ``idle_test/``), generated tables (the stdlib's ``encodings/``
charmaps, ``pydoc_data``) and caches are skipped. The text changes with the installed
versions, which are part of the source's fingerprint (and so of the token cache's key).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import inspect
import os
import platform
import sysconfig
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zoo.data.sources.base import Source, _unique, clean_text
from zoo.data.sources.options import check_count
from zoo.data.sources.registry import register_source
from zoo.errors import ZooError, unknown

#: the standard library, as a package name
STDLIB = "stdlib"
CONTENTS = ("code", "docstrings")
#: directories never read: tests, generated tables, caches, other packages
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "testing", "__pycache__", "site-packages",
                       "dist-packages", "encodings", "pydoc_data", "_vendor", "vendored"})


def _package_root(source: str, package: str) -> Path:
    """The directory (or single file) of an importable package, found without importing it."""
    if package == STDLIB:
        return Path(sysconfig.get_paths()["stdlib"])
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ZooError(f"source '{source}': package '{package}' is not installed; install it "
                       f"(pip install {package}) or leave it out of 'packages'")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin and spec.origin.endswith(".py"):
        return Path(spec.origin)
    raise ZooError(f"source '{source}': package '{package}' has no Python source files to read")


def _python_files(root: Path) -> list[Path]:
    """Every ``.py`` file under ``root`` outside :data:`SKIP_DIRS`, in sorted order."""
    if root.is_file():
        return [root]
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        found += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
    return found


def module_docstrings(code: str) -> str:
    """The docstrings of a module's source (module, classes, functions, methods), in source
    order, each dedented as ``inspect.cleandoc`` does, separated by blank lines ('' if none
    or if the file does not parse)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old docstrings
            tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return ""
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    docs = (ast.get_docstring(n, clean=False) for n in nodes)
    return "\n\n".join(inspect.cleandoc(d) for d in docs if d and d.strip())


@functools.lru_cache(maxsize=8)
def _documents(packages: tuple[str, ...], content: str, min_chars: int, source: str) -> tuple[str, ...]:
    """Cleaned, unique documents of ``packages``: each file's code, or its docstrings."""
    texts = []
    for package in packages:
        for path in _python_files(_package_root(source, package)):
            try:
                code = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # an unreadable or non-UTF-8 file: not text we can train on
            texts.append(clean_text(code if content == "code" else module_docstrings(code)))
    return _unique(texts, min_chars)


@functools.lru_cache(maxsize=1)
def _distributions() -> Mapping[str, list[str]]:
    """Importable package -> its distributions (one scan of site-packages per process)."""
    return importlib.metadata.packages_distributions()


def _version(package: str) -> str:
    if package == STDLIB:
        return f"python {platform.python_version()}"
    dists = _distributions().get(package) or [package]
    try:
        return f"{dists[0]}=={importlib.metadata.version(dists[0])}"
    except importlib.metadata.PackageNotFoundError:
        return f"{package} (version unknown)"


@register_source("python-code", content="code", packages=[STDLIB])
@register_source("docstrings", content="docstrings", packages=["numpy", "scipy", "sympy", "torch"])
class PythonTextSource(Source):
    """Source files or docstrings of installed Python packages (``stdlib``: the standard library)."""

    OPTIONS = {"packages": [STDLIB], "content": "code", "min_chars": 64}
    IN_MEMORY = True

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        packages = options["packages"]
        packages = [packages] if isinstance(packages, str) else packages
        if not isinstance(packages, list | tuple) or not packages or not all(
                isinstance(p, str) and p for p in packages):
            raise ZooError(f"source '{name}': packages must be a non-empty list of importable package "
                           f"names (or '{STDLIB}'), got {options['packages']!r}")
        self.packages = tuple(packages)
        self.content = options["content"]
        if self.content not in CONTENTS:
            raise unknown(f"content for source '{name}'", str(self.content), CONTENTS)
        self.min_chars = check_count(name, options, "min_chars", minimum=0)
        for package in self.packages:  # fail now, not at the first read
            _package_root(name, package)

    def _all_documents(self) -> Iterator[str]:
        return iter(_documents(self.packages, self.content, self.min_chars, self.name))

    def _content_key(self) -> dict[str, Any]:
        return {"packages": [_version(p) for p in self.packages]}
