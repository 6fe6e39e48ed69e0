"""Decompress a file from ``zoo.compress``: ``python -m zoo.decompress MODEL IN OUT [key=value ...]``.

MODEL must be the model that wrote IN (its weights' sha256 and its tokenizer are checked);
the weight mode, vector format, batching and numeric path are read from the file. A file
from another model, a corrupted file or a machine on another numeric path is refused in one
line, and OUT is written only when every byte has passed the file's CRC-32.

Options:
  device=cpu        where the model runs (the kind the file was written on)
  overwrite=false   replace an existing OUT
  json=PATH         also write the result as JSON (json=- prints JSON instead of the line)
"""

from __future__ import annotations

from collections.abc import Sequence

from zoo.cli import run_command
from zoo.codec.command import DECOMPRESS_OPTIONS, run_decompress

#: the key=value options (MODEL IN OUT come first)
OPTIONS = DECOMPRESS_OPTIONS


def main(argv: Sequence[str] | None = None) -> None:
    run_command(run_decompress, __doc__, argv, interrupt_note="nothing was written (OUT is written only when done)")


if __name__ == "__main__":
    main()
