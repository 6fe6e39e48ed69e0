"""A synthetic source whose entropy is known exactly: a random order-``k`` Markov chain.

Real text has no known entropy, so an entropy estimator or a model that claims to approach
"the entropy of text" cannot be checked on it. This source can: every document is a
string drawn from a fixed, randomly drawn order-``k`` Markov chain over a small alphabet
(the letters ``a, b, c, ...``), so

* the **entropy rate** ``H = sum_s pi(s) H(P(. | s))`` (bits per symbol) follows exactly
  from the transition matrix ``P`` and the stationary distribution ``pi`` of the chain on
  ``k``-tuples (:attr:`MarkovChain.entropy_rate`);
* the **per-symbol conditional entropy** of every position of a realised string, and its
  surprisal ``-log2 P(x_t | x_{t-k..t-1})``, are known too
  (:meth:`MarkovChain.conditional_entropies`, :meth:`MarkovChain.surprisals`).

Each document starts in the stationary distribution, so every position has the same
marginal law and position ``t >= k`` has conditional entropy exactly ``H(P(. | context))``.
Letters are ASCII, so with a byte-level tokenizer without merges (vocab_size 258: 256 bytes
and the two special tokens) one symbol is one token is one byte, and bits per byte, bits per
token and bits per symbol are the same number.

Registered as data source ``markov`` (options: ``alphabet``, ``order``, ``concentration``
of the Dirichlet the rows of ``P`` are drawn from, ``n_documents``, ``length`` symbols per
document, ``seed``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from zoo.data.sources.base import Source
from zoo.data.sources.options import check_count
from zoo.data.sources.registry import register_source
from zoo.errors import ZooError


class MarkovChain:
    """An order-``k`` Markov chain over ``alphabet`` letters with Dirichlet-random rows.

    Args:
        alphabet: number of symbols (2..26), written ``a, b, c, ...``.
        order: ``k``, how many previous symbols the next one depends on (>= 1).
        concentration: Dirichlet parameter of each row of ``P`` (small: peaked rows, low
            entropy; large: near-uniform rows).
        seed: seed of the draw of ``P``.

    Attributes:
        P: ``[alphabet**order, alphabet]`` transition probabilities; row ``s`` is the law of
            the next symbol after the context whose base-``alphabet`` digits are ``s``.
        pi: ``[alphabet**order]`` stationary distribution of the contexts.
        entropy_rate: bits per symbol, ``sum_s pi[s] * H(P[s])``.
    """

    def __init__(self, alphabet: int = 4, order: int = 2, concentration: float = 0.5, seed: int = 0) -> None:
        if not 2 <= alphabet <= 26:
            raise ValueError(f"alphabet must be 2..26 letters, got {alphabet}")
        if order < 1 or alphabet**order > 65536:
            raise ValueError(f"order must be >= 1 with alphabet**order <= 65536, got {order}")
        if not concentration > 0:
            raise ValueError(f"concentration must be positive, got {concentration}")
        self.alphabet, self.order = alphabet, order
        self.n_states = alphabet**order
        rng = np.random.default_rng(seed)
        P = rng.dirichlet(np.full(alphabet, float(concentration)), size=self.n_states)
        self.P = np.clip(P, 1e-12, None)
        self.P /= self.P.sum(1, keepdims=True)
        self.pi = self._stationary()
        self.row_entropy = -(self.P * np.log2(self.P)).sum(1)  # bits, per context
        self.entropy_rate = float(self.pi @ self.row_entropy)

    # ------------------------------------------------------------------ the chain on k-tuples
    def next_state(self, state: np.ndarray | int, symbol: np.ndarray | int) -> np.ndarray | int:
        """Context after appending ``symbol``: drop the oldest digit, append the new one."""
        return (state * self.alphabet) % self.n_states + symbol

    def _stationary(self) -> np.ndarray:
        """Left eigenvector of the ``k``-tuple transition matrix for eigenvalue 1 (exact solve)."""
        n, A = self.n_states, self.alphabet
        T = np.zeros((n, n))
        states = np.arange(n)
        for x in range(A):
            T[states, self.next_state(states, x)] += self.P[:, x]
        # pi (T - I) = 0 with sum(pi) = 1: replace one equation by the normalisation
        M = (T - np.eye(n)).T
        M[-1, :] = 1.0
        b = np.zeros(n)
        b[-1] = 1.0
        pi = np.linalg.solve(M, b)
        pi = np.clip(pi, 0, None)
        return pi / pi.sum()

    def _digits(self, state: int) -> list[int]:
        return [(state // self.alphabet ** (self.order - 1 - m)) % self.alphabet for m in range(self.order)]

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, length: int, seed: int = 0) -> np.ndarray:
        """``[n, length]`` int symbols: each row starts in the stationary law, then the chain."""
        if length < self.order:
            raise ValueError(f"length must be >= order={self.order}, got {length}")
        rng = np.random.default_rng(seed)
        out = np.empty((n, length), dtype=np.int64)
        state = rng.choice(self.n_states, size=n, p=self.pi)
        for m in range(self.order):
            out[:, m] = (state // self.alphabet ** (self.order - 1 - m)) % self.alphabet
        cdf = np.cumsum(self.P, axis=1)
        cdf[:, -1] = 1.0
        for t in range(self.order, length):
            u = rng.random(n)
            x = (u[:, None] > cdf[state]).sum(1)
            out[:, t] = x
            state = self.next_state(state, x)
        return out

    def texts(self, n: int, length: int, seed: int = 0) -> list[str]:
        """``n`` documents of ``length`` letters (``a`` = symbol 0)."""
        letters = np.frombuffer(bytes(range(97, 97 + self.alphabet)), dtype=np.uint8)
        return [letters[row].tobytes().decode("ascii") for row in self.sample(n, length, seed)]

    def encode(self, text: str) -> np.ndarray:
        """Symbols of a document (``a`` -> 0); raises on letters outside the alphabet."""
        sym = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 97
        if len(sym) and (sym.min() < 0 or sym.max() >= self.alphabet):
            raise ValueError("text holds letters outside the chain's alphabet")
        return sym

    # ------------------------------------------------------------------ exact per-symbol values
    def _prefix_marginal(self, m: int) -> np.ndarray:
        """Stationary law of the first ``m`` (<= k) symbols, shape ``[A] * m``."""
        joint = self.pi.reshape([self.alphabet] * self.order)
        return joint.sum(axis=tuple(range(m, self.order))) if m < self.order else joint

    def _conditionals(self, sym: np.ndarray) -> list[np.ndarray]:
        """Law of each symbol given the realised past: ``[len(sym)]`` arrays of ``[A]``."""
        laws = []
        for t in range(min(self.order, len(sym))):  # inside the first context: from pi
            joint = self._prefix_marginal(t + 1)[tuple(sym[:t])]
            laws.append(joint / joint.sum())
        state = 0
        for m in range(self.order):
            state = state * self.alphabet + (int(sym[m]) if m < len(sym) else 0)
        for t in range(self.order, len(sym)):
            laws.append(self.P[state])
            state = self.next_state(state, int(sym[t]))
        return laws

    def conditional_entropies(self, text: str) -> np.ndarray:
        """Bits: ``H(x_t | x_<t = realised past)`` for every position (its mean over many
        positions ``t >= k`` tends to :attr:`entropy_rate`)."""
        laws = self._conditionals(self.encode(text))
        return np.asarray([-(p * np.log2(np.clip(p, 1e-300, None))).sum() for p in laws])

    def surprisals(self, text: str) -> np.ndarray:
        """Bits: ``-log2 P(x_t | x_<t)`` of every realised symbol (the code length an
        ideal model pays; its mean is an unbiased estimate of the entropy)."""
        sym = self.encode(text)
        laws = self._conditionals(sym)
        return np.asarray([-np.log2(p[x]) for p, x in zip(laws, sym, strict=True)])


@functools.lru_cache(maxsize=8)
def _markov_documents(alphabet: int, order: int, concentration: float, seed: int, n: int, length: int) -> tuple[str, ...]:
    chain = MarkovChain(alphabet, order, concentration, seed)
    return tuple(dict.fromkeys(chain.texts(n, length, seed=seed + 1)))  # duplicates: none in practice


@register_source("markov")
class MarkovSource(Source):
    """Documents drawn from a seeded random order-``k`` Markov chain (module docstring).

    ``chain`` is the :class:`MarkovChain`; ``chain.entropy_rate`` is the exact entropy in
    bits per symbol (= per byte, = per token with a merge-free byte-level tokenizer).
    """

    OPTIONS = {"alphabet": 4, "order": 2, "concentration": 0.5, "n_documents": 2000, "length": 256, "seed": 0}
    IN_MEMORY = True

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.n_documents = check_count(name, options, "n_documents", minimum=1)
        self.length = check_count(name, options, "length", minimum=1)
        self.seed = check_count(name, options, "seed", minimum=0)
        conc = options["concentration"]
        if isinstance(conc, bool) or not isinstance(conc, int | float) or conc <= 0:
            raise ZooError(f"source '{name}': concentration must be a positive number, got {conc!r}")
        try:
            self.chain = MarkovChain(
                check_count(name, options, "alphabet", minimum=2), check_count(name, options, "order", minimum=1),
                float(conc), self.seed,
            )
            if self.length < self.chain.order:
                raise ValueError(f"length must be >= order={self.chain.order}")
        except ValueError as e:
            raise ZooError(f"source '{name}': {e}") from None

    @property
    def entropy_rate(self) -> float:
        """Exact entropy rate in bits per symbol."""
        return self.chain.entropy_rate

    def _all_documents(self) -> Iterator[str]:
        c = self.chain
        return iter(_markov_documents(c.alphabet, c.order, float(self.options["concentration"]), self.seed,
                                      self.n_documents, self.length))

    def _content_key(self) -> dict[str, Any]:
        return {"generator": "zoo.data.markov v1"}

