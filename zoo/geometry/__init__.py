"""Information in the geometry of a model's hidden states (after Tan, Li & Huang, "The
Information of Large Language Model Geometry", arXiv 2402.03471).

* :mod:`zoo.geometry.matrix_entropy` — the matrix (Rényi-α) entropy of a set of embeddings
  (pure math on tensors);
* :mod:`zoo.geometry.hidden_states` — the per-layer representations of any zoo model, read
  with hooks on :meth:`zoo.models.LanguageModel.hidden_layers`;
* :mod:`zoo.geometry.profile` — entropy against depth: one row per layer, the table, the plot;
* :mod:`zoo.geometry.information_gain` — how much of the last token's representation the
  context's explains (ridge), and which context tokens matter (Lasso vs attention);
* ``python -m zoo.geometry entropy ...`` — the command (:mod:`zoo.geometry.__main__`).

The package imports no submodule eagerly (``import zoo.geometry`` stays cheap).
"""
