"""``mtg eval``: evaluate zero-shot CoT or TextGrad solution optimization on a task split.

Writes RUN_DIR/config.json (resolved config), RUN_DIR/events.jsonl,
RUN_DIR/results.json (schema: docs/results_schema.md) and
RUN_DIR/trajectories.jsonl. The engines are wrapped in the run dir's
generation cache (RUN_DIR/cache.sqlite, or --cache PATH) unless --no-cache, so
a rerun of the same evaluation makes no backend calls. ``--loss-prompt`` and
``--template`` (TEXT or @FILE) evaluate learned artifacts.

Tests call ``run_eval(args_or_config, engine=..., optimizer_engine=...)`` to
reuse a session engine instead of building one.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from engines import Engine
from engines.errors import UserError
from mtg_local.commands.common import DEFAULT_ENGINE, add_engine_args, open_run_engines
from mtg_local.evaluation import METHODS, UsageMeter, evaluate, now_iso, results_record, write_trajectories
from mtg_local.inner_loop import DEFAULT_TEMPLATE, FREEZE_CONDITIONS, InnerLoopConfig
from mtg_local.runs.health import exit_code
from mtg_local.runs.lock import RunDirLock
from mtg_local.runs.run_dir import RunDir
from mtg_local.runs.secrets import public_engine_opts
from mtg_local.tasks import get_task, task_names

_DEFAULT_INNER = InnerLoopConfig()


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Resolved settings of one ``mtg eval`` run (validated in __post_init__)."""

    out: str  # run dir
    task: str = "word_sorting"
    method: str = "solution_opt"
    engine: str = DEFAULT_ENGINE
    optimizer_engine: str | None = None  # None: the forward engine
    engine_opts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    split: str = "test"
    limit: int | None = None  # first N questions of the split
    data_file: str | None = None
    cache: str | None = None  # None: RUN_DIR/cache.sqlite
    no_cache: bool = False
    loss_prompt: str | None = None  # None: the task's initial loss prompt
    template: str = DEFAULT_TEMPLATE
    inner: InnerLoopConfig = _DEFAULT_INNER
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.out:
            raise UserError("--out RUN_DIR is required")
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.split not in ("train", "val", "test"):
            raise UserError(f"--split must be train, val or test, got {self.split!r}")
        if not self.seeds:
            raise UserError("--seeds needs at least one seed, e.g. 0,1,2")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise UserError(f"--seeds must be distinct integers >= 0, got {list(self.seeds)}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalConfig:
        """Builds the config from parsed ``mtg eval`` arguments (reads @FILE texts)."""
        try:
            inner = InnerLoopConfig(
                steps=args.steps,
                temperature=args.temperature,
                optimizer_temperature=args.optimizer_temperature,
                max_tokens=args.max_tokens,
                optimizer_max_tokens=args.optimizer_max_tokens,
                system_prompt=read_text_arg(args.system_prompt, "--system-prompt"),
                freeze_when=args.freeze_when,
                majority_vote=args.majority_vote,
                prefill_update_tag=not args.no_prefill_tag,
                keep_answer_format=not args.no_keep_format,
            )
        except ValueError as e:
            raise UserError(f"bad inner-loop setting: {e}") from e
        return cls(
            out=args.out,
            task=args.task,
            method=args.method,
            engine=args.engine,
            optimizer_engine=args.optimizer_engine,
            engine_opts=tuple(args.engine_opt),
            seeds=parse_seeds(args.seeds),
            split=args.split,
            limit=args.limit,
            data_file=args.data_file,
            cache=args.cache,
            no_cache=args.no_cache,
            loss_prompt=read_text_arg(args.loss_prompt, "--loss-prompt"),
            template=read_text_arg(args.template, "--template") or DEFAULT_TEMPLATE,
            inner=inner,
            progress=not args.no_progress,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without secret engine options."""
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        d["engine_opts"] = public_engine_opts(self.engine_opts)
        return d


def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1,2" or "0-5" (inclusive) or a mix -> (0, 1, 2, ...)."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(part)])
    except ValueError as e:
        raise UserError(f"--seeds must look like 0,1,2 or 0-5, got {text!r}") from e
    return tuple(seeds)


def read_text_arg(value: str | None, flag: str) -> str | None:
    """TEXT as is, or the contents of FILE for "@FILE" (trailing newline dropped)."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    if not path.is_file():
        raise UserError(f"{flag} file not found: {path}")
    return path.read_text().rstrip("\n")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate zero-shot CoT or TextGrad solution optimization on a task split")
    p.add_argument("--task", default="word_sorting", help=f"task name ({', '.join(task_names())})")
    p.add_argument("--method", default="solution_opt", choices=METHODS, help="default: %(default)s")
    p.add_argument("--seeds", default="0,1,2", help="sampling seeds, e.g. 0,1,2 or 0-5 (default: %(default)s)")
    p.add_argument("--steps", type=int, default=_DEFAULT_INNER.steps, help="inner-loop steps T (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N questions of the split")
    p.add_argument("--data-file", default=None, metavar="FILE", help="load the task from a local file")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: %(default)s")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--loss-prompt", default=None, metavar="TEXT|@FILE", help="loss prompt (default: the task's)")
    p.add_argument(
        "--template", default=None, metavar="TEXT|@FILE", help=f"inference template (default: {DEFAULT_TEMPLATE!r})"
    )
    p.add_argument("--system-prompt", default=None, metavar="TEXT|@FILE", help="forward system prompt (default: none)")
    g = p.add_argument_group("inner loop")
    d = _DEFAULT_INNER
    g.add_argument("--temperature", type=float, default=d.temperature, help="forward; default: %(default)s")
    g.add_argument(
        "--optimizer-temperature", type=float, default=d.optimizer_temperature, help="default: %(default)s"
    )
    g.add_argument("--max-tokens", type=int, default=d.max_tokens, help="forward; default: %(default)s")
    g.add_argument("--optimizer-max-tokens", type=int, default=d.optimizer_max_tokens, help="default: %(default)s")
    g.add_argument(
        "--freeze-when", default=_DEFAULT_INNER.freeze_when,
        help=f"never, or a comma list of {', '.join(FREEZE_CONDITIONS)} (default: %(default)s)",
    )
    g.add_argument("--majority-vote", action="store_true", help="final answer by majority vote over the steps")
    g.add_argument("--no-prefill-tag", action="store_true", help="do not prefill <IMPROVED_VARIABLE> in updates")
    g.add_argument(
        "--no-keep-format", action="store_true", help="accept updates that lose the task's answer format"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_args(p, optimizer=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with RunDirLock(args.out):  # one process per run dir (released by the kernel on death)
        results = run_eval(args)
    return exit_code(results, "eval", args.out)


def run_eval(
    args_or_config: argparse.Namespace | EvalConfig,
    *,
    engine: Engine | None = None,
    optimizer_engine: Engine | None = None,
) -> dict[str, Any]:
    """Runs one evaluation and writes the run dir; returns the results.json body.

    Args:
        args_or_config: parsed ``mtg eval`` arguments or an ``EvalConfig``.
        engine: a ready forward engine (not closed here); default: built from the spec.
        optimizer_engine: a ready optimizer engine; default: built from
            --optimizer-engine if it names another spec, else the forward engine.
    """
    cfg = args_or_config if isinstance(args_or_config, EvalConfig) else EvalConfig.from_args(args_or_config)
    task = get_task(cfg.task, data_file=cfg.data_file)
    examples = list(task.splits().get(cfg.split))
    if cfg.limit is not None:
        examples = examples[: cfg.limit]
    if not examples:
        raise UserError(f"the {cfg.split} split of {cfg.task} has no questions")
    run_dir = RunDir(cfg.out).create()
    started, t0 = now_iso(), time.perf_counter()

    cache_path = None if cfg.no_cache else (cfg.cache or run_dir.cache_path)
    with open_run_engines(cfg.engine, cfg.optimizer_engine, cfg.engine_opts, cache_path=cache_path,
                          engine=engine, optimizer_engine=optimizer_engine) as engines:
        config = {**cfg.to_dict(), **engines.specs, "loss_prompt": cfg.loss_prompt or task.initial_loss_prompt}
        run_dir.write_config(config)
        run_dir.log_event("eval_start", method=cfg.method, n_questions=len(examples), seeds=list(cfg.seeds))
        meter = UsageMeter(engines.forward_run, engines.optimizer_run)
        common = dict(
            task=task, method=cfg.method, seeds=cfg.seeds, split=cfg.split, n_questions=len(examples),
            config=config, started_at=started, **engines.specs,
        )
        try:
            outcome = evaluate(
                task, examples, method=cfg.method, seeds=cfg.seeds, forward_engine=engines.forward_run,
                optimizer_engine=engines.optimizer_run, config=cfg.inner, loss_prompt=cfg.loss_prompt, template=cfg.template, progress=cfg.progress,
            )
            write_trajectories(run_dir, outcome.trajectories, split=cfg.split, method=cfg.method)
            results = results_record(
                accuracy=outcome.accuracy, engine_usage=meter.report(), wall_s=time.perf_counter() - t0, **common
            )
            run_dir.write_results(results)
            run_dir.log_event("eval_done", accuracy=outcome.accuracy["mean"], calls=results["engine_usage"]["calls"])
            return results
        except BaseException as e:
            failed = results_record(
                accuracy=None, engine_usage=meter.report(), wall_s=time.perf_counter() - t0, status="failed",
                error=f"{type(e).__name__}: {e}", **common,
            )
            run_dir.write_results(failed)
            run_dir.log_event("eval_failed", error=failed["error"])
            raise
