"""How a context informs its last token: ridge regression, Lasso token selection, deletion.

For one sequence of ``T`` tokens, a hidden layer gives representations ``h_1 .. h_T``
(``[T, d]``). Treating the last token's representation as a linear function of the context's,
``h_T ≈ Σ_t w_t h_t`` (t < T), is a regression with the ``d`` coordinates as samples and the
``T - 1`` context tokens as features:

* **ridge** (:func:`ridge_last_token`): R² of that fit (in sample, and cross-validated over
  the coordinates), i.e. how much of the last token's representation the context already
  spans; the rest is what the new token adds (its information gain, in the linear picture);
* **Lasso** (:func:`lasso_tokens`): the sparse fit picks a few context tokens (the first
  ``k`` to enter its regularisation path); :func:`attention_tokens` picks the ``k`` the last position attends to most
  (the last attention layer, mean over heads), and :func:`deletion_loss` says how much the
  next-token loss rises when the picked tokens are deleted from the context (against ``k``
  random ones): the larger the rise, the more the picked tokens carried.

Plain functions on a model and token ids; scikit-learn does the regressions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from zoo.geometry.hidden_states import language_model, recording


@runtime_checkable
class AttentionLayer(Protocol):
    """A layer that can write out its attention weights (:class:`zoo.models.llama_stack.Attention`)."""

    def attention_probs(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        ...


def sequence_states(model: nn.Module, ids: Tensor) -> dict[str, Tensor]:
    """Layer name -> ``[T, d]`` representations of one sequence ``ids`` ``[T]``."""
    with recording(model) as rec, torch.no_grad():
        language_model(model).forward_batch({"input_ids": ids[None], "labels": ids[None]})
    return rec.states()


def next_token_loss(model: nn.Module, context: Tensor, target: int) -> float:
    """``-ln p(target | context)`` in nats, from the model's last position."""
    with torch.no_grad():
        logits = language_model(model).forward_batch({"input_ids": context[None], "labels": context[None]})
    return float(-torch.log_softmax(logits[0, -1].double(), -1)[target])


def _design(states: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[d, T-1]`` (a column per context token) and target ``[d]`` (the last token),
    every representation scaled to unit L2 norm (as for the matrix entropy), so that a large
    coefficient means a large share of the fit, not a small token vector."""
    h = states.double()
    h = (h / h.norm(dim=-1, keepdim=True).clamp(min=1e-12)).numpy()
    return h[:-1].T, h[-1]


def ridge_last_token(states: Tensor, alpha: float = 1.0, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """``r2``: the in-sample R² of ridge regression of the last token's representation on the
    context's (``states`` ``[T, d]``); ``r2_cv``: the mean R² on held-out coordinates
    (``folds``-fold, shuffled)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_score

    x, y = _design(states)
    fit = Ridge(alpha=alpha).fit(x, y)
    cv = cross_val_score(Ridge(alpha=alpha), x, y, cv=KFold(folds, shuffle=True, random_state=seed), scoring="r2")
    return {"r2": float(fit.score(x, y)), "r2_cv": float(np.mean(cv))}


def lasso_tokens(states: Tensor, k: int) -> list[int]:
    """The ``k`` context positions a Lasso of the last token's representation on the
    context's selects first: along the regularisation path (``sklearn.linear_model.lasso_path``,
    from the penalty that keeps every weight 0 down), the order in which tokens get a non-zero
    weight (ties: the larger ``|w_t|`` at the end of the path, then the position). No penalty
    to tune, and always ``k`` tokens."""
    from sklearn.linear_model import lasso_path

    x, y = _design(states)
    _alphas, coefs, _gaps = lasso_path(x, y, alphas=200, eps=1e-4, max_iter=5_000)
    active = np.abs(coefs) > 0  # [T - 1, n_alphas], alphas decreasing
    entry = np.where(active.any(1), active.argmax(1), coefs.shape[1])
    order = np.lexsort((np.arange(len(entry)), -np.abs(coefs[:, -1]), entry))
    return [int(i) for i in order[:k]]


def attention_tokens(model: nn.Module, ids: Tensor, k: int) -> list[int]:
    """The ``k`` context positions (not the last) the last position attends to most in the
    model's last :class:`AttentionLayer` (weights averaged over heads)."""
    layers = [m for m in language_model(model).modules() if isinstance(m, AttentionLayer)]
    if not layers:
        raise ValueError(f"{type(language_model(model)).__name__} has no layer that writes out attention weights")
    seen: dict[str, Any] = {}

    def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["args"] = args
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k == "attn_mask"}

    handle = layers[-1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            language_model(model).forward_batch({"input_ids": ids[None], "labels": ids[None]})
            x, cos, sin, *rest = seen["args"]
            probs = layers[-1].attention_probs(x, cos, sin, *(rest[:1] or [seen["kwargs"].get("attn_mask")]))
    finally:
        handle.remove()
    weights = probs[0, :, -1, :-1].mean(0)  # [T - 1]: the last position reading each context token
    return [int(i) for i in torch.argsort(weights, descending=True, stable=True)[:k]]


def deletion_loss(model: nn.Module, ids: Tensor, target: int, positions: Sequence[int]) -> float:
    """The next-token loss (nats) after deleting ``positions`` from the context ``ids``."""
    keep = torch.ones(ids.shape[0], dtype=torch.bool)
    keep[list(positions)] = False
    return next_token_loss(model, ids[keep], target)


def token_experiment(model: nn.Module, ids: Tensor, target: int, ks: Sequence[int] = (1, 3, 10),
                     layer: str | None = None, ridge_alpha: float = 1.0, random_draws: int = 8, seed: int = 0) -> dict[str, Any]:
    """Everything above for one context ``ids`` ``[T]`` and its next token ``target``: ridge
    R² of every layer, then, at ``layer`` (default: the last) and for each ``k`` of ``ks``,
    the loss rise from deleting the Lasso's ``k`` tokens, the attention's ``k`` tokens and
    ``k`` random ones (the mean over ``random_draws``), and the overlap of the Lasso's and
    the attention's choice (``deletion[k]``)."""
    states = sequence_states(model, ids)
    ridge = {name: ridge_last_token(h, ridge_alpha) for name, h in states.items()}
    layer = layer or list(states)[-1]
    base = next_token_loss(model, ids, target)
    rng = np.random.default_rng(seed)
    deletion = {}
    for k in ks:
        lasso = lasso_tokens(states[layer], k)
        attention = attention_tokens(model, ids, k)
        draws = [deletion_loss(model, ids, target, rng.choice(ids.shape[0] - 1, k, replace=False).tolist())
                 for _ in range(random_draws)]
        deletion[k] = {"rise_lasso": deletion_loss(model, ids, target, lasso) - base,
                       "rise_attention": deletion_loss(model, ids, target, attention) - base,
                       "rise_random": float(np.mean(draws)) - base,
                       "overlap": len(set(lasso) & set(attention)) / k, "lasso": lasso, "attention": attention}
    return {"ridge": ridge, "layer": layer, "dim": int(states[layer].shape[-1]), "loss": base, "deletion": deletion}
