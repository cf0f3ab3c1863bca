"""Runs the prompt-optimization baselines end to end on one engine and prints a summary.

COPRO, MIPROv2 and GEPA (through the real DSPy library) and TextGrad prompt
optimization, at their smallest settings by default (GEPA: the seed's validation
and one reflection), on word sorting, one
shared engine (``vllm:bundled`` unless ``--engine`` says otherwise). Too slow
for every CI run on 2 CPUs; this is the full real-model check::

    python scripts/run_dspy_baselines.py --out /tmp/baselines
    python scripts/run_dspy_baselines.py --methods copro --limit 10 --breadth 4
    python scripts/run_dspy_baselines.py --methods gepa --max-metric-calls 20

Each method writes its own run dir under ``--out`` (results.json etc.).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from engines import Engine, create_engine
from mtg_local.commands.baseline import BaselineConfig, run_baseline
from engines.registry import parse_engine_opts
from mtg_local.commands.eval import parse_seeds
from mtg_local.protocol import DEFAULT_PROTOCOL


def _configs(args: argparse.Namespace) -> dict[str, object]:
    from mtg_local.baselines.copro import CoproConfig
    from mtg_local.baselines.gepa import GepaConfig
    from mtg_local.baselines.miprov2 import MiproConfig
    from mtg_local.baselines.prompt_optimization import PromptOptConfig

    common = dict(max_tokens=args.max_tokens, prompt_max_tokens=args.max_tokens, num_threads=args.num_threads)
    return {
        "copro": CoproConfig(breadth=args.breadth, depth=args.depth, **common),
        "miprov2": MiproConfig(auto=None, num_candidates=2, num_trials=args.num_trials, max_bootstrapped_demos=1,
                               max_labeled_demos=1, data_aware_proposer=False, **common),
        "gepa": GepaConfig(auto=None, max_metric_calls=args.max_metric_calls or args.limit + 1, **common),
        # its sampling and token caps are the protocol's (main() sets --max-tokens there)
        "prompt_opt": PromptOptConfig(batch_size=3, epochs=1, max_steps=args.max_steps),
    }


def main(argv: list[str] | None = None, *, engine: Engine | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="vllm:bundled")
    p.add_argument("--engine-opt", action="append", default=[])
    p.add_argument("--methods", default="copro,miprov2,gepa,prompt_opt")
    p.add_argument("--task", default="synthetic_word_sorting")
    p.add_argument("--limit", type=int, default=4, help="questions per split (default: %(default)s)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--num-threads", type=int, default=16)
    p.add_argument("--breadth", type=int, default=2)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--num-trials", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=1)
    p.add_argument("--max-metric-calls", type=int, default=None,
                   help="GEPA budget (default: --limit + 1: the seed's validation, then one reflection)")
    p.add_argument("--out", default="runs/baselines")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # DSPy's notice about BaseLM.forward

    t0 = time.perf_counter()
    own = engine is None
    engine = engine or create_engine(args.engine, **parse_engine_opts(args.engine_opt))
    print(f"engine {engine.spec or args.engine} ready in {time.perf_counter() - t0:.1f}s", flush=True)
    configs = _configs(args)
    rows = []
    try:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            protocol = DEFAULT_PROTOCOL.replace(seeds=parse_seeds(args.seeds), limit=args.limit,
                                                max_tokens=args.max_tokens, optimizer_max_tokens=args.max_tokens)
            cfg = BaselineConfig(out=str(Path(args.out) / method), method=method, method_config=configs[method],
                                 task=args.task, engine=args.engine, protocol=protocol, no_cache=True)
            t = time.perf_counter()
            res = run_baseline(cfg, engine=engine)
            row = {
                "method": method,
                "wall_s": round(time.perf_counter() - t, 1),
                "test_accuracy": round(res["test_accuracy"]["mean"], 3),
                "engine_calls": res["engine_usage"]["calls"],
                "requests": res["engine_usage"]["requests"],
                "coalescer": res.get("coalescer"),
                "usage_by_role": res.get("usage_by_role"),
                "learned_system_prompt": (res["learned"]["system_prompt"] or "")[:160],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if own:
            engine.close()
    return rows


if __name__ == "__main__":
    main()
