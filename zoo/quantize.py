"""Storage formats for weights and for the EACD's compressed vector, and what they cost.

Two independent axes, combined in an evaluation *mode* such as ``int8+vec:fp8_e4m3``:

* **weights** (:data:`WEIGHT_FORMATS`): ``fp32`` (as trained), ``bf16`` / ``fp16`` (every
  floating tensor rounded to that format; arithmetic stays float32), and bitsandbytes'
  ``int8`` (``Linear8bitLt``, LLM.int8 row-wise absmax, outlier threshold 0), ``nf4`` and
  ``fp4`` (``Linear4bit``, blocks of 64 with double-quantised scales). bitsandbytes formats
  replace every ``nn.Linear`` (on CPU, 4-bit only those with 32·m outputs and 64·n inputs);
  embeddings, norms and the masked mixer's ``Conv1d`` stay float32
  (:func:`quantize_weights` reports the share of parameters it quantised).
* **the vector** (:data:`VECTOR_FORMATS`): the EACD's ``d_c`` numbers rounded through
  ``fp32``, ``bf16``, ``fp16``, ``fp8_e4m3``, ``fp8_e5m2``, ``int8`` or ``int4``
  (symmetric absmax per vector with a float16 scale). Float casts saturate at the format's
  largest finite value (as a stored vector would) instead of overflowing to inf/NaN. The vector's honest cost
  follows the format: ``d_c × bits + overhead`` bits per sequence
  (:meth:`zoo.models.vector_formats.VectorFormat.bits_per_vector`; ``int8`` and ``int4`` pay 16 bits for their scale).

The vector formats themselves live with the model that uses them
(:mod:`zoo.models.vector_formats`); this module applies them in evaluation modes.

Modes: ``W`` (weights only), ``vec:V`` (vector only) or ``W+vec:V``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from zoo.errors import ZooError, unknown
from zoo.metrics import SIDE_INFO_FREE_BPB
from zoo.models.base import OutputHead, count_parameters
from zoo.models.vector_formats import VECTOR_FORMATS, get_vector_format

WEIGHT_FORMATS = ("fp32", "bf16", "fp16", "int8", "nf4", "fp4")
BNB_FORMATS = ("int8", "nf4", "fp4")


# ---------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """One evaluation setting: a weight format and (for models with a vector) a vector format."""

    weights: str = "fp32"
    vector: str | None = None  # None: the model's own (as trained)

    @property
    def name(self) -> str:
        parts = [self.weights] if self.weights != "fp32" or self.vector is None else []
        return "+".join(parts + ([f"vec:{self.vector}"] if self.vector else []))


def parse_mode(text: str) -> Mode:
    """``"int8"``, ``"vec:fp8_e4m3"`` or ``"nf4+vec:bf16"`` -> :class:`Mode`."""
    weights, vector = "fp32", None
    for part in text.strip().split("+"):
        if part.startswith("vec:"):
            vector = get_vector_format(part[4:]).name
        elif part in WEIGHT_FORMATS:
            weights = part
        else:
            allowed = list(WEIGHT_FORMATS) + [f"vec:{v}" for v in VECTOR_FORMATS]
            raise unknown("quantize mode", part, allowed)
    return Mode(weights, vector)


def default_modes(has_vector: bool) -> list[Mode]:
    """``quantize=all``: every weight format, then (EACD) every vector format and three mixes."""
    modes = [Mode(w) for w in WEIGHT_FORMATS]
    if has_vector:
        modes += [Mode("fp32", v) for v in VECTOR_FORMATS if v != "fp32"]
        modes += [Mode("int8", "int8"), Mode("int8", "fp8_e4m3"), Mode("nf4", "fp8_e4m3")]
    return modes


def parse_modes(text: str, has_vector: bool) -> list[Mode]:
    """A comma-separated list of modes, or ``all``; the fp32 reference always comes first."""
    modes = default_modes(has_vector) if text.strip() == "all" else [parse_mode(t) for t in text.split(",") if t]
    if not has_vector and any(m.vector for m in modes):
        raise ZooError("vec:... modes apply to models with a compressed vector (family eacd); "
                       f"this model has none. Weight modes: {', '.join(WEIGHT_FORMATS)}")
    reference = Mode()
    return [reference] + [m for m in modes if m != reference]


# ---------------------------------------------------------------------------- weights
def _bnb_linear(linear: nn.Linear, fmt: str) -> nn.Module:
    import bitsandbytes as bnb

    # its CPU backend warns on every call that inputs are cast to float16 (LLM.int8 does that
    # by design) and that an optional kernels package is missing: not the user's concern
    for name in ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(name).setLevel(logging.ERROR)

    bias = linear.bias is not None
    if fmt == "int8":
        q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias,
                                has_fp16_weights=False, threshold=0.0)
        q.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    else:
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, quant_type=fmt,
                              compute_dtype=linear.weight.dtype)
        q.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type=fmt)
    if bias:
        q.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return q.to(linear.weight.device)  # moving the parameters is what quantises them


def _fits(linear: nn.Linear, fmt: str) -> bool:
    """bitsandbytes' CPU 4-bit kernel packs output rows in blocks of 32 and each row's inputs
    in quantisation blocks of 64: other shapes (an EACD's narrow ``down``, its ``up``) stay
    float32 there and count as not quantised."""
    if fmt in ("nf4", "fp4") and linear.weight.device.type == "cpu":
        return linear.out_features % 32 == 0 and linear.in_features % 64 == 0
    return True


def quantize_weights(model: nn.Module, fmt: str) -> tuple[nn.Module, float]:
    """A copy of ``model`` with its weights stored in ``fmt``, and the share of parameters
    that changed format (1.0 for ``bf16``/``fp16``; the ``nn.Linear`` share for bitsandbytes).
    The original is left untouched."""
    if fmt not in WEIGHT_FORMATS:
        raise unknown("weight format", fmt, WEIGHT_FORMATS)
    model = copy.deepcopy(model).eval()
    total = count_parameters(model)
    if fmt == "fp32":
        return model, 0.0
    if fmt in ("bf16", "fp16"):
        dtype = torch.bfloat16 if fmt == "bf16" else torch.float16
        with torch.no_grad():
            for p in model.parameters():
                if p.is_floating_point():
                    p.copy_(p.to(dtype).to(p.dtype))
        return model, 1.0
    linears = [(parent, name, child) for parent in model.modules()
               for name, child in parent.named_children() if type(child) in (nn.Linear, OutputHead) and _fits(child, fmt)]
    done = 0
    for parent, name, child in linears:
        done += child.weight.numel()
        setattr(parent, name, _bnb_linear(child, fmt))
    return model, done / max(total, 1)


def stored_bytes(model: nn.Module, float_bytes: int = 4) -> int:
    """Bytes of the model's state as stored: unique tensors of its ``state_dict``, floating
    ones at ``float_bytes`` each (2 for ``bf16``/``fp16`` weights), the rest at their own
    size (bitsandbytes' packed weights and scales)."""
    seen: set[int] = set()
    total = 0
    for t in model.state_dict().values():
        if not torch.is_tensor(t) or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        size = float_bytes if t.is_floating_point() and t.element_size() >= 2 else t.element_size()
        total += t.numel() * size
    return total


def weight_bytes_per_float(fmt: str) -> int:
    """Bytes per remaining floating-point number when the weights are stored in ``fmt``."""
    return 2 if fmt in ("bf16", "fp16") else 4


def modes_table(rows: Iterable[dict]) -> str:
    """A plain-text table of :func:`zoo.evaluate.evaluate_quantized` rows."""
    rows = list(rows)
    has_vec = any(SIDE_INFO_FREE_BPB in r for r in rows)
    head = f"{'mode':24s} {'weights':>8s} {'vector':>9s} {'size (bytes)':>13s} {'quantised':>9s} {'bpb':>8s} {'Δ bpb':>8s}"
    if has_vec:
        head += f" {'vector bits':>11s} {'bpb free vec':>12s} {'Δ free':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['mode']:24s} {r['weights']:>8s} {r['vector'] or '-':>9s} {r['size_bytes']:>13,d} "
                f"{r['quantized_share']:>9.0%} {r['bpb']:>8.4f} {r['delta_bpb']:>+8.4f}")
        if has_vec:
            line += f" {r['vector_bits']:>11,d} {r[SIDE_INFO_FREE_BPB]:>12.4f} {r['delta_' + SIDE_INFO_FREE_BPB]:>+8.4f}"
        lines.append(line)
    return "\n".join(lines)
