"""Makes docs/example_report from real runs on the bundled model: a small study with real numbers.

The bundled 135M model answers none of the paper's tasks, so the study runs on tasks it partly
solves: the built-in generated ``arithmetic`` task and the user-task example
``docs/examples/tasks/sums.yaml`` (a task file, as a user writes one). On ``arithmetic``:
zero-shot CoT, TextGrad solution optimization, metaTextGrad's learned loss and GEPA (DSPy); on
``sums``: zero-shot CoT and solution optimization, and the loss prompt learned on ``arithmetic``
applied with ``mtg eval --from-run`` (the transfer table). The runs are ordinary ``mtg`` command
lines (``--print`` shows them as shell commands; each can be run on its own with ``mtg``); this
script runs them one after another in ONE process on ONE engine (an engine start costs ~40 s
here), then ``mtg report``. Every run uses one protocol file (docs/example_report/protocol.json:
8 questions per split, 3 seeds, T = 1, 128-token caps, and README command 1's meta settings), so
they share one table. On shared machines hold the real-engine lock::

    flock /tmp/mtg-real-engine.lock python scripts/make_example_report.py --runs /tmp/mtg-example-runs
    python scripts/make_example_report.py --runs /tmp/mtg-example-runs --print   # the commands only

Complete runs are skipped, so a rerun after a stop only does what is missing. The numbers are a
135M model's on generated and toy tasks: they show what the report shows, not how the methods
compare on the paper's tasks.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "example_report"
#: task label -> the task (a built-in name or a task file)
TASKS = {"arithmetic": "arithmetic", "sums": "docs/examples/tasks/sums.yaml"}
#: GEPA's budget: the seed's validation and a few reflections
GEPA = ["--max-metric-calls", "30", "--reflection-minibatch-size", "3"]


def commands(runs: Path, engine: str, protocol: Path) -> list[tuple[Path, list[str]]]:
    """(run dir, mtg argv) of every run, sources before the runs that apply them."""
    common = ["--engine", engine, "--protocol", _rel(protocol), "--no-progress"]
    out: list[tuple[Path, list[str]]] = []
    for label, task in TASKS.items():
        for method in ("zero_shot_cot", "solution_opt"):
            rd = runs / label / method
            out.append((rd, ["eval", "--task", task, "--method", method, *common, "--out", str(rd)]))
    arith = TASKS["arithmetic"]
    rd = runs / "arithmetic" / "learned_loss"
    out.append((rd, ["train", "--task", arith, "--method", "learned_loss", *common, "--out", str(rd)]))
    rd = runs / "arithmetic" / "gepa"
    out.append((rd, ["baseline", "--task", arith, "--method", "gepa", *GEPA, *common, "--out", str(rd)]))
    rd = runs / "transfer" / "arithmetic-to-sums"
    out.append((rd, ["eval", "--task", TASKS["sums"], "--from-run", str(runs / "arithmetic" / "learned_loss"),
                     *common, "--out", str(rd)]))
    return out


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def run_one(argv: list[str], engine) -> dict:  # noqa: ANN001
    from mtg_local.cli import build_parser

    args = build_parser().parse_args(argv)
    if argv[0] == "eval":
        from mtg_local.commands.eval import run_eval

        return run_eval(args, engine=engine)
    if argv[0] == "baseline":
        from mtg_local.commands.baseline import config_from_args as baseline_config, run_baseline

        return run_baseline(baseline_config(args), engine=engine)
    from mtg_local.commands.train import config_from_args
    from mtg_local.meta.train_run import run_train

    config, resume = config_from_args(args)
    return run_train(config, engine=engine, resume=resume)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, metavar="DIR", help="where the run dirs go (not committed)")
    p.add_argument("--out", default=str(OUT), metavar="DIR", help="report folder (default: %(default)s)")
    p.add_argument("--engine", default="vllm:bundled", help="default: %(default)s")
    p.add_argument("--protocol", default=str(OUT / "protocol.json"), metavar="FILE", help="default: %(default)s")
    p.add_argument("--print", action="store_true", help="print the mtg commands and exit")
    args = p.parse_args(argv)
    runs = Path(args.runs).resolve()
    cmds = commands(runs, args.engine, Path(args.protocol).resolve())
    if args.print:
        for _, c in cmds:
            print(shlex.join(["mtg", *c]))
        print(shlex.join(["mtg", "report", str(runs), "--out", _rel(Path(args.out).resolve())]))
        return 0
    from engines import create_engine
    from mtg_local.grid import is_complete
    from mtg_local.report import write_report

    engine = create_engine(args.engine)
    try:
        for rd, c in cmds:
            if is_complete(rd):
                print(f"complete, skipped: {rd}", file=sys.stderr)
                continue
            if c[0] == "train" and (rd / "checkpoint.json").exists():
                c = [*c, "--resume", str(rd)]  # a stopped train run continues from its checkpoint
            t0 = time.perf_counter()
            res = run_one(c, engine)
            print(f"{time.perf_counter() - t0:6.1f} s  {res['status']:<9} acc {res['test_accuracy']['mean']:.2f}  "
                  f"mtg {shlex.join(c)}", file=sys.stderr, flush=True)
    finally:
        engine.close()
    col, files = write_report([runs], args.out)
    print(f"{len(col.runs)} runs, {len(col.problems)} problems; wrote {len(files)} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # vLLM starts its engine in a spawned process
    sys.exit(main())
