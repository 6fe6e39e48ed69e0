"""Model cards and the zoo table.

A published folder's ``card.md`` is YAML front matter (the card data: what was trained, how,
and every number measured; machine-readable) followed by prose rendered from it
(:func:`render_card`). The zoo table (:func:`zoo_table`) has one row per card; it is
generated into ``docs/zoo.md`` (:func:`write_zoo_page`), and the README keeps a static copy
between its zoo-table markers that a test compares with the generated one.

Nothing here branches on a family's name: what a card says about a family comes from its
class (:class:`zoo.models.LanguageModel`: ``card_note``, ``can_generate``,
``transformers_model``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from zoo.compression import COMPRESSOR_LABELS
from zoo.errors import ZooError
from zoo.hub.checksums import CHECKSUMS
from zoo.hub.manifest import MANIFEST, checkpoints_dir
from zoo.models import LanguageModel, family_class

CARD = "card.md"
ZOO_PAGE = "zoo.md"
ZOO_PAGE_HEADER = ("<!-- generated from checkpoints/*/card.md by `python -m zoo.publish table` (and on every "
                   "publish); do not edit -->")
README_START = "<!-- zoo-table:start (a copy of the table in docs/zoo.md; tests/test_zoo_table.py checks it) -->"
README_END = "<!-- zoo-table:end -->"


def exports_to_transformers(family: type[LanguageModel]) -> bool:
    """Whether the family's class has a ``transformers`` model inside (it overrides
    :meth:`LanguageModel.transformers_model`), so ``python -m zoo.export`` applies."""
    return family.transformers_model is not LanguageModel.transformers_model


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render_card(card: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    """``card.md``: YAML front matter (machine-readable, the zoo table is made from it) + prose.

    ``card`` is the card data :func:`zoo.hub.publish.publish` measured, ``spec`` the folder's
    ``config.yaml``. What the prose says about the family (its note on reading the numbers,
    whether it generates or exports) comes from the family's class (:mod:`zoo.models.base`).
    """
    front = yaml.safe_dump(dict(card), sort_keys=False, allow_unicode=True, width=1000)
    name, chk, pc = card["name"], card["check"], card["precision_check"]
    lines = [f"---\n{front}---", "", f"# {name}", "", f"{card['description']}.", ""]
    lines += [
        "| | |", "|---|---|",
        f"| family | `{card['family']}` |",
        f"| parameters | {card['parameters']:,} |",
        f"| weights | `model.safetensors`, {card['weights']}, {card['file_bytes'] / 1e6:.2f} MB |",
        f"| tokenizer | `tokenizer.json`, byte-level BPE, {card['vocab_size']:,} tokens |",
        f"| context | {card['n_ctx']} tokens, layout `{card['layout']}` |",
        f"| training data | {card['data']} (train split) |",
        f"| trained | {card['trained'] or 'unknown'}"
        + (f", {card['training_seconds']:.0f} s wall time" if card.get("training_seconds") else "") + " |",
        f"| machine | {card['machine']} |",
        f"| published | {card['published']} |",
        "",
        "## How it was trained",
        "",
        "```bash",
        card["command"],
        "```",
        "",
    ]
    if card.get("command_note"):
        lines += [card["command_note"], ""]
    run = spec.get("run") or {}
    opt, tr, data = run.get("optim", {}), run.get("trainer", {}), run.get("data", {})
    if run:
        lines += [
            f"{tr.get('max_steps')} steps of {data.get('batch_size')} x {data.get('n_ctx')} tokens, "
            f"AdamW lr {opt.get('lr')} ({opt.get('schedule')}, {opt.get('warmup_steps')} warmup steps, "
            f"weight decay {opt.get('weight_decay')}), precision {tr.get('precision')}, seed {run.get('seed')}; "
            "the weights are the checkpoint with the best val BPB. The full resolved config is under `run:` in "
            "`config.yaml`.",
            "",
        ]
    lines += ["## Metrics (measured by `zoo.evaluate` on the published weights)", ""]
    has_free = any("bpb_free_vector" in r for r in card["eval"].values())
    compressors = [c for c in COMPRESSOR_LABELS if any(c in r for r in card["eval"].values())]
    head = "| data / split | BPB |" + (" BPB, vector free |" if has_free else "") + \
        " CE nats/token | H bits/token | tokens | bytes |" + "".join(f" {COMPRESSOR_LABELS[c]} |" for c in compressors)
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for data, r in card["eval"].items():
        lines.append(
            f"| {data} / val | {_fmt(r['bpb'])} |" + (f" {_fmt(r.get('bpb_free_vector'))} |" if has_free else "")
            + f" {_fmt(r.get('ce'))} | {_fmt(r.get('entropy'), 3)} | {_fmt(r.get('tokens'))} | {_fmt(r.get('bytes'))} |"
            + "".join(f" {_fmt(r.get(c))} |" for c in compressors)
        )
    lines += [
        "",
        "Every split is scored with this model's own tokenizer; the compressors see the same text.",
    ]
    if card.get("layout") == "left_padded":
        lines[-1] = (
            "Every split is scored with this model's own tokenizer. Layout `left_padded`: one document per "
            f"window, so a document longer than {card['n_ctx']} tokens is scored on its first {card['n_ctx']} "
            "tokens only (the `bytes` column); the compressors compress exactly that scored text."
        )
    family = family_class(str(card["family"]))
    if family.card_note:
        lines.append(family.card_note)
    lines += [
        "",
        f"**Storage precision.** Val BPB on {pc['data']} with the float32 weights as trained: {_fmt(pc['fp32_bpb'], 5)}"
        + (f"; with the weights rounded to bfloat16: {_fmt(pc['bf16_bpb'], 5)} (difference {pc['delta']:+.1e}, "
           f"tolerance {pc['tolerance']})" if "bf16_bpb" in pc else "")
        + f". Stored as **{card['weights']}**"
        + (f" ({pc['reason']})" if pc.get("reason") else "") + "; loading gives a float32 model.",
        "",
        f"**Reproduction check** (`tests/test_checkpoints.py`): val BPB on {chk['data']} over the first "
        f"{chk['max_batches']} evaluation batches is {chk['bpb']:.6f}; a fresh evaluation must agree within "
        f"{chk['tolerance']}.",
        "",
        "## Use",
        "",
        "```python",
        "import zoo",
        f'model, tokenizer = zoo.load("{name}")   # plain nn.Module (float32, eval mode) + tokenizer',
        'ids = tokenizer("The history of", return_tensors="pt").input_ids',
        "logits = model(ids)",
        "```",
        "",
        "```bash",
        f"python -m zoo.evaluate checkpoint=checkpoints/{name} data=edu split=val",
    ]
    if family.can_generate:
        lines.append(f"python -m zoo.generate {name} prompt='The history of' max_new_tokens=40")
    if exports_to_transformers(family):
        lines.append(f"python -m zoo.export {name} out=exported/{name}   # plain transformers folder")
    recipe = re.search(r"recipe=(\S+)", card["command"])
    lines += [
        f"python -m zoo.fit recipe={recipe[1] if recipe else 'NAME'} init_from={name} "
        f"data.tokenizer.path=checkpoints/{name}/tokenizer.json   # fine-tune (Lightning)",
        "```",
        "",
        f"Files and their sha256 are listed in `checkpoints/{MANIFEST}` and in `{CHECKSUMS}`; both are checked on load.",
        "",
    ]
    return "\n".join(lines)


def read_card(folder: Path) -> dict[str, Any]:
    """The YAML front matter of ``folder/card.md``."""
    text = (folder / CARD).read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    if not m:
        raise ZooError(f"{folder / CARD} has no YAML front matter")
    return yaml.safe_load(m[1])


# --------------------------------------------------------------------------- the zoo table
def zoo_table(root: Path | None = None, link_prefix: str = "checkpoints/") -> str:
    """The model-zoo table, one row per ``root/*/card.md`` (default: :func:`checkpoints_dir`).

    ``link_prefix`` is the path from the page that shows the table to the checkpoints folder
    (``checkpoints/`` from README.md, ``../checkpoints/`` from docs/zoo.md). Footnotes come
    from the cards: a family's ``card_note`` when its rows have a vector-free BPB, and the
    left-padded layout's truncation when a listed model uses it.
    """
    root = root or checkpoints_dir()
    cards = [read_card(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / CARD).is_file()] \
        if root.is_dir() else []
    head = ("| model | family | parameters | trained on | val BPB edu | xz -9 edu | PPMd edu | val BPB math "
            "| xz -9 math | PPMd math | weights | size |")
    lines = [head, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    starred: list[str] = []  # families with a vector-free BPB in the table

    def cell(card: Mapping[str, Any], row: Mapping[str, Any] | None, key: str) -> str:
        if not row or key not in row:
            return "—"
        if key == "bpb" and "bpb_free_vector" in row:
            if card["family"] not in starred:
                starred.append(str(card["family"]))
            return f"{row['bpb']:.4f} ({row['bpb_free_vector']:.4f})*"
        return f"{row[key]:.4f}"

    for c in cards:
        ev = c.get("eval", {})
        lines.append(
            f"| [`{c['name']}`]({link_prefix}{c['name']}/card.md) | {c['family']} | {c['parameters']:,} | {c['data']} "
            f"| {cell(c, ev.get('edu'), 'bpb')} | {cell(c, ev.get('edu'), 'xz')} | {cell(c, ev.get('edu'), 'ppmd')} "
            f"| {cell(c, ev.get('math'), 'bpb')} | {cell(c, ev.get('math'), 'xz')} | {cell(c, ev.get('math'), 'ppmd')} "
            f"| {c['weights']} | {c['file_bytes'] / 1e6:.1f} MB |"
        )
    if not cards:
        lines.append("| (none published yet) | | | | | | | | | | | |")
    if starred:
        notes = ["\\* in parentheses: BPB without the side information the model gets for free per sequence "
                 "(`bpb_free_vector`)."]
        notes += [f"`{fam}`: {note}" for fam in starred if (note := family_class(fam).card_note)]
        padded = sorted({int(c["n_ctx"]) for c in cards if c.get("layout") == "left_padded"})
        if padded:
            window = "/".join(str(n) for n in padded)
            notes.append(f"Models with layout `left_padded` score one document per {window}-token window, so on "
                         f"`math`, whose solutions are longer, they score only each document's first {window} "
                         "tokens; their `xz -9` and PPMd columns compress the same scored text (the cards give the bytes "
                         "scored).")
        lines += ["", " ".join(notes)]
    return "\n".join(lines)


def zoo_page_path(root: Path | None = None) -> Path:
    """Where the generated zoo page lives: ``docs/zoo.md`` beside the checkpoints folder."""
    return (root or checkpoints_dir()).absolute().parent / "docs" / ZOO_PAGE


def zoo_page(root: Path | None = None) -> str:
    """The text of the generated ``docs/zoo.md``: a header saying how it is made, and the table."""
    root = root or checkpoints_dir()
    return (f"{ZOO_PAGE_HEADER}\n\n# Model zoo\n\n"
            f"Every published model of `{root.name}/`, from its `card.md`. Val BPB is measured by `zoo.evaluate` on "
            "the val split of `edu` and of `math`, each with the model's own tokenizer, beside `xz -9` and PPMd "
            "(order 8) on the same text.\n\n" + zoo_table(root, link_prefix=f"../{root.name}/") + "\n")


def write_zoo_page(root: Path | None = None) -> Path:
    """(Re)write ``docs/zoo.md`` from the cards (only when its text changes); returns its path."""
    path = zoo_page_path(root)
    text = zoo_page(root)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def readme_table(text: str) -> str | None:
    """The table between the zoo-table markers of a README's ``text`` (``None``: no markers).

    The README keeps a static copy of the table; ``tests/test_zoo_table.py`` checks it equals
    :func:`zoo_table`, so it cannot drift, and no code rewrites the README."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return None
    return text[start + len(README_START): end].strip()
