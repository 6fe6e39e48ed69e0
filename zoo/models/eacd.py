"""Encoder-augmented causal decoder (EACD) of "Know Your Limits" (arXiv 2511.10618).

An *oracle* encoder reads the very tokens the decoder is asked to predict, squeezes the
sequence into one small vector (the encoder's hidden state at the last real position,
projected down by ``compression``), and a causal decoder predicts the sequence given that
vector. The model is an entropy estimator / compressor, not a generator: its cross-entropy
is only an honest compression rate once the vector's own cost, the bits that store its
``d_c`` numbers in ``vector_format`` (:attr:`EncoderAugmentedDecoder.side_bits_per_sequence`),
is added to it. The zoo's training task does that for the headline bits per byte.

Quantization-aware training (``noise_q > 0``): centred uniform noise ``U(-q, q)`` is added
while training, either to the vector (``noise_at="after_down"``: ``e = down(h) + U``) or to
the encoder's final hidden state, the residual stream, before it is projected
(``"before_down"``: ``e = down(h + U)``), so the decoder learns to read a vector that will
later be stored in a coarse format (:mod:`zoo.models.noise`, :mod:`zoo.quantize`). In
evaluation the noise is off and the vector is rounded through ``vector_format`` instead.

Both halves are the zoo's shared stacks (:mod:`zoo.models.blocks`): a causal masked mixer or
a Llama stack, each described by a small dict.

Injection of the vector into the decoder (``injection``):

* ``"token"`` — ``up = Linear(d_c, d_dec)`` maps it to one extra decoder position placed
  immediately before the row's first real token (index ``n_pad`` of a left-padded row,
  0 otherwise). The decoder sees ``T + 1`` positions (its ``n_ctx`` is ``n_ctx + 1``); pads
  stay masked; logits come from the ``T`` positions after the vector token. A padded row and
  its unpadded copy see identical decoder inputs. The paper maps ``d_c → d_enc → d_dec``
  with two Linears; with no nonlinearity between them that is one linear map of rank
  ``<= d_c``, so a single ``Linear(d_c, d_dec)`` spans the same functions with fewer weights.
* ``"embedding"`` — the vector is concatenated to every token embedding along the hidden
  dimension: token embeddings are ``d_dec`` wide, the decoder ``d_dec + d_c``.
* ``"additive"`` — ``up = Linear(d_c, d_dec)`` and the result is added to every token
  embedding.

Reported in the paper: mixer decoders do a little better with ``embedding``, transformer
decoders with ``token``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from zoo.data.layouts import IGNORE_INDEX
from zoo.models.base import LanguageModel, OutputHead, register_model
from zoo.models.blocks import build_stack
from zoo.models.noise import UniformNoise
from zoo.models.vector_formats import get_vector_format, store_vector

INJECTIONS = ("token", "embedding", "additive")
NOISE_PLACES = ("after_down", "before_down")


def first_valid(mask: Tensor) -> Tensor:
    """Index ``[B]`` of each row's first real position (0 for a row with none)."""
    return mask.to(torch.int32).argmax(-1)


def last_valid(mask: Tensor) -> Tensor:
    """Index ``[B]`` of each row's last real position (0 for a row with none)."""
    positions = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return ((mask != 0) * positions).argmax(-1)


CARD_NOTE = (
    "BPB includes the cost of the encoder's vector (the honest compression rate); "
    "`bpb_free_vector` is the same without it. The encoder reads the text it predicts, so the "
    "model is an entropy estimator, not a generator."
)


@register_model("eacd", card_note=CARD_NOTE)
class EncoderAugmentedDecoder(LanguageModel):
    """An encoder-augmented causal decoder: an oracle encoder compresses the sequence to
    ``d_c`` numbers, and a causal decoder predicts the sequence given them.

    Args:
        vocab_size: tokens in the vocabulary.
        n_ctx: tokens per sample (the decoder's stack gets ``n_ctx + 1`` positions with
            ``injection="token"``).
        encoder, decoder: ``{kind: mixer|llama, d_model, n_layers, ...}`` — Llama stacks take
            ``n_heads`` (and ``n_kv_heads``, ``d_ff``, ...), mixers ``kernel`` and ``heads``.
        compression: ``d_c = encoder d_model // compression`` numbers in the vector.
        injection: ``token``, ``embedding`` or ``additive`` (module docstring).
        vector_format: the format the vector is stored in, in training (straight-through
            rounding) and evaluation: ``fp32``, ``bf16``, ``fp16``, ``fp8_e4m3``, ``fp8_e5m2``,
            ``int8`` or ``int4`` (:data:`zoo.models.vector_formats.VECTOR_FORMATS`). Sets the vector's cost.
        vector_bits: charge this many bits per number instead of the format's own (e.g. the
            rate of an entropy coder); ``None``: the format's bits (and overhead).
        noise_q: half-width of the uniform training noise (0: none; the paper: 2⁻⁴).
        noise_at: ``after_down`` (noise on the vector) or ``before_down`` (on the encoder
            state before ``down``).
        pad_id: token id the encoder reads at unscored positions (masked out anyway).

    Attributes:
        side_bits_per_sequence: the bits that store the vector (``d_c × bits`` + the format's
            overhead), which the decoder gets for free per sequence (n_p × b_p in the paper);
            an honest BPB adds them. Follows :meth:`set_vector_format`.
        block_classes: the repeated blocks of both stacks (the units FSDP shards).
    """

    can_generate = False

    def __init__(
        self,
        vocab_size: int,
        n_ctx: int,
        encoder: Mapping[str, Any],
        decoder: Mapping[str, Any],
        compression: int = 4,
        injection: str = "token",
        vector_format: str = "fp32",
        vector_bits: float | None = None,
        noise_q: float = 0.0,
        noise_at: str = "after_down",
        pad_id: int = 1,
    ) -> None:
        super().__init__()
        if injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {', '.join(INJECTIONS)}; got {injection!r}")
        encoder, decoder = dict(encoder), dict(decoder)
        for name, spec in (("encoder", encoder), ("decoder", decoder)):
            if "d_model" not in spec:
                raise ValueError(f"{name} needs d_model (and kind, n_layers)")
        d_enc, d_dec = int(encoder["d_model"]), int(decoder["d_model"])
        if compression < 1 or d_enc % compression:
            raise ValueError(f"encoder d_model={d_enc} is not divisible by compression={compression}")
        if vector_bits is not None and vector_bits <= 0:
            raise ValueError(f"vector_bits must be positive, got {vector_bits}")
        if noise_at not in NOISE_PLACES:
            raise ValueError(f"noise_at must be one of {', '.join(NOISE_PLACES)}; got {noise_at!r}")
        self.n_ctx, self.injection, self.pad_id = n_ctx, injection, pad_id
        self.d_c = d_enc // compression
        self.side_numbers = self.d_c
        self.vector_bits = vector_bits
        self.set_vector_format(vector_format)
        self.noise_at = noise_at
        self.noise = UniformNoise(noise_q)

        self.enc_embed = nn.Embedding(vocab_size, d_enc)
        self.encoder = build_stack(encoder, n_ctx)
        self.down = nn.Linear(d_enc, self.d_c)

        self.dec_embed = nn.Embedding(vocab_size, d_dec)
        width = d_dec + self.d_c if injection == "embedding" else d_dec
        if injection in ("token", "additive"):
            self.up = nn.Linear(self.d_c, d_dec)
        self.decoder = build_stack(decoder, n_ctx + 1 if injection == "token" else n_ctx, width=width)
        self.head = OutputHead(width, vocab_size, bias=False)
        self.block_classes = tuple(dict.fromkeys((*self.encoder.block_classes, *self.decoder.block_classes)))
        # each embedding at the scale its stack expects (mixer N(0, 1), Llama N(0, 0.02))
        nn.init.normal_(self.enc_embed.weight, std=self.encoder.embedding_std)
        nn.init.normal_(self.dec_embed.weight, std=self.decoder.embedding_std)

    def set_vector_format(self, name: str) -> None:
        """Store the vector in format ``name`` from now on; its cost follows."""
        self.vector_format = get_vector_format(name)
        bits = self.vector_format.bits_per_vector(self.d_c)
        if self.vector_bits is not None:
            bits = self.d_c * self.vector_bits
        self.side_bits_per_sequence = float(bits)

    # ------------------------------------------------------------------ halves
    def encode(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """The compressed vector ``[B, d_c]``: encoder state at each row's last real position,
        projected by ``down`` (with the training noise) and stored in ``vector_format``.

        ``mask`` ``[B, T]`` marks real tokens (1) and pads (0); left-padded rows read the last
        position, right-padded rows (a packed split's final window) their last real one.
        """
        hidden = self.encoder(self.enc_embed(tokens), mask)
        if mask is None:
            last = torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
        else:
            last = last_valid(mask)
        state = hidden[torch.arange(tokens.shape[0], device=tokens.device), last]
        if self.noise_at == "before_down":
            vector = self.down(self.noise(state))
        else:
            vector = self.noise(self.down(state))
        return store_vector(vector, self.vector_format)

    def decode(self, input_ids: Tensor, attention_mask: Tensor | None, vector: Tensor) -> Tensor:
        """Next-token logits ``[B, T, V]`` of ``input_ids`` given the vector ``[B, d_c]``."""
        B, T = input_ids.shape
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
        x = self.dec_embed(input_ids)
        if self.injection == "embedding":
            x = torch.cat([x, vector[:, None, :].expand(B, T, self.d_c).to(x.dtype)], dim=-1)
            return self.head(self.decoder(x, mask))
        if self.injection == "additive":
            return self.head(self.decoder(x + self.up(vector)[:, None, :], mask))
        # token: insert the vector as one position right before each row's first real token
        first = first_valid(mask)[:, None]  # [B, 1]
        j = torch.arange(T + 1, device=input_ids.device)[None, :]  # decoder positions
        is_vector = j == first
        src = (j - (j > first).long()).clamp(max=T - 1)  # token each decoder position copies
        tokens = x.gather(1, src[:, :, None].expand(B, T + 1, x.shape[-1]))
        seq = torch.where(is_vector[:, :, None], self.up(vector)[:, None, :].to(x.dtype), tokens)
        seq_mask = torch.where(is_vector, torch.ones_like(src), mask.gather(1, src))
        hidden = self.decoder(seq, seq_mask)
        # input token t sits at decoder position t + 1 for t >= first; earlier ones are pads
        return self.head(hidden[:, 1:])

    @classmethod
    def summarize(cls, options: Mapping[str, Any]) -> str:
        enc, dec = options.get("encoder", {}), options.get("decoder", {})
        return (f"encoder-augmented causal decoder: {enc.get('kind')} encoder d={enc.get('d_model')} x "
                f"{enc.get('n_layers')}, {dec.get('kind')} decoder d={dec.get('d_model')} x {dec.get('n_layers')}, "
                f"vector by {options.get('injection', 'token')}")

    def forward_flops_per_token(self, n_ctx: int) -> float:
        """Encoder over ``n_ctx`` positions, decoder over its own (one more with ``token``
        injection), the head, and ``down`` / ``up`` once per sequence."""
        from zoo.models.flops import forward_flops, matmul_weights

        p_dec = n_ctx + 1 if self.injection == "token" else n_ctx
        fwd = forward_flops(self.encoder, n_ctx) + p_dec / n_ctx * forward_flops(self.decoder, p_dec)
        fwd += 2 * matmul_weights(self.head)
        fwd += 2 * (matmul_weights(self.down) + (matmul_weights(self.up) if hasattr(self, "up") else 0)) / n_ctx
        return fwd

    def hidden_layers(self) -> list[tuple[str, nn.Module]]:
        """The encoder's embedding and blocks, the vector (``down``: one row per sequence),
        then the decoder's embedding and blocks."""
        layers = super().hidden_layers()
        n_encoder = 1 + sum(name.startswith("encoder.") for name, _ in layers)
        return [*layers[:n_encoder], ("down", self.down), *layers[n_encoder:]]

    # ------------------------------------------------------------------ compression (zoo.codec)
    def side_information(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The stored vector ``[B, d_c]`` of each row (its encoder reads the row's labels)."""
        return self.vector(batch["input_ids"], batch.get("attention_mask"), batch["labels"])

    def side_format(self) -> Any:
        return self.vector_format

    def predict(self, input_ids: Tensor, side: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        """The decoder's logits given the stored vector ``side`` (no encoder run)."""
        if side is None:
            raise ValueError("the EACD's decoder needs its vector (side information)")
        return self.decode(input_ids, attention_mask, side)

    def incremental_decoder(self, side: Tensor | None, batch_size: int) -> Any:
        """Token-at-a-time decoding when the decoder is a Llama stack (a mixer: ``None``)."""
        from zoo.models.llama_stack import CachedDecoder, LlamaStack

        if side is None:
            raise ValueError("the EACD's decoder needs its vector (side information)")
        if not isinstance(self.decoder, LlamaStack):
            return None
        head = self.head
        if self.injection == "token":
            up = self.up(side)[:, None, :]
            return CachedDecoder(self.decoder, self.dec_embed, head, prefix=up)
        if self.injection == "additive":
            up = self.up(side)[:, None, :]
            return CachedDecoder(self.decoder, lambda ids: self.dec_embed(ids) + up, head)
        vec = side[:, None, :]
        return CachedDecoder(self.decoder, lambda ids: torch.cat([(x := self.dec_embed(ids)), vec.to(x.dtype)], -1),
                             head)

    # ------------------------------------------------------------------ model call
    def forward_batch(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The encoder reads the batch's ``labels`` (the tokens the decoder predicts)."""
        return self(batch["input_ids"], attention_mask=batch.get("attention_mask"), targets=batch["labels"])

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, targets: Tensor | None = None
    ) -> Tensor:
        """Logits ``[B, T, V]``. The encoder reads ``targets`` (the batch's labels: the tokens
        the decoder predicts; ``-100`` = nothing there) or, without them, ``input_ids``."""
        return self.decode(input_ids, attention_mask, self.vector(input_ids, attention_mask, targets))

    def vector(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, targets: Tensor | None = None
    ) -> Tensor:
        """The vector ``[B, d_c]`` :meth:`forward` gives the decoder for this batch."""
        if targets is not None:
            enc_mask = targets != IGNORE_INDEX
            return self.encode(targets.masked_fill(~enc_mask, self.pad_id), enc_mask)
        return self.encode(input_ids, attention_mask)
