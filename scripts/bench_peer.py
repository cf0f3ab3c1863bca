"""Thin entry point: ``python scripts/bench_peer.py [ARGS]`` = ``mtg bench peer [ARGS]``.

Example (README "Compared with TextGrad on a vLLM server"; quiet machine, one engine at a time):
    python scripts/bench_peer.py --questions 16 --seeds 2 --steps 1 --max-tokens 128
"""

import sys

from mtg_local.cli import main

if __name__ == "__main__":  # vLLM spawns its engine core: the guard is required
    sys.exit(main(["bench", "peer", *sys.argv[1:]]))
