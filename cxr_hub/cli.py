"""Command-line entry point: ``python -m cxr_hub <command>`` (or ``cxr-hub <command>``).

Each command lives in its own module and registers itself through an ``add_parser(subparsers)`` function, so the
CLI grows without one file knowing every command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """Builds the top-level parser with every subcommand."""
    from . import biomarker_analysis, classification, commands, evaluation, hub

    parser = argparse.ArgumentParser(prog="python -m cxr_hub", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(sub)
    evaluation.add_parser(sub)
    classification.add_parser(sub)
    hub.add_parser(sub)
    biomarker_analysis.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code (0 ok, 2 bad input or usage)."""
    from .io import CXRInputError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CXRInputError, FileNotFoundError) as exc:
        # expected user errors get one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
