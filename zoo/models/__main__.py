"""``python -m zoo.models [PATTERN]``: the table of registered models.

Published checkpoints (trained weights, loadable with ``zoo.load(NAME)``) first, then the
model configs (architectures, built with ``zoo.create_model(NAME, vocab_size=..., n_ctx=...)``;
their parameter counts are at the default 8k vocabulary).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Print the table (the work is :func:`zoo.hub.listing.table`)."""
    from zoo.cli import run_command
    from zoo.hub.listing import table

    run_command(lambda args: print(table(args[0] if args else "*")), __doc__, argv, help_when_empty=False)


if __name__ == "__main__":
    main()
