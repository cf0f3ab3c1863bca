"""``mtg grid GRID.yaml``: every cell of one engine of a grid in one process, concurrently, on one engine.

The grid file is the one ``mtg slurm submit`` takes (mtg_local/slurm/grid.py).
Each cell is the same run as its array-mode job (same ``mtg eval``/``train``/
``baseline`` arguments, run dir, lock, checkpoint, events, results.json,
trajectories), run in a thread of this process on a view of one shared,
long-lived engine (``mtg_local.grid``). Complete cells are skipped; a train
cell with a checkpoint resumes. Cells whose arguments name another
``--optimizer-engine`` share one engine per such spec (alone, each would start
its own). SIGUSR1/SIGTERM/SIGINT (to this process or
its whole process group, e.g. scancel): every running cell's requests in
flight are abandoned at once, each unfinished cell records status
"interrupted" (train cells keep their last checkpoint), complete cells stay
complete, exit 99 ("requeue me"; 130 for SIGINT). Rerun the same command to
continue: what the cells generated before is served from their caches. A
signal while the shared engine starts ends the command at once (99/130).

Transfer cells (the grid's ``transfer:``) wait for their source cell: each
starts once its source is complete, and is recorded "not_run" with the reason
when the source ends failed or interrupted. A source on another engine of the
grid must be complete before its turn (run that engine first, or let ``mtg
slurm submit --shared`` order the jobs; ``--stage K`` runs one stage of them).

Exit status: 0 every cell complete (or skipped); 2 user error; 3 some cells
failed or did not run (listed on stderr), or the engine is not there (its probe
failed: a refused connection, a model the server does not serve; no cell was
started); 99 stopped on SIGUSR1/SIGTERM; 130 on SIGINT.
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import sys
from typing import Any

from engines.base import Engine
from engines.errors import UserError
from mtg_local.grid import GridCell, is_complete, run_cells
from mtg_local.grid.runner import CellRef
from mtg_local.grid.engine import open_shared_engine, shared_spec
from mtg_local.runs.interrupt import EXIT_REQUEUE, EXIT_SIGINT, StopFlag
from mtg_local.runs.run_dir import RunDir, atomic_write_json
from mtg_local.slurm.grid import EngineEntry, Grid, RunSpec, load_grid, refuse_secrets
from mtg_local.slurm.transfers import engine_stages

EXIT_FAILED = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grid",
        help="run every cell of a grid (one engine) in one process, concurrently, on one shared engine",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("grid", metavar="GRID.yaml", help="grid file (format: mtg slurm submit; slurm/grid_example.yaml)")
    p.add_argument("--engine", default=None, metavar="SPEC|LABEL",
                   help="which engine of the grid to run (needed when the grid has several)")
    p.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="extra option for the shared engine and every cell (e.g. tensor_parallel_size=4, "
                        "data_parallel_size=8 for vllm); no secrets, as in grid files: name their variable "
                        "(api_key_env=MY_KEY_VAR)")
    p.add_argument("--max-concurrent", type=int, default=8, metavar="N",
                   help="most cells running at once (1 = one after another on the one engine; default: %(default)s)")
    p.add_argument("--runs-root", default=None, metavar="DIR", help="override the grid's runs_root / $MTG_RUNS")
    p.add_argument("--stage", type=int, default=None, metavar="K",
                   help="only the cells of stage K (0: cells that wait for no other engine's cell; K: cells "
                        "that wait for a stage K-1 cell of another engine); mtg slurm submit --shared sets it")
    p.add_argument("--dry-run", action="store_true", help="print the cells and what would happen to each")
    p.set_defaults(func=run)


def select_engine(grid: Grid, wanted: str | None) -> EngineEntry:
    """The grid engine named by spec or label, or the only one."""
    if wanted is None:
        if len(grid.engines) > 1:
            names = ", ".join(e.label for e in grid.engines)
            raise UserError(f"the grid has {len(grid.engines)} engines ({names}); choose one with --engine")
        return grid.engines[0]
    for e in grid.engines:
        if wanted in (e.spec, e.label):
            return e
    raise UserError(f"--engine {wanted!r} is not in the grid; its engines: {', '.join(e.spec for e in grid.engines)}")


def _parse(argv: list[str]) -> argparse.Namespace:
    from mtg_local.cli import build_parser  # the cells' own parsers (cli imports this module)

    try:
        return build_parser().parse_args(argv)
    except SystemExit:  # argparse has printed why
        raise UserError(f"grid cell arguments are not valid: mtg {' '.join(argv)}") from None


def build_cell(run: RunSpec, extra_opts: list[str], cells: dict[str, RunSpec] | None = None) -> GridCell:
    """The cell of ``run``: its command line parsed as ``mtg`` would, run with ``engine=``.

    Progress bars are off (one line per cell instead); a train cell whose run
    dir has a checkpoint resumes (``mtg train --resume``). ``cells`` (every cell
    of the grid by name) gives the run dirs of the cells it waits for.
    """
    argv = list(run.argv)
    for o in extra_opts:
        argv += ["--engine-opt", o]
    args = _parse(argv)
    args.no_progress = True
    cmd = argv[0]
    name = run.name
    if cmd == "eval":
        from mtg_local.commands.eval import EvalConfig, run_eval

        config = EvalConfig.from_args(args)

        def execute(engine: Engine, stop: StopFlag, optimizer_engine: Engine | None = None) -> dict[str, Any]:
            return run_eval(config, engine=engine, optimizer_engine=optimizer_engine, stop=stop)

    elif cmd == "train":
        from mtg_local.commands.train import config_from_args
        from mtg_local.meta.train_run import run_train

        def execute(engine: Engine, stop: StopFlag, optimizer_engine: Engine | None = None) -> dict[str, Any]:
            a = copy.copy(args)
            if RunDir(run.run_dir).checkpoint_path.exists():
                a.resume = str(run.run_dir)  # read at start: a requeued grid resumes the cell
            config, resume = config_from_args(a)
            return run_train(config, engine=engine, optimizer_engine=optimizer_engine, resume=resume, stop=stop)

    elif cmd == "baseline":
        from mtg_local.commands.baseline import config_from_args as baseline_config, run_baseline

        bconfig = baseline_config(args)

        def execute(engine: Engine, stop: StopFlag, optimizer_engine: Engine | None = None) -> dict[str, Any]:
            return run_baseline(bconfig, engine=engine, optimizer_engine=optimizer_engine, stop=stop)

    else:  # METHOD_COMMANDS maps every method to one of the three
        raise UserError(f"grid cell {name}: unknown sub-command {cmd!r}")
    # Another optimizer spec: the grid shares one engine per spec (cells alone would each start one).
    optimizer = args.optimizer_engine if args.optimizer_engine not in (None, run.engine.spec) else None
    after = tuple(CellRef(a, (cells or {})[a].run_dir) for a in run.after)
    return GridCell(name=name, run_dir=run.run_dir, kind=cmd, execute=execute, spec=run.engine.spec,
                    checkpoints=cmd == "train", optimizer_spec=optimizer, after=after)


def _write_request_events(engine: Engine, path: Any) -> str | None:
    """The shared engine's own per-request timestamps (``vllm-async:``: submitted, first token,
    finished, caller = cell), one JSON line each: they show which cells' requests were in flight
    together. None for engines that keep none."""
    events = getattr(engine, "events", None)
    if not callable(events):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in events()))
    tmp.replace(path)
    return str(path)


def cell_state(run: RunSpec) -> str:
    if is_complete(run.run_dir):
        return "complete (skip)"
    if RunDir(run.run_dir).checkpoint_path.exists():
        return "resume from checkpoint"
    if run.after:
        return "after its source"
    return "rerun" if RunDir(run.run_dir).results_path.exists() else "new"


def select_runs(every: list[RunSpec], entry: EngineEntry, stage: int | None) -> list[RunSpec]:
    """The cells of one engine among ``every`` cell of the grid (of one stage, when given)."""
    stages = engine_stages(every)
    if stage is not None and stage not in stages.values():
        raise UserError(f"--stage {stage}: the grid's cells have stages {sorted(set(stages.values()))}")
    return [r for r in every if r.engine.label == entry.label and stage in (None, stages[r.name])]


def run(args: argparse.Namespace) -> int:
    if args.max_concurrent < 1:
        raise UserError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    # As in grid files: these options are copied into every cell's command line and the logs.
    refuse_secrets(args.engine_opt, "--engine-opt")
    grid = load_grid(args.grid, runs_root=args.runs_root)
    entry = select_engine(grid, args.engine)
    every = grid.expand()
    runs = select_runs(every, entry, args.stage)
    by_name = {r.name: r for r in every}
    cells = [build_cell(r, args.engine_opt, by_name) for r in runs]  # parses every cell's arguments up front
    from mtg_local.tasks import check_task_files

    check_task_files(p for r in runs for p in r.task.datasets())  # a wrong task file: before the engine starts
    tail = "" if args.stage is None else f"-stage{args.stage}"  # a stage's own summary file
    opts_list = [*grid.engine_opts, *entry.opts, *args.engine_opt]
    optimizer_specs = {c.optimizer_spec: sum(d.optimizer_spec == c.optimizer_spec for d in cells)
                       for c in cells if c.optimizer_spec}
    if args.dry_run:
        which = "" if args.stage is None else f" (stage {args.stage})"
        print(f"# grid {grid.name}: {len(runs)} cells{which} of {entry.spec} on one shared {shared_spec(entry.spec)} "
              f"engine (options: {' '.join(opts_list) or 'none'}), at most {args.max_concurrent} at once")
        for spec, n in optimizer_specs.items():
            print(f"# optimizer engine {spec} (shared by {n} cells): one shared {shared_spec(spec)} engine")
        for r in runs:
            after = f"  # after {', '.join(r.after)}" if r.after else ""
            print(f"{cell_state(r):<24} mtg {r.manifest_line()}{after}")
        return 0

    from engines.gpu_memory import split_engine_options
    from engines.registry import parse_engine_opts
    from mtg_local.runs.interrupt import ALL_STOP_SIGNALS, interruption, stop_on_signals

    stop = StopFlag()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    log(f"[grid] starting {shared_spec(entry.spec)} for {len(cells)} cells of {grid.name}")
    # A signal during the engine's start (minutes for a large model) ends the command at once
    # (Interrupted -> exit 99/130 in mtg_local.cli; the engine's watchdog reaps its processes).
    engine: Engine | None = None
    optimizers: dict[str, Engine] = {}
    try:
        try:
            with stop_on_signals(stop, abort_on=ALL_STOP_SIGNALS):
                # The shared engine and the optimizer engines share the node's GPU(s): split its memory.
                opts = iter(split_engine_options([shared_spec(entry.spec), *map(shared_spec, optimizer_specs)],
                                                 parse_engine_opts(opts_list)))
                engine = open_shared_engine(entry.spec, next(opts))
                engine.probe()  # an engine that is not there: exit 3 in seconds, before any cell
                for spec in optimizer_specs:  # the cells' engine options, as each cell alone would use
                    log(f"[grid] starting optimizer engine {shared_spec(spec)} for {optimizer_specs[spec]} cells")
                    optimizers[spec] = open_shared_engine(spec, next(opts))
                    optimizers[spec].probe()
        except Exception as e:  # e.g. vLLM's start-up wrapped the Interrupted our handler raised in it
            intr = interruption(e, stop, grace_s=0) if stop else None
            if intr is None:
                raise
            raise intr from e
        # Then the handlers only set the flag: the cells see it (their views abandon the calls in
        # flight) and end "interrupted" by their own paths, while this thread collects them.
        with stop_on_signals(stop, abort_on=()):
            report = run_cells(cells, engine, max_concurrent=args.max_concurrent, stop=stop, log=log,
                               optimizer_engines=optimizers)
        requests_log = _write_request_events(engine, grid.runs_root / grid.name /
                                             f"grid-{entry.label}{tail}-requests.jsonl")
    finally:
        for e in [*optimizers.values(), *([engine] if engine is not None else [])]:
            e.close()
    summary = {"grid": grid.name, "engine_spec": entry.spec, "shared_engine": shared_spec(entry.spec),
               "max_concurrent": args.max_concurrent, **({"stage": args.stage} if args.stage is not None else {}),
               **report.to_dict(), "request_events": requests_log}
    out = grid.runs_root / grid.name / f"grid-{entry.label}{tail}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, summary)
    print(json.dumps({k: summary[k] for k in ("grid", "engine_spec", "wall_s", "stopped", "counts")} | {"summary": str(out)}))
    if report.stopped:
        print(f"mtg grid: stopped on signal {stop.signal}; rerun the same command to continue", file=sys.stderr)
        return EXIT_SIGINT if stop.signal == signal.SIGINT else EXIT_REQUEUE
    if report.failed:
        first = report.failed[0]
        print(f"mtg grid: {len(report.failed)} of {len(cells)} cells failed; first: {first.name}: {first.error}",
              file=sys.stderr)
    if report.not_run:
        first = report.not_run[0]
        print(f"mtg grid: {len(report.not_run)} of {len(cells)} cells did not run (a source is not complete); "
              f"first: {first.name}: {first.error}", file=sys.stderr)
    return EXIT_FAILED if report.failed or report.not_run else 0
