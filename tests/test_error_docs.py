"""docs/errors.md is the table of the tests' error cases: what a user did, the command, and
the one line the tests require them to see. It is generated from the tables the tests run,
so it cannot drift from them; after changing a table, regenerate it:

    python tests/test_error_docs.py
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "errors.md"

#: (test file, table name, command of its rows when the rows do not name one)
TABLES = [
    ("test_errors.py", "BAD_INPUT", "zoo.fit recipe=quickstart"),
    ("test_fit_reliability.py", "RESUME_REFUSED", "zoo.fit resume=..."),
    ("test_scoring.py", "BAD_SCORING", None),
    ("test_hub_reliability.py", "HUB_BAD_INPUT", None),
]


def _table(file: str, name: str) -> list[tuple]:
    spec = importlib.util.spec_from_file_location(f"_doc_{Path(file).stem}", ROOT / "tests" / file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "tests"))
    return list(getattr(module, name))


def _show(text: str) -> str:
    text = text.replace(str(ROOT) + "/", "").replace("{tmp}", "DIR")
    return text.replace("|", "\\|")


def render() -> str:
    lines = [
        "# Errors: what a user sees",
        "",
        "Generated from the tables the tests run (`python tests/test_error_docs.py`; do not edit).",
        "Every row is a test: the command exits with status 2 and prints one line containing the",
        "message shown, with no traceback. `tests/test_options.py` adds a bad value of every",
        "option of every command on top of these.",
        "",
        "| mistake | command | message (the part the test requires) |",
        "|---|---|---|",
    ]
    for file, name, table_command in TABLES:
        for row in _table(file, name):
            command = table_command
            if command is None:
                what, module, args, message = row
                cmd = f"python -m {module} {' '.join(map(str, args))}"
            else:
                what, *middle, message = row
                extra = [a for part in middle if isinstance(part, list) for a in part]
                if any(str(a).startswith("recipe=") for a in extra):
                    command = command.split()[0]  # the row names its own recipe
                cmd = f"python -m {command} {' '.join(map(str, extra))}".rstrip()
            lines.append(f"| {_show(what)} | `{_show(cmd)}` | `{_show(message)}` |")
    return "\n".join(lines) + "\n"


def test_docs_errors_table_is_the_tests_table() -> None:
    assert DOC.read_text() == render(), "docs/errors.md is stale: run python tests/test_error_docs.py"


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC}")
