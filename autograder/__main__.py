"""Course commands::

    python -m autograder build [--check] [--force] [CHAPTER ...]   notebooks from solutions/
    python -m autograder fixtures [--check]                        visible checks as data
    python -m autograder release OUTDIR [--force]                  the course without answers
    python -m autograder grade SUBMISSION.ipynb ... [--json F] [--csv F] [--gradescope F]
    python -m autograder progress                                  your checkpoints so far
    python -m autograder checkpoints                               every checkpoint id

Each command lives in its own module, which provides ``add_arguments(parser)`` and
``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "build": ("notebooks", "render solution cells from solutions/ and regenerate chapters/"),
    "fixtures": ("fixtures", "store the visible checkpoints' cases and expected outputs as data"),
    "release": ("release", "write the course for students: no solutions/, checks from fixtures"),
    "grade": ("grading", "grade submissions, each checkpoint in a sandboxed process"),
    "progress": ("progress", "show the checkpoints you have passed, chapter by chapter"),
    "checkpoints": ("core", "list every checkpoint id"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autograder", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(f"autograder.{module}").add_arguments(command)
    args = parser.parse_args(argv)
    return importlib.import_module(f"autograder.{COMMANDS[args.command][0]}").main(args)


if __name__ == "__main__":
    sys.exit(main())
