"""Thin entry point: ``python scripts/bench_inner_loop.py [ARGS]`` = ``mtg bench inner-loop [ARGS]``.

Example (the table in docs/performance.md):
    python scripts/bench_inner_loop.py --engine vllm:bundled --questions 32 --seeds 3 --steps 2
"""

import sys

from mtg_local.cli import main

if __name__ == "__main__":  # vLLM spawns its engine core: the guard is required
    sys.exit(main(["bench", "inner-loop", *sys.argv[1:]]))
