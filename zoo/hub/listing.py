"""The text table of registered models that ``python -m zoo.models [PATTERN]`` prints.

Published checkpoints (trained weights, loadable with ``zoo.load(NAME)``) first, then the
model configs (architectures, built with ``zoo.create_model(NAME, vocab_size=..., n_ctx=...)``;
their parameter counts are at the default 8k vocabulary).
"""

from __future__ import annotations

from zoo.hub.registry import architecture_parameters, list_models, registry
from zoo.schema import DEFAULT_N_CTX, DEFAULT_VOCAB_SIZE


def table(pattern: str = "*") -> str:
    """The table of the registered names matching ``pattern`` (published checkpoints first, then
    model configs), with the notes that say how to read it."""
    reg = registry()
    names = list_models(pattern)
    rows = [("name", "kind", "family", "parameters", "training data", "val BPB edu", "val BPB math", "file size")]
    for pretrained in (True, False):
        for name in names:
            info = reg[name]
            if info.pretrained != pretrained:
                continue
            if info.error:  # a folder that cannot be read: listed (the registry warned why)
                rows.append((name, "broken", "?", "-", "-", "-", "-", "-"))
                continue
            m = info.metrics
            params = info.parameters or architecture_parameters(info)
            size = info.file_bytes

            def bpb(data: str, m=m) -> str:
                v = m.get(f"{data}_val_bpb")
                if v is None:
                    return "-"
                free = m.get(f"{data}_val_bpb_free_vector")
                return f"{v:.4f}" + (f" ({free:.4f})" if free is not None else "")

            rows.append((
                name, "pretrained" if pretrained else "config", info.family, f"{params:,}",
                info.data or "-", bpb("edu"), bpb("math"), f"{size / 1e6:.1f} MB" if size else "-",
            ))
    if len(rows) == 1:
        return f"no registered model matches {pattern!r}"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i in (0, 1, 2, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [
        "",
        "pretrained: zoo.load(NAME) -> (model, tokenizer); config: zoo.create_model(NAME, vocab_size=..., n_ctx=...) "
        f"(parameters at vocab {DEFAULT_VOCAB_SIZE:,}, n_ctx {DEFAULT_N_CTX}).",
        "EACD BPB includes the encoder vector's cost; in parentheses without it. Cards: checkpoints/NAME/card.md",
    ]
    return "\n".join(lines + notes)
