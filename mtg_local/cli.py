"""The ``mtg`` command line.

Each sub-command lives in its own module under ``mtg_local.commands`` and
exposes ``register(subparsers)``; this file only assembles them and turns
user errors into one-line messages (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engines.errors import UserError

# Modules that add sub-commands, in the order they appear in ``mtg --help``.
COMMAND_MODULES = [
    "mtg_local.commands.generate",
    "mtg_local.commands.eval",
    "mtg_local.commands.baseline",
    "mtg_local.commands.train",
    "mtg_local.commands.grid",
    "mtg_local.commands.slurm",
    "mtg_local.commands.report",
    "mtg_local.commands.prepare",
    "mtg_local.commands.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtg",
        description="metaTextGrad on local open-weight models (vLLM), with the paper's tasks and baselines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"mtg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mtg {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
