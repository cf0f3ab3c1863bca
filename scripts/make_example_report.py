"""Makes docs/example_report from real runs on the bundled model: a small learn-then-transfer study.

The runs are ordinary ``mtg`` command lines (``--print`` shows them as shell commands; each
can be run on its own with ``mtg``); this script runs them one after another in ONE process
on ONE engine (an engine start costs ~40 s here), then ``mtg report``. Every run uses one
protocol file (docs/example_report/protocol.json: 3 questions per split, 2 seeds, T = 1, 64
forward/optimizer tokens, 128 meta tokens, 1 outer step), so they share one table. On shared machines hold the
real-engine lock::

    flock /tmp/mtg-real-engine.lock python scripts/make_example_report.py --runs /tmp/mtg-example-runs
    python scripts/make_example_report.py --runs /tmp/mtg-example-runs --print   # the commands only

Complete runs are skipped, so a rerun after a stop only does what is missing. The numbers of
the bundled 135M model are plumbing, not results.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
OUT = REPO / "docs" / "example_report"
#: task label -> (task name, local data file in the dataset's schema)
TASKS = {"ws": ("word_sorting", FIXTURES / "tasks_bbh_word_sorting.jsonl"),
         "mmlu": ("mmlu_machine_learning", FIXTURES / "tasks_mmlu_machine_learning.jsonl")}


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def commands(runs: Path, engine: str, protocol: Path) -> list[tuple[Path, list[str]]]:
    """(run dir, mtg argv) of every run, sources before the runs that apply them."""
    common = ["--engine", engine, "--protocol", _rel(protocol), "--no-progress"]
    out: list[tuple[Path, list[str]]] = []

    def task_args(label: str) -> list[str]:
        name, data = TASKS[label]
        return ["--task", name, "--data-file", _rel(data)]

    for label in TASKS:
        for method in ("zero_shot_cot", "solution_opt"):
            rd = runs / label / method
            out.append((rd, ["eval", *task_args(label), "--method", method, *common, "--out", str(rd)]))
        rd = runs / label / "learned_loss"
        out.append((rd, ["train", *task_args(label), "--method", "learned_loss", *common, "--out", str(rd)]))
    rd = runs / "ws+mmlu" / "learned_loss"
    names = ",".join(name for name, _ in TASKS.values())
    files = [x for name, data in TASKS.values() for x in ("--data-file", f"{name}={_rel(data)}")]
    out.append((rd, ["train", "--task", names, *files, "--method", "learned_loss", *common, "--out", str(rd)]))
    for src in TASKS:  # each learned prompt on the other task
        for dst in TASKS:
            if dst != src:
                rd = runs / "transfer" / f"{src}-to-{dst}"
                out.append((rd, ["eval", *task_args(dst), "--from-run", str(runs / src / "learned_loss"), *common,
                                 "--out", str(rd)]))
    return out


def run_one(argv: list[str], engine) -> dict:  # noqa: ANN001
    from mtg_local.cli import build_parser

    args = build_parser().parse_args(argv)
    if argv[0] == "eval":
        from mtg_local.commands.eval import run_eval

        return run_eval(args, engine=engine)
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
