"""zoo.codec: lossless compression with a model, checked with real published models, the real
range coder (constriction) and the real command line."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.codec import (
    CodecError,
    Container,
    ModelCodec,
    batches,
    compress,
    decompress,
    document_segments,
    window_segments,
)
from zoo.codec.tokens import TokenBytes
from zoo.data.tokenizer import load_tokenizer, train_bpe
from zoo.hub.manifest import checkpoints_dir
from zoo.models import build_model
from zoo.models.vector_formats import VECTOR_FORMATS

ROOT = Path(__file__).resolve().parents[1]
LLAMA = checkpoints_dir() / "llama-edu"
PROSE = (b"The water cycle moves water between the oceans, the air and the land. Heat from the sun "
         b"evaporates water, which rises, cools and condenses into clouds. ")

#: inputs every round trip must restore byte for byte
ODD_INPUTS = {
    "empty": b"",
    "one byte": b"a",
    "invalid utf-8": b"caf\xc3 \xff\xfe broken \xe2\x82 end\x80",
    "nul bytes": b"\x00\x00abc\x00",
    "special token text": b"<|endoftext|>x <|endoftext|> y <|pad|><|endoftext|>",
    "random bytes": random.Random(0).randbytes(3000),
    "python source": (ROOT / "zoo" / "codec" / "tokens.py").read_bytes()[:3000],
}


@pytest.fixture(scope="module")
def llama() -> ModelCodec:
    return ModelCodec.from_pretrained(LLAMA, rows=4, progress=False)


@pytest.mark.parametrize("name", list(ODD_INPUTS))
def test_tokens_spell_any_bytes(name) -> None:
    tb = TokenBytes(load_tokenizer(LLAMA))
    data = ODD_INPUTS[name]
    ids = tb.encode(data)
    assert tb.decode(ids) == data
    assert 1 not in ids  # never the pad token, even for its text
    assert (ids == 0).sum() == data.count(b"<|endoftext|>")  # end-of-text only for its text


def test_tokens_use_the_tokenizer_merges_on_text() -> None:
    tb = TokenBytes(load_tokenizer(LLAMA))
    assert len(tb.encode(PROSE)) < len(PROSE) / 2.5  # merges, not bytes


@pytest.mark.parametrize("fmt", list(VECTOR_FORMATS))
def test_vector_formats_pack_exactly(fmt) -> None:
    f = VECTOR_FORMATS[fmt]
    x = f.round_trip(torch.randn(7, 32) * 5)
    packed = f.pack(x)
    assert len(packed) == 7 * f.bytes_per_vector(32) == 7 * -(-f.bits_per_vector(32) // 8)
    assert torch.equal(f.unpack(packed, 32), x)


@pytest.mark.parametrize("d", [1, 5, 32])
def test_int4_vectors_pack_two_numbers_a_byte(d) -> None:
    """Odd lengths pad the last byte; the scale's two bytes come first."""
    f = VECTOR_FORMATS["int4"]
    x = f.round_trip(torch.randn(3, d))
    packed = f.pack(x)
    assert len(packed) == 3 * (2 + -(-d // 2))
    assert torch.equal(f.unpack(packed, d), x)


@pytest.mark.parametrize("segments", ["windows", "documents"])
def test_batches_cover_every_token_once(segments) -> None:
    rng = random.Random(0)
    for n_docs, rows in [(0, 4), (1, 4), (3, 4), (20, 3), (50, 64), (200, 7)]:
        lengths = [rng.choice([0, 1, 255, 256, 257, 700]) for _ in range(n_docs)]
        n = sum(lengths)
        segs = window_segments(n, 256) if segments == "windows" else document_segments(lengths, 256)
        seen = np.zeros(n, dtype=int)
        for batch in batches(segs, rows):
            assert len(batch) <= rows
            for s in batch:
                assert 1 <= s.length <= 256
                seen[s.start : s.start + s.length] += 1
        assert (seen == 1).all()
        starts = {int(b) for b in np.cumsum([0] + lengths[:-1])}
        if segments == "documents":  # every document starts afresh
            assert all(s.fresh for s in segs if s.start in starts)


@pytest.mark.parametrize("name", list(ODD_INPUTS))
def test_round_trip_odd_inputs(llama, name) -> None:
    data = ODD_INPUTS[name]
    blob = llama.compress(data)
    assert llama.decompress(blob) == data


def test_round_trip_prose_in_many_segments_and_lanes(llama) -> None:
    data = PROSE * 40  # ~7,000 bytes: several segments per lane, a short last one
    blob = llama.compress(data)
    assert len(blob) < len(data) / 2
    assert llama.decompress(blob) == data


SLOW = pytest.mark.slow


@pytest.mark.parametrize("name,path", [pytest.param("mixer-edu", "window", marks=SLOW),
                                       pytest.param("eacd-mixer-edu", "window", marks=SLOW),
                                       ("eacd-transformer-edu", "cached"), ("moe-edu", "cached"),
                                       pytest.param("moe-edu", "window", marks=SLOW),
                                       pytest.param("llama-edu", "window", marks=SLOW)])
def test_every_family_round_trips(name, path) -> None:
    """Both numeric paths decode exactly; the window path relies on causality making a
    position's logits bit-identical whatever the later positions hold."""
    codec = ModelCodec.from_pretrained(checkpoints_dir() / name, rows=2, path=path, progress=False)
    assert codec.resolved_path() == path
    data = PROSE[:150] + b"\xff" + PROSE[:150]
    blob = codec.compress(data)
    assert Container.from_bytes(blob).header["numerics"]["path"] == path
    assert codec.decompress(blob) == data


def test_eacd_file_stores_its_vector_in_its_format() -> None:
    name = checkpoints_dir() / "eacd-transformer-edu"
    data = b"<|endoftext|>".join([PROSE * 2] * 5)  # five documents, each under n_ctx tokens
    sizes = {}
    for fmt in ("fp32", "int8"):
        blob = compress(name, data, vector_format=fmt, rows=2, progress=False)
        box = Container.from_bytes(blob)
        n_seg = box.header["documents"]["count"]  # the EACD was trained left-padded: one segment a document
        assert box.header["side"] == {"format": fmt, "bytes_per_segment": VECTOR_FORMATS[fmt].bytes_per_vector(32)}
        assert len(box.side) == n_seg * VECTOR_FORMATS[fmt].bytes_per_vector(32)
        assert decompress(name, blob, progress=False) == data  # the format is read from the file
        sizes[fmt] = len(blob)
    assert sizes["int8"] < sizes["fp32"]


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_quantized_weights_round_trip_and_are_recorded(weights) -> None:
    """bf16 casts, int8 is bitsandbytes' real 8-bit Linear (on the CPU)."""
    blob = compress(LLAMA, PROSE, weights=weights, rows=2, progress=False)
    assert Container.from_bytes(blob).header["model"]["weights"] == weights
    assert decompress(LLAMA, blob, progress=False) == PROSE
    with pytest.raises(CodecError, match=f"weights={weights}"):
        ModelCodec.from_pretrained(LLAMA, progress=False).decompress(blob)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-edu", "eacd-transformer-edu"])
def test_file_size_is_the_evaluated_bits_per_byte(name, cache_dir) -> None:
    """The file holds what zoo.evaluate's BPB promises, within 0.5% plus the fixed header:
    the documents zoo.evaluate scores (its first two batches), joined by <|endoftext|>, with
    the EACD's vector included."""
    from zoo.data.tokenizer import token_bytes
    from zoo.evaluate import evaluate, prepare

    folder = checkpoints_dir() / name
    row = evaluate(folder, split="val", max_batches=2, accelerator="cpu", compressors=())
    _, dm = prepare(folder, "val")
    table = token_bytes(dm.tokenizer)
    table[0] = b"<|endoftext|>"  # a packed split's document ends are labels too
    rows = []
    for i, batch in enumerate(dm.eval_dataloader("val")):
        if i == 2:
            break
        rows += [b"".join(table[t] for t in labels if t >= 0) for labels in batch["labels"].tolist()]
    # packed: the windows are consecutive pieces of one stream; left-padded: one document a row
    text = (b"<|endoftext|>" if dm.layout == "left_padded" else b"").join(rows)
    n_bytes = len(text) - 13 * text.count(b"<|endoftext|>")
    assert n_bytes == row["bytes"]
    # 8 lanes: each lane's first segment starts from <|endoftext|> (about 10 bits a lane)
    box = Container.from_bytes(ModelCodec.from_pretrained(folder, rows=8, progress=False).compress(text))
    coded = 8 * (len(box.to_bytes()) - box.overhead_bytes)
    promised = row["bpb"] * n_bytes
    assert abs(coded - promised) <= 0.005 * promised, (coded, promised)


def test_another_model_or_tokenizer_is_refused(llama) -> None:
    blob = llama.compress(PROSE)
    with pytest.raises(CodecError, match="another model"):
        ModelCodec.from_pretrained(checkpoints_dir() / "mixer-edu", progress=False).decompress(blob)
    # the same weights with another tokenizer of the same size
    other = train_bpe([PROSE.decode() * 3, "other words entirely"], vocab_size=300)
    mine = train_bpe([PROSE.decode() * 3], vocab_size=300)
    model = build_model({"family": "llama", "d_model": 16, "n_layers": 1, "n_heads": 2}, len(mine), 32)
    a = ModelCodec(model, mine, 32, progress=False)
    b = ModelCodec(model, other, 32, progress=False)
    assert a.tokenizer_fingerprint != b.tokenizer_fingerprint
    with pytest.raises(CodecError, match="another tokenizer"):
        b.decompress(a.compress(PROSE))


def test_damaged_files_are_refused(llama) -> None:
    blob = bytearray(llama.compress(PROSE))
    for damaged in (blob[:-1], blob[:20], bytes(blob[:100]) + bytes([blob[100] ^ 1]) + bytes(blob[101:]),
                    b"not a zoo file at all", b""):
        with pytest.raises(CodecError):
            llama.decompress(bytes(damaged))


def test_another_numeric_path_is_refused(llama) -> None:
    box = Container.from_bytes(llama.compress(PROSE))
    box.header["numerics"]["torch"] = "1.0.0"
    with pytest.raises(CodecError, match="same numeric path"):
        llama.decompress(box.to_bytes())


def test_a_decoder_that_computes_differently_fails_the_crc_not_silently(llama) -> None:
    """If the probabilities differ anyway (here: other weights under the same identity), the
    output is refused by the CRC, never returned."""
    blob = llama.compress(PROSE * 3)
    other = ModelCodec.from_pretrained(LLAMA, rows=4, progress=False)
    with torch.no_grad():
        other.model.lm_head.weight.mul_(1.001)
    other.model_sha256 = llama.model_sha256
    with pytest.raises(CodecError, match="CRC"):
        other.decompress(blob)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_command_line_round_trip(tmp_path) -> None:
    """The real commands, each in a fresh interpreter."""
    src = tmp_path / "in.bin"
    src.write_bytes(ODD_INPUTS["invalid utf-8"] + PROSE)
    z, back = tmp_path / "in.zoo", tmp_path / "back.bin"
    r = _cli("zoo.compress", str(LLAMA), str(src), str(z), "rows=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bits per original byte" in r.stdout
    r = _cli("zoo.decompress", str(LLAMA), str(z), str(back), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()


def test_command_line_refusals_are_one_line_and_write_nothing(llama, tmp_path, capsys) -> None:
    from zoo.compress import main as compress_main
    from zoo.decompress import main as decompress_main

    src = tmp_path / "in.bin"
    src.write_bytes(PROSE)
    z = tmp_path / "in.zoo"
    z.write_bytes(llama.compress(PROSE)[:-3])  # truncated
    keep = tmp_path / "keep.bin"
    keep.write_bytes(b"precious")
    refusals = [
        (decompress_main, [str(LLAMA), str(z), str(tmp_path / "x")], "corrupted"),
        (decompress_main, [str(checkpoints_dir() / "mixer-edu"), str(z), str(tmp_path / "x")], "corrupted"),
        (compress_main, [str(LLAMA), str(src), str(keep)], "exists"),
        (compress_main, [str(LLAMA), str(src), str(src), "overwrite=true"], "same file"),
        (compress_main, ["no-such-model", str(src), str(tmp_path / "y")], "not a published model"),
        (compress_main, [str(LLAMA), str(src), str(tmp_path / "y"), "rows=0"], "rows must be an integer >= 1"),
        (compress_main, [str(LLAMA), str(src), str(tmp_path / "y"), "path=fast"], "path"),
        (compress_main, [str(LLAMA), str(src), str(tmp_path / "y"), "weights=int3"], "weights"),
        (compress_main, [str(LLAMA), str(src)], "give MODEL IN OUT"),
        (compress_main, [str(LLAMA), str(tmp_path / "none"), str(tmp_path / "y")], "is not a file"),
    ]
    for main, args, message in refusals:
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
    assert keep.read_bytes() == b"precious" and src.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not list(tmp_path.glob(".*.part"))


def test_help(capsys) -> None:
    from zoo.compress import main as compress_main
    from zoo.decompress import main as decompress_main

    for main in (compress_main, decompress_main):
        main(["--help"])
        assert "MODEL IN OUT" in capsys.readouterr().out


@pytest.mark.slow
def test_a_training_checkpoint_and_its_exported_folder_code_the_same(tmp_path, cache_dir) -> None:
    """MODEL may be a .ckpt from zoo.fit: its weights' identity is the exported folder's, so
    a file written with one decodes with the other."""
    from zoo.recipes import compose
    from zoo.training import train

    cfg = compose("quickstart", [
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "data.n_ctx=32", "data.batch_size=4",
        "data.tokenizer.vocab_size=300", "data.tokenizer.train_bytes=200000", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
        "optim.warmup_steps=1", "logger=none"])
    run = tmp_path / "run"
    train(cfg, run)
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    data = ODD_INPUTS["invalid utf-8"] + PROSE
    blob = compress(ckpt, data, rows=2, progress=False)
    assert decompress(run / "model", blob, progress=False) == data
    assert decompress(ckpt, blob, progress=False) == data
