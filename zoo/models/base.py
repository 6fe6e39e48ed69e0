"""The model contract: what every family of the zoo provides, written down once.

A family is a plain ``nn.Module`` subclass of :class:`LanguageModel`, registered under a name
with :func:`register_model`::

    from zoo.models import LanguageModel, register_model

    @register_model("bigram", description="A table of next-token logits per token.")
    class Bigram(LanguageModel):
        def __init__(self, vocab_size: int, n_ctx: int, scale: float = 1.0) -> None:
            super().__init__()
            self.n_ctx = n_ctx
            self.table = nn.Embedding(vocab_size, vocab_size)

        def forward(self, input_ids, attention_mask=None):
            return self.table(input_ids)

``model.family=bigram`` then works in every recipe, command and API (``zoo.fit``,
``zoo.evaluate``, ``zoo.create_model``, model cards). The constructor takes ``vocab_size``
and ``n_ctx`` and then the family's own options, the keys of the ``model:`` config section.

Everything else the shared code asks of a model is an attribute or method here, with a
default that fits a plain causal LM; a family overrides only what differs:

* :meth:`LanguageModel.forward_batch` — logits for a DataModule batch (the EACD's encoder
  also reads the batch's ``labels``);
* :attr:`LanguageModel.side_bits_per_sequence` — bits of side information the model gets
  per sequence, which an honest bits-per-byte charges (the EACD's stored vector);
* :attr:`LanguageModel.block_classes` — the repeated blocks (the units FSDP shards);
* :attr:`LanguageModel.can_generate` — whether sampling text from the model makes sense;
* :attr:`LanguageModel.description` / :attr:`LanguageModel.card_note` — text for model cards;
* :meth:`LanguageModel.summarize` — a one-line description of a configured model;
* :meth:`LanguageModel.transformers_model` — the ``transformers`` model inside, if there is
  one (export to a plain ``transformers`` folder, generation with its KV cache);
* :meth:`LanguageModel.forward_flops_per_token` — the FLOP count behind MFU;
* :meth:`LanguageModel.auxiliary_loss` — extra training losses its layers produce (e.g. the
  load-balancing loss of mixture-of-experts layers, :class:`AuxiliaryLossLayer`);
* :meth:`LanguageModel.hidden_layers` — the named modules whose outputs are its hidden states,
  in the order data flows through them (``zoo.geometry`` hooks them: entropy per layer);
* :meth:`LanguageModel.output_head` — its :class:`OutputHead`, which evaluation runs itself,
  chunk by chunk with the metrics, instead of materialising ``[B, T, V]`` logits
  (:meth:`LanguageModel.deferred_head`); a family gets this by making its output layer an
  :class:`OutputHead` (a drop-in ``nn.Linear``) and a direct child of the model.

What the compressor (``zoo.codec``) asks, with defaults for a plain causal LM:

* :meth:`LanguageModel.side_information` / :meth:`LanguageModel.predict` — the numbers a
  decoder needs besides the past tokens (the EACD's vector, which the file stores), and the
  logits given them;
* :meth:`LanguageModel.incremental_decoder` — a token-at-a-time decoder with a cache (``None``:
  the compressor recomputes the whole window per token);
* :meth:`LanguageModel.decouple_rows` — switch off whatever lets one token's output depend on
  other tokens of the batch (:class:`RowCoupledLayer`, e.g. the experts' capacity limits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from zoo.errors import unknown


@runtime_checkable
class AuxiliaryLossLayer(Protocol):
    """A layer that leaves an auxiliary training loss behind after each forward pass (already
    weighted; ``None`` when it has none), e.g. :class:`zoo.models.moe.MoEFeedForward`."""

    aux_loss: Tensor | None


@runtime_checkable
class SparseLayer(Protocol):
    """A layer of which only part of the parameters is used per token (routed experts)."""

    def inactive_parameters(self) -> int:
        """Parameters a token does not use (counted in ``total``, not in ``active``)."""
        ...


@runtime_checkable
class RowCoupledLayer(Protocol):
    """A layer whose output for one token can depend on the other tokens of its batch (a
    mixture of experts with a capacity: a token is dropped when others fill its expert)."""

    def decouple_rows(self) -> None:
        """From now on, compute every token independently of the rest of the batch."""
        ...


@runtime_checkable
class IncrementalDecoder(Protocol):
    """A model run one position at a time over a batch of rows, with its cache."""

    def step(self, token_ids: Tensor) -> Tensor:
        """Feed the next input token of every row (``[B]``); the next-token logits ``[B, V]``."""
        ...


class OutputHead(nn.Linear):
    """The output layer ``hidden [..., d] -> logits [..., V]``: an ``nn.Linear`` (same
    parameters, same state-dict keys) that can be told to hand its input back instead.

    Under :meth:`LanguageModel.deferred_head` the model's own forward returns the hidden
    states the head would have read, and the caller applies the head to a few rows at a time
    (:func:`zoo.metrics.token_stats_from_hidden`). For a small language model the
    ``[B, T, V]`` logits are the largest tensor of a forward pass: writing them out, then
    reading them back for the metrics, cost evaluation about a tenth of its time on CPU, where
    a chunk of rows computed and scored at once stays in cache.
    """

    #: while True, :meth:`forward` returns its input unchanged (the hidden states)
    deferred: bool = False

    def forward(self, hidden: Tensor) -> Tensor:
        if self.deferred:
            return hidden
        return super().forward(hidden)

    def logits_into(self, hidden: Tensor, out: Tensor, scale: float = 1.0) -> Tensor | None:
        """``scale * self(hidden)`` for ``[R, d]`` rows, written into ``out`` ``[>= R, V]``
        (returns the ``[R, V]`` view), or ``None`` where that would not be what :meth:`forward`
        computes (autocast, or dtypes that differ). Reusing one buffer matters on CPU: a fresh
        megabytes-large tensor per chunk costs more in page faults than its matmul. The scale
        is applied inside the matmul (``addmm``'s ``alpha``), at no cost."""
        weight = self.weight
        if (torch.is_autocast_enabled(hidden.device.type) or hidden.dtype != weight.dtype
                or out.dtype != weight.dtype or out.device != hidden.device):
            return None
        rows = out[: hidden.shape[0]]
        if self.bias is None:
            return rows.addmm_(hidden, weight.t(), beta=0, alpha=scale)
        return torch.addmm(self.bias, hidden, weight.t(), beta=scale, alpha=scale, out=rows)


class LanguageModel(nn.Module):
    """Base class of every zoo family: ``model(input_ids [B, T], attention_mask [B, T]) ->
    logits [B, T, V]``, plus the declarations below (module docstring).

    ``attention_mask`` is 1 at tokens and 0 at pads; a family must give a padded row the
    same logits at its real tokens as the unpadded row (the left-padded layout relies on it).
    """

    #: the name the family is registered under (set by :func:`register_model`)
    family: ClassVar[str] = ""
    #: one or two sentences for model cards and ``python -m zoo.models``
    description: ClassVar[str] = ""
    #: how to read the family's numbers, printed under a card's metrics ("" for none)
    card_note: ClassVar[str] = ""
    #: whether sampling continuations is meaningful (False for models that read their targets)
    can_generate: ClassVar[bool] = True
    #: the repeated blocks: what FSDP shards one unit at a time (empty: shard the whole model)
    block_classes: tuple[type[nn.Module], ...] = ()
    #: bits of side information the model receives for free per sequence (an honest rate adds them)
    side_bits_per_sequence: float = 0.0
    #: numbers of side information per sequence (:meth:`side_information`'s width; 0: none)
    side_numbers: int = 0
    #: tokens per sample the model was built for
    n_ctx: int

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward_batch(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Next-token logits ``[B, T, V]`` for a batch of the shared DataModule (``input_ids``,
        ``attention_mask``, ``labels``, ...). Override when the model reads more than the inputs.

        A causal model's real tokens never see the pads that FOLLOW them, so a mask whose pads
        all trail the tokens (packed windows, the final right-padded one) is dropped, and the
        model runs its unmasked path (plain causal attention, no mask tensor)."""
        mask = batch.get("attention_mask")
        if mask is not None and not pads_before_tokens(mask):
            mask = None
        return self(batch["input_ids"], attention_mask=mask)

    def side_information(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """Numbers ``[B, n]`` the model reads per row besides the past tokens, already in the
        format they are stored in (``None``: none). A compressed file stores them, at
        :attr:`side_bits_per_sequence` bits a row (:meth:`side_format`)."""
        return None

    def side_format(self) -> Any | None:
        """The :class:`~zoo.models.vector_formats.VectorFormat` that stores
        :meth:`side_information` (``None``: the model has none)."""
        return None

    def predict(self, input_ids: Tensor, side: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, T, V]`` of ``input_ids`` given ``side`` (from
        :meth:`side_information`): what a decoder computes without the batch's labels."""
        return self(input_ids, attention_mask)

    def incremental_decoder(self, side: Tensor | None, batch_size: int) -> IncrementalDecoder | None:
        """A decoder for ``batch_size`` rows that takes one token at a time and keeps a cache
        (``None``, the default: the family has none)."""
        return None

    def decouple_rows(self) -> None:
        """Make every token's output independent of the other tokens of its batch (every
        :class:`RowCoupledLayer` inside): a compressor's decoder sees a batch the encoder
        did not."""
        for module in self.modules():
            if isinstance(module, RowCoupledLayer) and module is not self:
                module.decouple_rows()

    def transformers_model(self) -> Any | None:
        """The ``transformers`` ``PreTrainedModel`` this model is (for ``zoo.export`` and
        KV-cached generation); ``None``: the family is not a ``transformers`` model."""
        return None

    def forward_flops_per_token(self, n_ctx: int) -> float | None:
        """Forward FLOPs per input token at context ``n_ctx``; ``None`` (the default): count
        the model's layers over ``n_ctx`` positions (:func:`zoo.models.flops.forward_flops`).
        Override when the model runs other positions than its inputs."""
        return None

    @classmethod
    def summarize(cls, options: Mapping[str, Any]) -> str:
        """One line for cards and listings of a model built with the ``model:`` ``options``."""
        size = f" d={options['d_model']} x {options['n_layers']}" if {"d_model", "n_layers"} <= set(options) else ""
        return f"{cls.family}{size}"

    def auxiliary_loss(self) -> Tensor | None:
        """The sum of the auxiliary losses its layers left in the last forward (``None``: none)."""
        return auxiliary_loss(self)

    def output_head(self) -> OutputHead | None:
        """The model's output layer when the shared evaluation may run it itself: the one
        :class:`OutputHead` among the model's direct children, row-wise (logits of a row
        depend on that row's hidden state only) and last (its output is the model's).
        ``None`` when there is none, several, or its weight is sharded (FSDP2's DTensors, or
        FSDP1's empty views outside a forward: only the model's own forward may gather them);
        the caller then uses the logits."""
        heads = [m for m in self.children() if isinstance(m, OutputHead)]
        if len(heads) != 1:
            return None
        if any(type(p).__name__ == "DTensor" or p.numel() == 0 for p in heads[0].parameters()):
            return None
        return heads[0]

    @contextmanager
    def deferred_head(self) -> Iterator[OutputHead | None]:
        """Within the block, the model's forward returns the hidden states ``[B, T, d]`` its
        :meth:`output_head` would read, and the block gets that head to apply; it gets
        ``None``, and the forward returns logits as usual, when :meth:`output_head` is
        ``None``. The head is restored on exit, exception or not."""
        head = self.output_head()
        if head is None:
            yield None
            return
        head.deferred = True
        try:
            yield head
        finally:
            head.deferred = False

    def hidden_layers(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of every module whose output is one of the model's hidden states
        (``[..., d]``), in the order the data flows through them: by default each token
        embedding (:class:`torch.nn.Embedding`) and each repeated block (:attr:`block_classes`),
        in registration order, none inside another. ``zoo.geometry`` hooks them to read the
        representation after the embedding (layer 0) and after each block, with no family code.
        Override to add states the default misses (the EACD's vector)."""
        blocks = tuple(self.block_classes)
        found: list[tuple[str, nn.Module]] = []
        for name, module in self.named_modules():
            if not (isinstance(module, nn.Embedding) or (blocks and isinstance(module, blocks))):
                continue
            if any(name.startswith(f"{outer}.") for outer, _ in found):
                continue  # a LoRA-wrapped embedding's base layer, an embedding inside a block
            found.append((name, module))
        return found


def pads_before_tokens(mask: Tensor) -> bool:
    """Whether a ``[B, T]`` attention mask (1 = token, 0 = pad) has a pad before a token in
    some row (left padding), i.e. whether a causal model needs it. Reading the answer is one
    host sync on an accelerator (none on CPU)."""
    return bool((mask[:, 1:] > mask[:, :-1]).any())


def auxiliary_loss(model: nn.Module) -> Tensor | None:
    """Sum of every :class:`AuxiliaryLossLayer`'s loss from the last forward (``None``: none).

    Works on any module (an adapter-wrapped model too), so callers need not unwrap."""
    losses = [m.aux_loss for m in model.modules()
              if isinstance(m, AuxiliaryLossLayer) and m is not model and m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``total``, ``trainable`` and ``active`` (used per token: all but unrouted experts)."""
    total = count_parameters(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    inactive = sum(m.inactive_parameters() for m in model.modules() if isinstance(m, SparseLayer))
    return {"total": total, "trainable": trainable, "active": total - inactive}


# ------------------------------------------------------------------ the family registry

#: family name -> its class
_FAMILIES: dict[str, type[LanguageModel]] = {}


def register_model(
    name: str, *, description: str | None = None, card_note: str | None = None
) -> Callable[[type[LanguageModel]], type[LanguageModel]]:
    """Class decorator: make ``model.family=name`` build this :class:`LanguageModel`.

    ``description`` and ``card_note`` set the class's card texts (else its own attributes,
    else the first paragraph of its docstring). Registering a taken name is an error, so a
    plug-in cannot silently replace a built-in family.
    """

    def decorate(cls: type[LanguageModel]) -> type[LanguageModel]:
        if not (isinstance(cls, type) and issubclass(cls, LanguageModel)):
            raise TypeError(f"@register_model({name!r}) needs a LanguageModel subclass; got {cls!r}")
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"model family {name!r} is already registered ({_FAMILIES[name].__qualname__})")
        cls.family = name
        if description is not None:
            cls.description = description
        elif not cls.__dict__.get("description"):
            cls.description = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        if card_note is not None:
            cls.card_note = card_note
        _FAMILIES[name] = cls
        return cls

    return decorate


def list_families() -> list[str]:
    """Names accepted as ``model.family``."""
    return sorted(_FAMILIES)


def family_class(name: str) -> type[LanguageModel]:
    """The class registered as ``name`` (a one-line error listing the families otherwise)."""
    if name not in _FAMILIES:
        raise unknown("model family", str(name), _FAMILIES)
    return _FAMILIES[name]


def family_of(model: nn.Module) -> type[LanguageModel] | None:
    """The :class:`LanguageModel` class inside ``model`` (itself, or the model an adapter
    wraps); ``None`` for a module that is not a zoo model."""
    for module in model.modules():
        if isinstance(module, LanguageModel):
            return type(module)
    return None


def family_options(name: str) -> list[str]:
    """The ``model:`` options of family ``name`` (its constructor's keywords)."""
    import inspect

    params = inspect.signature(family_class(name)).parameters
    return [p for p in params if p not in ("self", "vocab_size", "n_ctx")]


def describe_family(name: str) -> dict[str, Any]:
    """What a card or listing says about family ``name``."""
    cls = family_class(name)
    return {"family": name, "description": cls.description, "card_note": cls.card_note,
            "can_generate": cls.can_generate}
