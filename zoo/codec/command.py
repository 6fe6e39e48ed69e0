"""What ``python -m zoo.compress`` and ``python -m zoo.decompress`` share: arguments, safe
writing, the summary line."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zoo.cli import choice, emit, flag, json_target, key_values, number
from zoo.codec.codec import DEFAULT_ROWS, PATHS, SEGMENTATIONS, ModelCodec
from zoo.codec.container import CodecError, Container
from zoo.errors import ZooError
from zoo.models.vector_formats import VECTOR_FORMATS
from zoo.quantize import WEIGHT_FORMATS

COMPRESS_OPTIONS = ("rows", "path", "segments", "weights", "vector_format", "device", "overwrite", "json")
DECOMPRESS_OPTIONS = ("device", "overwrite", "json")


def split_arguments(argv: Sequence[str], allowed: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``MODEL IN OUT`` (positional, in that order) and the ``key=value`` options."""
    positional = [a for a in argv if "=" not in a]
    if len(positional) != 3:
        raise ZooError(f"give MODEL IN OUT (a published name, folder or .ckpt; the input file; the output file); "
                       f"got {len(positional)} positional argument(s): {' '.join(positional) or 'none'}")
    return positional, key_values([a for a in argv if "=" in a], allowed)


def check_files(src: str, dst: str, overwrite: bool) -> tuple[Path, Path]:
    """The input must be a readable file; the output must not be it, nor (unless
    ``overwrite``) an existing file, nor a folder; its folder must exist."""
    s, d = Path(src).expanduser(), Path(dst).expanduser()
    if not s.is_file():
        raise ZooError(f"input {src} is not a file")
    if d.is_dir():
        raise ZooError(f"output {dst} is a folder; give a file path")
    if d.exists() and s.resolve() == d.resolve():
        raise ZooError(f"input and output are the same file ({src}); write the output elsewhere")
    if d.exists() and not overwrite:
        raise ZooError(f"output {dst} exists; give overwrite=true to replace it, or another path")
    if not d.parent.is_dir():
        raise ZooError(f"no folder {d.parent} to write {d.name} in")
    if not os.access(d.parent, os.W_OK):
        raise ZooError(f"the folder {d.parent} is not writable")
    return s, d


def device_option(args: dict[str, str]) -> str:
    """``device=`` (default ``cpu``) as torch reads it: ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    value = args.get("device", "cpu")
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise ZooError(f"device must be a torch device such as cpu, cuda, cuda:1 or mps; got {value!r}") from None
    return value


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place: an
    interrupted run leaves no partial output (and an older file, if any, untouched)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def summary(what: str, src: Path, dst: Path, n_in: int, n_out: int, seconds: float, model: str,
            original: int, path: str) -> tuple[dict[str, Any], str]:
    """The result as JSON data and as one line."""
    bpb = 8 * (n_out if what == "compress" else n_in) / original if original else 0.0
    result = {"command": what, "model": model, "input": str(src), "output": str(dst), "input_bytes": n_in,
              "output_bytes": n_out, "bits_per_byte": bpb, "seconds": seconds, "path": path,
              "kb_per_s": original / 1000 / seconds if seconds > 0 else None}
    rate = f"{original / 1000 / seconds:,.1f} KB/s" if seconds > 0 else "-"
    line = (f"{src} -> {dst}: {n_in:,} -> {n_out:,} bytes ({bpb:.4f} bits per original byte) in "
            f"{seconds:.1f} s ({rate}) with {model}, {path} path")
    return result, line


def run_compress(argv: list[str]) -> None:
    (model, src, dst), args = split_arguments(argv, COMPRESS_OPTIONS)
    rows = number(args, "rows", DEFAULT_ROWS, minimum=1)
    path = choice(args, "path", "auto", PATHS)
    segments = choice(args, "segments", "auto", ("auto", *SEGMENTATIONS))
    weights = choice(args, "weights", "fp32", WEIGHT_FORMATS)
    vector_format = choice(args, "vector_format", "fp32", tuple(VECTOR_FORMATS)) if "vector_format" in args else None
    device = device_option(args)
    overwrite = flag(args, "overwrite")
    target = json_target(args)
    s, d = check_files(src, dst, overwrite)
    codec = ModelCodec.from_pretrained(model, rows=rows, path=path, weights=weights,
                                       segments=None if segments == "auto" else segments,
                                       vector_format=vector_format, device=device)
    data = s.read_bytes()
    start = time.perf_counter()
    blob = codec.compress(data)
    seconds = time.perf_counter() - start
    write_atomically(d, blob)
    emit(*summary("compress", s, d, len(data), len(blob), seconds, model, len(data), codec.resolved_path()), target)


def run_decompress(argv: list[str]) -> None:
    (model, src, dst), args = split_arguments(argv, DECOMPRESS_OPTIONS)
    device = device_option(args)
    overwrite = flag(args, "overwrite")
    target = json_target(args)
    s, d = check_files(src, dst, overwrite)
    blob = s.read_bytes()
    header = Container.from_bytes(blob, str(src)).header
    side = header.get("side") or {}
    try:
        codec = ModelCodec.from_pretrained(model, weights=header["model"]["weights"],
                                           vector_format=side.get("format"), device=device)
    except CodecError as e:
        raise CodecError(f"{src}: {e}") from None
    start = time.perf_counter()
    data = codec.decompress(blob, str(src))
    seconds = time.perf_counter() - start
    write_atomically(d, data)
    emit(*summary("decompress", s, d, len(blob), len(data), seconds, model, len(data), header["numerics"]["path"]),
         target)
