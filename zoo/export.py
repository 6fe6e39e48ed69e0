"""Export a Llama-based zoo model for the wider ecosystem: ``python -m zoo.export NAME out=FOLDER``.

Writes a plain Hugging Face folder (``config.json``, ``model.safetensors``,
``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``) that

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(FOLDER)
    tokenizer = AutoTokenizer.from_pretrained(FOLDER)

load with no zoo code, giving the zoo model's logits (checked on every export by loading it
back, and tested in a separate interpreter). NAME is a published model or
any model folder. Families without a ``transformers`` equivalent (the masked mixer, the EACD)
are refused with a clear message. The folder is written beside FOLDER and renamed into place
only once checked, so a failed export leaves FOLDER as it was.

Options:
  out=FOLDER        where to write (default: exported/NAME); not inside checkpoints/, not the source
  dtype=float32     float32 | bfloat16 (the dtype of the exported weights)
  overwrite=false   true: replace a FOLDER that exists and is not empty (refused otherwise)

The work is in :mod:`zoo.hub.export`; this module only reads the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

OPTIONS = ("out", "dtype", "overwrite")


def _main(argv: list[str]) -> None:
    import torch

    from zoo.cli import key_values
    from zoo.errors import ZooError, unknown
    from zoo.hub.export import export

    name, rest = argv[0], argv[1:]
    if "=" in name:
        raise ZooError("usage: python -m zoo.export NAME [out=FOLDER] [dtype=float32|bfloat16] [overwrite=true]")
    args = key_values(rest, OPTIONS)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    dtype = args.get("dtype", "float32")
    if dtype not in dtypes:
        raise unknown("dtype", dtype, dtypes)
    overwrite = args.get("overwrite", "false").lower()
    if overwrite not in ("true", "false", "1", "0", "yes", "no"):
        raise ZooError(f"overwrite={args['overwrite']}: use true or false")
    out = export(name, args.get("out") or Path("exported") / Path(name).name, dtype=dtypes[dtype],
                 overwrite=overwrite in ("true", "1", "yes"))
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out}: {files}")
    print(f"load it with: AutoModelForCausalLM.from_pretrained('{out}'), AutoTokenizer.from_pretrained('{out}')")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m zoo.export``: parse the arguments, run :func:`zoo.hub.export.export`."""
    from zoo.cli import run_command

    run_command(_main, __doc__, argv)


if __name__ == "__main__":
    main()
