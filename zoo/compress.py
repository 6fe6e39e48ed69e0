"""Compress a file with a zoo model: ``python -m zoo.compress MODEL IN OUT [key=value ...]``.

The model's next-token probabilities drive a range coder (constriction), so the file's size is
the model's bits per byte made physical: for an encoder-augmented decoder its vector is stored
in the file too. ``python -m zoo.decompress MODEL OUT BACK`` gives back every byte. Any bytes
compress: text, code, binary, invalid UTF-8, an empty file.

MODEL is a published name (``python -m zoo.models``), an exported model folder or a ``.ckpt``.
A file decodes only with the same model on the same numeric path: the same torch build, the
same kind of device and CPU kernels (it is refused otherwise; docs/compression.md).

Options:
  rows=64           segments (of n_ctx tokens) per batch; more is faster on big inputs
  path=auto         auto | cached (one position at a time, with a KV cache: Llama stacks) |
                    window (the whole window per position: any family; decoding is slower)
  segments=auto     windows (cut across documents, as a packed split is read) | documents (each
                    document, the parts between <|endoftext|>, afresh, as a left-padded split is
                    read; its length is coded); auto: as the model was trained
  weights=fp32      store/run the weights as fp32 | bf16 | fp16 | int8 | nf4 | fp4 (zoo.quantize)
  vector_format=F   an EACD's vector format: fp32 bf16 fp16 fp8_e4m3 fp8_e5m2 int8 (default: its own)
  device=cpu        where the model runs (the decoder must use the same kind)
  overwrite=false   replace an existing OUT
  json=PATH         also write the result as JSON (json=- prints JSON instead of the line)
"""

from __future__ import annotations

from collections.abc import Sequence

from zoo.cli import run_command
from zoo.codec.command import COMPRESS_OPTIONS, run_compress

#: the key=value options (MODEL IN OUT come first)
OPTIONS = COMPRESS_OPTIONS


def main(argv: Sequence[str] | None = None) -> None:
    run_command(run_compress, __doc__, argv, interrupt_note="nothing was written (OUT is written only when done)")


if __name__ == "__main__":
    main()
