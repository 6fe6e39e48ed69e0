"""Publish a trained model into the zoo: ``python -m zoo.publish run=RUN_DIR name=NAME``.

Copies a run's exported model into ``checkpoints/NAME/``, stores the weights in bfloat16
when that keeps val BPB within ``bf16_tolerance`` (0.002) of float32 (else float32),
evaluates it with :func:`zoo.evaluate.evaluate` on the val split of each data source in
``eval`` (with the model's own tokenizer, beside the five classical compressors on the same
text), writes ``card.md`` (how it was trained: the exact ``python -m zoo.fit`` command, data,
parameters, the metrics, dates, machine) and ``metrics.json``, rewrites the folder's
``sha256.json``, records every file's sha256 in ``checkpoints/manifest.json`` and regenerates
the model-zoo table in ``docs/zoo.md``. Works for every family (nothing here is Llama-specific).
The README keeps a static copy of that table, which no command rewrites: when it differs,
publish says so, and ``tests/test_zoo_table.py`` fails until it is pasted in.

Usage (all ``key=value``):
  python -m zoo.publish run=runs/quickstart/<time> name=llama-edu
  python -m zoo.publish name=llama-edu          # (re)publish checkpoints/llama-edu in place
  python -m zoo.publish table                   # only regenerate docs/zoo.md
  python -m zoo.publish verify                  # check every published folder against the manifest
  python -m zoo.publish recard [NAME ...]       # re-render cards from metrics.json (no re-evaluation)
  python -m zoo.publish recompress [NAME ...]   # score again, add the compressors a card lacks

Options:
  run=PATH           a run folder (runs/NAME/<time>: its model/ is published) or a model folder;
                     omitted: the weights already in checkpoints/NAME
  name=NAME          the published name (lowercase letters, digits, '-')
  precision=auto     auto | bf16 | fp32 (auto: bf16 when |BPB(bf16) - BPB(fp32)| <= bf16_tolerance);
                     both are measured and the card gives both numbers
  precision_reason=TEXT  why, when precision= overrides auto (printed in the card)
  bf16_tolerance=0.002
  eval=edu,math      data groups (recipes/data) whose val split is scored
  check_batches=2    the quick check recorded for tests: this many val batches of the model's own data
  description=TEXT   one line for the card and the tables
  table=true         regenerate docs/zoo.md afterwards

The work is in :mod:`zoo.hub.publish`; this module only reads the command line.
"""

from __future__ import annotations

from collections.abc import Sequence

OPTIONS = ("run", "name", "precision", "precision_reason", "bf16_tolerance", "eval", "check_batches", "description",
           "table")


def _main(argv: list[str]) -> None:
    from zoo.cli import flag, key_values, number
    from zoo.errors import ZooError, unknown
    from zoo.hub.manifest import read_manifest
    from zoo.hub.publish import (
        BF16_TOLERANCE,
        PRECISIONS,
        publish,
        recard,
        recompress,
        update_zoo_page,
        verify_all,
    )
    from zoo.recipes import list_group

    if argv == ["table"]:
        update_zoo_page()
        return
    if argv and argv[0] in ("recard", "recompress"):
        redo = recard if argv[0] == "recard" else recompress
        names = argv[1:] or list(read_manifest()["models"])
        for name in names:
            redo(name, table=name == names[-1])
        return
    if argv == ["verify"]:
        raise SystemExit(1 if verify_all() else 0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ZooError(f"arguments are key=value (or one of: table, verify, recard, recompress); got {bad[0]!r}")
    args = key_values(argv, OPTIONS, empty_ok=("description", "precision_reason"))
    if "name" not in args:
        raise ZooError("name=NAME is required (the published name, e.g. name=mixer-edu)")
    # every option is checked before the run folder is read or anything is written
    groups = list_group("data")
    eval_data = [d for d in args.get("eval", "edu,math").split(",") if d]
    for d in eval_data:
        if d not in groups:
            raise unknown("eval data group", d, groups)
    options = dict(
        precision=args.get("precision", "auto"), table=flag(args, "table", True),
        bf16_tolerance=number(args, "bf16_tolerance", BF16_TOLERANCE, float, minimum=0),
        check_batches=number(args, "check_batches", 2, minimum=1),
    )
    if options["precision"] not in PRECISIONS:
        raise unknown("precision", options["precision"], PRECISIONS)
    publish(args["name"], run=args.get("run"), eval_data=eval_data, description=args.get("description", ""),
            precision_reason=args.get("precision_reason", ""), **options)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m zoo.publish``: parse the arguments, run :mod:`zoo.hub.publish`."""
    from zoo.cli import run_command

    run_command(_main, __doc__, argv)


if __name__ == "__main__":
    main()
