"""The hidden states of any zoo model, layer by layer, read with forward hooks.

Which modules hold a model's hidden states is the model's own declaration,
:meth:`zoo.models.LanguageModel.hidden_layers` (the embedding, each block; the EACD adds its
vector), so nothing here knows a family. A LoRA-adapted model (``peft``) is read through the
zoo model inside it: its adapted layers run in place, so the hooks see the adapted states.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from zoo.models.base import LanguageModel


def language_model(model: nn.Module) -> LanguageModel:
    """The :class:`LanguageModel` inside ``model`` (itself, or the one an adapter wraps)."""
    for module in model.modules():
        if isinstance(module, LanguageModel):
            return module
    raise TypeError(f"{type(model).__name__} holds no zoo LanguageModel")


def _first_tensor(output: object) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


@dataclass
class LayerRecorder:
    """Rows ``[n, d]`` of each hidden layer's output, collected over forward passes.

    ``keep`` (set per batch: ``[B, T]``, True at real tokens) drops the pads of a layer whose
    output is ``[B, T, d]``; an output of another shape (the EACD's per-sequence vector, a
    decoder with one extra position) is kept whole. At most ``limit`` rows per layer are kept.
    """

    names: list[str]
    limit: int | None = None
    keep: Tensor | None = None
    rows: dict[str, list[Tensor]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: layers whose output has one row per sequence (``[B, d]``): never waited for
    per_sequence: set[str] = field(default_factory=set)
    #: layers whose positions did not line up with a batch that had pads (their pads were kept)
    with_pads: set[str] = field(default_factory=set)

    def record(self, name: str, output: object) -> None:
        x = _first_tensor(output)
        if x is None:
            return
        x = x.detach()
        if x.ndim == 2:
            self.per_sequence.add(name)
        if x.ndim == 3 and self.keep is not None:
            if tuple(x.shape[:2]) == tuple(self.keep.shape):
                x = x[self.keep.to(x.device, torch.bool)]
            elif not bool(self.keep.all()):
                self.with_pads.add(name)
        x = x.reshape(-1, x.shape[-1]).float().cpu()
        have = self.counts.get(name, 0)
        if self.limit is not None:
            x = x[: max(self.limit - have, 0)]
        if x.shape[0]:
            self.rows.setdefault(name, []).append(x)
            self.counts[name] = have + x.shape[0]

    def full(self) -> bool:
        """Every per-token layer has ``limit`` rows (a layer with one row per sequence, such as
        the EACD's vector, is not waited for: it has what the same batches give)."""
        return self.limit is not None and all(self.counts.get(n, 0) >= self.limit for n in self.names
                                              if n not in self.per_sequence)

    def states(self) -> dict[str, Tensor]:
        """Layer name -> its rows ``[n, d]``, in the model's layer order."""
        return {n: torch.cat(self.rows[n]) for n in self.names if n in self.rows}


@contextlib.contextmanager
def recording(model: nn.Module, limit: int | None = None) -> Iterator[LayerRecorder]:
    """Inside: every forward pass of ``model`` adds its hidden layers' outputs to the yielded
    :class:`LayerRecorder` (hooks removed on exit)."""
    layers = language_model(model).hidden_layers()
    recorder = LayerRecorder([n for n, _ in layers], limit)
    handles = [m.register_forward_hook(lambda _m, _i, out, name=n: recorder.record(name, out)) for n, m in layers]
    try:
        yield recorder
    finally:
        for h in handles:
            h.remove()


def collect_hidden_states(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], tokens: int | None = None,
                          progress: bool = False, total: int | None = None,
                          with_pads: set[str] | None = None) -> dict[str, Tensor]:
    """Layer name -> ``[N, d]`` representations of the tokens of ``batches`` (DataModule
    batches: ``input_ids``, ``attention_mask``, ``labels``), from the model's
    :meth:`~zoo.models.LanguageModel.forward_batch` in eval mode without gradients; at most
    ``tokens`` rows a layer (it stops reading batches once every layer has them).
    ``progress``: a tqdm bar over the batches (``total`` of them, if known). ``with_pads``, if
    given, receives the layers whose rows include pads (their positions do not match the
    batch's mask, e.g. a decoder with an extra position, on left-padded batches; packed
    windows have no pads)."""
    lm = language_model(model)
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="forward passes", unit="batch")
    try:
        with recording(model, tokens) as rec, torch.no_grad():
            for batch in batches:
                mask = batch.get("attention_mask")
                rec.keep = None if mask is None else mask.bool()
                lm.forward_batch(batch)
                if bar is not None:
                    bar.update(1)
                if rec.full():
                    break
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    if with_pads is not None:
        with_pads.update(rec.with_pads)
    return rec.states()
