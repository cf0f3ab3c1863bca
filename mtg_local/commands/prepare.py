"""``mtg prepare-model``: converts the bundled SmolLM2 GGUF to an HF folder once; prints its path."""

from __future__ import annotations

import argparse

from engines.bundled import bundled_model_dir, is_prepared, prepare_bundled_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare-model",
        help="convert the bundled SmolLM2-135M-Instruct (GGUF) to an HF folder once and print its path",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if a finished conversion exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = bundled_model_dir()
    if not args.force and is_prepared(target):
        print(target)
        return 0
    print(prepare_bundled_model(target, force=args.force))
    return 0
