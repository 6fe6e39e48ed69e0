"""Export a Llama-based zoo model for the wider ecosystem: ``python -m zoo.export NAME out=FOLDER``.

Writes a plain Hugging Face folder (``config.json``, ``model.safetensors``,
``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``) that

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(FOLDER)
    tokenizer = AutoTokenizer.from_pretrained(FOLDER)

load with no zoo code, giving the zoo model's logits (checked on every export by loading it
back, and tested in a separate interpreter). NAME is a published model or
any model folder. Families without a ``transformers`` equivalent (the masked mixer, the EACD)
are refused with a clear message.

Options:
  out=FOLDER        where to write (default: exported/NAME)
  dtype=float32     float32 | bfloat16 (the dtype of the exported weights)
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.cli import key_values
from zoo.errors import ZooError, unknown

OPTIONS = ("out", "dtype")


def hf_model(model: nn.Module) -> Any:
    """The ``transformers`` model inside a zoo model (``.hf``), or a clear error."""
    from transformers import PreTrainedModel

    hf = getattr(model, "hf", None)
    if not isinstance(hf, PreTrainedModel):
        raise ZooError(
            f"{type(model).__name__} has no transformers equivalent to export to; only Llama-based "
            "causal models (family llama) export with save_pretrained. Use zoo.load() for the others"
        )
    return hf


def _verify(hf: Any, out: Path) -> None:
    """Load ``out`` back with plain ``AutoModelForCausalLM`` and compare logits with ``hf``: a
    model whose layers the stock architecture lacks (a mixture of experts, an unmerged adapter)
    would load with missing weights and silently differ, so it is refused instead."""
    import shutil

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref = copy.deepcopy(hf).float().eval()
    n = min(16, int(hf.config.max_position_embeddings))
    ids = torch.randint(2, int(hf.config.vocab_size), (1, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (loaded(ids).logits - ref(ids).logits).abs().max().item()
    if not diff <= 1e-4:
        shutil.rmtree(out, ignore_errors=True)
        raise ZooError(
            f"the export does not reproduce the model (max logit difference {diff:.3g} after loading with "
            f"AutoModelForCausalLM): it has layers the stock {type(hf).__name__} lacks (a mixture of experts, "
            "an unmerged adapter?); nothing was written"
        )


def export(name_or_path: str | Path | nn.Module, out: str | Path, tokenizer: Any = None,
           dtype: torch.dtype = torch.float32) -> Path:
    """Write ``name_or_path`` (a published name, a model folder, or a loaded model with
    ``tokenizer``) as a plain ``transformers`` folder at ``out``; returns ``out``."""
    if isinstance(name_or_path, nn.Module):
        model = name_or_path
        if tokenizer is None:
            raise ZooError("export(model, out, tokenizer=...): a loaded model needs its tokenizer")
        source = type(model).__name__
    else:
        from zoo.registry import load

        model, tokenizer = load(name_or_path)
        source = str(name_or_path)
    hf = copy.deepcopy(hf_model(model)).to(dtype).eval()
    hf.config.use_cache = True  # the zoo trains without a KV cache; generation wants one
    gc = hf.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = int(hf.config.max_position_embeddings)
    tok.save_pretrained(out)
    _verify(hf, out)
    (out / "README.md").write_text(
        f"# {Path(str(source)).name}\n\nExported from the zoo model `{source}` with `python -m zoo.export`.\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained(\"{out.name}\")\n"
        f"tokenizer = AutoTokenizer.from_pretrained(\"{out.name}\")\n```\n\n"
        "Documents were separated by `<|endoftext|>` in training: start a prompt with it for a new document.\n"
    )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    try:
        name, rest = argv[0], argv[1:]
        if "=" in name:
            raise ZooError("usage: python -m zoo.export NAME [out=FOLDER] [dtype=float32|bfloat16]")
        args = key_values(rest, OPTIONS)
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        dtype = args.get("dtype", "float32")
        if dtype not in dtypes:
            raise unknown("dtype", dtype, dtypes)
        out = export(name, args.get("out") or Path("exported") / Path(name).name, dtype=dtypes[dtype])
        files = ", ".join(sorted(p.name for p in out.iterdir()))
        print(f"wrote {out}: {files}")
        print(f"load it with: AutoModelForCausalLM.from_pretrained('{out}'), AutoTokenizer.from_pretrained('{out}')")
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
