"""Data diversity of text corpora (``python -m zoo.diversity``; docs/diversity.md).

* :mod:`~zoo.diversity.lexical` — TTR, MTLD, distinct-n, n-gram entropy, Hill numbers of word lists.
* :mod:`~zoo.diversity.corpus` — a corpus's documents and an equal word budget of them.
* :mod:`~zoo.diversity.semantic` — offline MiniLM embeddings, mean cosine distance, the Vendi
  score, Self-BLEU (the ``diversity`` extra).
* :mod:`~zoo.diversity.topics` — k-means topics over the embeddings and their entropy.
* :mod:`~zoo.diversity.selection` — the most diverse subset, greedily by the Vendi score.
* :mod:`~zoo.diversity.command` — the command and its table.

The lexical functions and the command are importable from here, as before the package.
"""

from zoo.diversity.command import OPTIONS, main, table
from zoo.diversity.corpus import corpus_texts, sample_budget, sample_documents
from zoo.diversity.lexical import diversity, hill_numbers, mtld, ngrams, shannon_bits, words_of

__all__ = ["OPTIONS", "corpus_texts", "diversity", "hill_numbers", "main", "mtld", "ngrams", "sample_budget",
           "sample_documents", "shannon_bits", "table", "words_of"]
