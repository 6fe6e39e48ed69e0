"""``python -m zoo.models [PATTERN]``: the table of registered models.

Published checkpoints (trained weights, loadable with ``zoo.load(NAME)``) first, then the
model configs (architectures, built with ``zoo.create_model(NAME, vocab_size=..., n_ctx=...)``;
their parameter counts are at the default 8k vocabulary).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Print the table (the work is :func:`zoo.hub.listing.table`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    from zoo.errors import ZooError
    from zoo.hub.listing import table

    try:
        print(table(argv[0] if argv else "*"))
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
