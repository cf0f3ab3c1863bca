"""``mtg bench grid``: one small grid run three ways -- array mode, one engine sequential, ``mtg grid``.

* **array**: one ``mtg eval``/``mtg train`` process per cell, one after another (each starts
  its own engine: today's ``mtg slurm submit`` array, serialized);
* **sequential**: ``mtg grid --max-concurrent 1``: one process, one engine, cells one after another;
* **grid**: ``mtg grid --max-concurrent N``: one process, one engine, cells concurrent.

Every variant is a subprocess writing to its own fresh runs root (no cache hits between
variants). Prints ONE JSON line: per variant wall time, generated tokens/s (completion
tokens of all cells' results / wall), mean running batch (vLLM scheduler stats via the
async engine's stat logger; ``null`` for array mode, whose ``vllm.LLM`` has no such hook --
``mean_batch_submitted`` = requests per engine call is given for every variant), engine
starts (counted from the runs' own ``engines`` events: distinct engine instances that served
the cells, ``mtg_local.runs.engine_events``), the dtype the engines ran in (from the same
events), peak RSS of the process tree; and ``speedup_vs_array`` (wall array / wall grid),
``speedup_vs_sequential`` (wall sequential / wall grid). ``--json-out PATH`` also writes the
record to PATH (the committed record beside the documented figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from engines.errors import UserError
from mtg_local.bench.memory import GiB, PeakRSS
from mtg_local.runs.engine_events import engine_starts
from mtg_local.slurm.grid import load_grid
from mtg_local.tasks import task_names

VARIANTS = ("array", "sequential", "grid")
METHODS = ("zero_shot_cot", "solution_opt", "learned_loss", "reptile")


def bench_task() -> str:
    """The offline generated word-sorting task (named synthetic_word_sorting once tasks are renamed)."""
    return "synthetic_word_sorting" if "synthetic_word_sorting" in task_names() else "word_sorting"


def add_grid_bench(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("grid", help="a small grid: array mode vs one engine sequential vs mtg grid (concurrent)")
    p.add_argument("--engine", default="vllm:bundled", metavar="SPEC", help="engine spec (default: %(default)s)")
    p.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE", help="backend option, repeatable")
    p.add_argument("--seeds", default="0,1", help="seeds of every cell (default: %(default)s)")
    p.add_argument("--limit", type=int, default=2, help="questions per split (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=64, help="token cap of every call (default: %(default)s)")
    p.add_argument("--max-concurrent", type=int, default=8, help="grid variant's concurrency (default: %(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="subset to run (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR", help="where the variants' runs go (default: a temp dir)")
    p.add_argument("--json-out", default=None, metavar="PATH",
                   help="also write the JSON record to PATH (e.g. docs/bench/grid-DATE.json)")
    p.set_defaults(func=run_grid_bench)


def bench_grid_file(root: Path, args: argparse.Namespace) -> Path:
    raw = {
        "name": "bench-grid",
        "runs_root": str(root),
        "tasks": [bench_task()],
        "methods": list(METHODS),
        "engines": [args.engine],
        "engine_opts": list(args.engine_opt),
        "seeds": [int(s) for s in str(args.seeds).split(",") if s.strip()],
        # One protocol for every cell (train-only fields included): a --protocol file.
        "args": {"all": ["--protocol", str(root / "protocol.json")]},
    }
    path = root / "grid.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    (root / "protocol.json").write_text(json.dumps({
        "steps": 1, "limit": args.limit, "max_tokens": args.max_tokens, "optimizer_max_tokens": args.max_tokens,
        "meta_max_tokens": args.max_tokens, "outer_steps": 1, "minibatch": 2}))
    path.write_text(yaml.safe_dump(raw))
    return path


def _mtg(argv: list[str]) -> subprocess.CompletedProcess:
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-m", "mtg_local.cli", *argv], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"mtg {' '.join(argv[:3])}... exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def _cell_usage(run_dirs: list[Path]) -> dict[str, int]:
    tot = {"requests": 0, "calls": 0, "completion_tokens": 0, "cache_hits": 0}
    for d in run_dirs:
        usage = json.loads((d / "results.json").read_text())["engine_usage"]
        for k in tot:
            tot[k] += int(usage.get(k, 0))
    return tot


def run_variant(name: str, grid_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Runs the grid one way in subprocesses; returns that variant's figures."""
    grid = load_grid(grid_file)
    runs = grid.expand()
    running_batch = None
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        if name == "array":
            for run in runs:
                _mtg([*run.argv, *(["--no-progress"] if run.argv[0] != "baseline" else [])])
        else:
            conc = 1 if name == "sequential" else args.max_concurrent
            _mtg(["grid", str(grid_file), "--max-concurrent", str(conc)])
            summary = json.loads((grid.runs_root / grid.name / f"grid-{runs[0].engine.label}.json").read_text())
            running_batch = (summary["engine"].get("running_batch") or {}).get("mean_running")
        wall = time.perf_counter() - t0
    usage = _cell_usage([r.run_dir for r in runs])
    engines = engine_starts(r.run_dir for r in runs)
    return {
        "wall_s": round(wall, 3),
        "gen_tok_per_s": round(usage["completion_tokens"] / wall, 3) if wall > 0 else None,
        "completion_tokens": usage["completion_tokens"],
        "requests": usage["requests"] - usage["cache_hits"],
        "mean_running_batch": running_batch,
        "mean_batch_submitted": round((usage["requests"] - usage["cache_hits"]) / usage["calls"], 3)
        if usage["calls"] else None,
        "engine_starts": engines["starts"],
        "dtype": ",".join(engines["dtypes"]) or None,
        "peak_rss_gib": round(rss.peak_bytes / GiB, 3),
        "cells": len(runs),
    }


def grid_bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Runs the chosen variants under ``root`` (one fresh sub-folder each); returns the JSON record."""
    wanted = [v.strip() for v in str(args.variants).split(",") if v.strip()]
    bad = [v for v in wanted if v not in VARIANTS]
    if bad or not wanted:
        raise UserError(f"--variants must be a comma list of {', '.join(VARIANTS)}, got {args.variants!r}")
    if args.max_concurrent < 1 or args.limit < 1 or args.max_tokens < 1:
        raise UserError("--max-concurrent, --limit and --max-tokens must be >= 1")
    out: dict[str, Any] = {"bench": "grid", "engine": args.engine, "engine_opts": list(args.engine_opt),
                           "task": bench_task(), "methods": list(METHODS), "seeds": args.seeds, "limit": args.limit,
                           "max_tokens": args.max_tokens, "max_concurrent": args.max_concurrent, "variants": {}}
    for v in VARIANTS:
        if v in wanted:
            out["variants"][v] = run_variant(v, bench_grid_file(root / v, args), args)
    walls = {k: v["wall_s"] for k, v in out["variants"].items()}
    out["speedup_vs_array"] = round(walls["array"] / walls["grid"], 3) if {"array", "grid"} <= set(walls) else None
    out["speedup_vs_sequential"] = (round(walls["sequential"] / walls["grid"], 3)
                                    if {"sequential", "grid"} <= set(walls) else None)
    return out


def run_grid_bench(args: argparse.Namespace) -> int:
    if args.out:
        root = Path(args.out)
        if root.exists() and any(root.iterdir()):
            raise UserError(f"--out {root} is not empty: the variants need fresh run dirs (no cache hits)")
        record = grid_bench(args, root)
    else:
        with tempfile.TemporaryDirectory(prefix="mtg-bench-grid-") as tmp:
            record = grid_bench(args, Path(tmp))
    print(json.dumps(record))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
    return 0
