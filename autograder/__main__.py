"""Course commands: ``python -m autograder build [--check] [--force] [CHAPTER ...]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="render solution cells from solutions/ and regenerate chapters/")
    build.add_argument("chapters", nargs="*", help="chapter ids such as 01_tokenizer (default: all)")
    build.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything would change")
    build.add_argument("--force", action="store_true", help="replace learner notebooks that have work in them (backed up)")

    sub.add_parser("checkpoints", help="list every checkpoint id")

    args = parser.parse_args(argv)
    if args.command == "build":
        from .notebooks import build as run_build

        drift = run_build(check=args.check, chapters_=args.chapters or None, force=args.force)
        for line in drift:
            print(("drift: " if args.check else "updated: ") + line)
        if args.check and drift:
            print("Run `python -m autograder build` and commit the result.", file=sys.stderr)
            return 1
        if not drift:
            print("notebooks are up to date")
        return 0
    if args.command == "checkpoints":
        from . import checkpoints

        print("\n".join(checkpoints()))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
