"""``mtg eval``: evaluate zero-shot CoT, TextGrad solution optimization or a DSPy program on a task split.

Writes RUN_DIR/config.json (resolved config), RUN_DIR/events.jsonl,
RUN_DIR/results.json (schema: docs/results_schema.md) and
RUN_DIR/trajectories.jsonl. The engines are wrapped in the run dir's
generation cache (RUN_DIR/cache.sqlite, or --cache PATH) unless --no-cache, so
a rerun of the same evaluation makes no backend calls. SIGUSR1/SIGTERM/SIGINT
(also to the whole process group) stop it at once with results.json status
"interrupted" and exit 99 (130 for SIGINT): rerun the same command to finish. ``--loss-prompt`` and
``--template`` (TEXT or @FILE) evaluate learned artifacts; ``--from-run RUN_DIR`` applies the
whole prompt pair of a finished run (what it learned, and what it was given by hand; on another
task, model or engine) and records where it came from as results.json ``source``
(``mtg_local.runs.transfer``); a source under another protocol gets one warning line.
``--method dspy_program`` evaluates DSPy's chain-of-thought program as the COPRO/MIPROv2/GEPA
baselines test theirs: with ``--from-run`` of such a run, its instruction and demos; without,
DSPy's starting instruction (the reference row of their transfer table).
It ends with a JSON summary on stdout and a short human summary on stderr: accuracy ± std over
seeds, what was applied, tokens, wall time, the run dir.

Tests call ``run_eval(args_or_config, engine=..., optimizer_engine=...)`` to
reuse a session engine instead of building one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from engines import Engine
from engines.errors import UserError
from mtg_local.barrier_free import check_item_schedule
from mtg_local.commands.common import DEFAULT_ENGINE, add_engine_args, open_run_engines
from mtg_local.protocol_flags import add_protocol_args, context_check, protocol_from_args
from mtg_local.protocol_flags import parse_seeds  # noqa: F401 - re-exported for other commands
from mtg_local.evaluation import METHODS, UsageMeter, evaluate, now_iso, results_record, write_trajectories
from mtg_local.evaluation import truncation_summary
from mtg_local.inner_loop import DEFAULT_TEMPLATE, SCHEDULES, InnerLoopConfig
from mtg_local.protocol import DEFAULT_PROTOCOL, Protocol, load_task
from mtg_local.runs.interrupt import ALL_STOP_SIGNALS, Interrupted, StopFlag, interruption, record_interruption
from mtg_local.runs.interrupt import stop_on_signals
from mtg_local.runs.health import exit_code
from mtg_local.runs.engine_events import log_engines
from mtg_local.runs.lock import RunDirLock
from mtg_local.runs import summary
from mtg_local.runs.run_dir import RunDir
from mtg_local.runs.secrets import public_engine_opts
from mtg_local.runs.transfer import DSPY_METHODS, dspy_applied, dspy_program_of, protocol_warning, read_source_run
from mtg_local.tasks import normalize_task_spec, task_names

_RERUN_HINT = "the same command (finished generations are served from the run's cache)"
#: What ``mtg eval`` runs: the inner-loop methods, and the DSPy program of the DSPy baselines.
EVAL_METHODS = (*METHODS, "dspy_program")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Resolved settings of one ``mtg eval`` run (validated in __post_init__).

    Seeds, T, sampling, answer selection, limit, task seed and scoring live in
    ``protocol`` (``mtg_local.protocol``), shared with every other method.
    """

    out: str  # run dir
    task: str = "synthetic_word_sorting"
    method: str = "solution_opt"
    engine: str = DEFAULT_ENGINE
    optimizer_engine: str | None = None  # None: the forward engine
    engine_opts: tuple[str, ...] = ()
    split: str = "test"
    data_file: str | None = None
    cache: str | None = None  # None: RUN_DIR/cache.sqlite
    no_cache: bool = False
    loss_prompt: str | None = None  # None: the task's initial loss prompt
    template: str | None = None  # None: the task's inference template, else the paper's
    system_prompt: str | None = None  # forward system prompt (an artifact, e.g. from prompt_opt)
    protocol: Protocol = DEFAULT_PROTOCOL
    progress: bool = True
    schedule: str = "phase"  # inner-loop schedule (not in the protocol: same requests either way)
    from_run: str | None = None  # a finished run whose learned texts to apply (read when the run starts)
    # --method dspy_program: {"instruction", "demos", "json_fallback"} (set by --from-run); None: DSPy's
    # starting program (its default instruction, no demos, JSON-adapter fallback on as in DSPy)
    program: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not self.out:
            raise UserError("--out RUN_DIR is required")
        if self.method not in EVAL_METHODS:
            raise UserError(f"--method must be one of {', '.join(EVAL_METHODS)}, got {self.method!r}")
        if self.method == "dspy_program":
            given = [flag for k, flag in _FLAGS.items() if _given_by_hand(self)[k]]
            if given:
                raise UserError(f"--method dspy_program's prompt is DSPy's chat prompt of the program's instruction "
                                f"and demos; drop {' and '.join(given)}")
            if self.optimizer_engine not in (None, self.engine):
                raise UserError("--method dspy_program runs only the task model; drop --optimizer-engine")
        elif self.program is not None:
            raise UserError(f"a DSPy program is evaluated with --method dspy_program, not {self.method}")
        if self.split not in ("train", "val", "test"):
            raise UserError(f"--split must be train, val or test, got {self.split!r}")
        if not isinstance(self.protocol, Protocol):
            raise UserError(f"protocol must be a Protocol, got {type(self.protocol).__name__}")
        object.__setattr__(self, "task", normalize_task_spec(self.task))  # a task file: its absolute path

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.protocol.seeds

    @property
    def inner(self) -> InnerLoopConfig:
        """The inner loop this run uses: the protocol's, with the forward system prompt."""
        return self.protocol.inner_config(system_prompt=self.system_prompt, schedule=self.schedule)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalConfig:
        """Builds the config from parsed ``mtg eval`` arguments (reads @FILE texts)."""
        return cls(
            out=args.out,
            task=args.task,
            method=args.method,
            engine=args.engine,
            optimizer_engine=args.optimizer_engine,
            engine_opts=tuple(args.engine_opt),
            split=args.split,
            data_file=args.data_file,
            cache=args.cache,
            no_cache=args.no_cache,
            loss_prompt=read_text_arg(args.loss_prompt, "--loss-prompt"),
            template=read_text_arg(args.template, "--template") or None,
            system_prompt=read_text_arg(args.system_prompt, "--system-prompt"),
            protocol=protocol_from_args(args),
            progress=not args.no_progress,
            schedule=getattr(args, "schedule", None) or "phase",
            from_run=getattr(args, "from_run", None),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without secret engine options."""
        d = dataclasses.asdict(self)
        d["protocol"] = self.protocol.to_dict()
        d["inner"] = self.inner.to_dict()  # the resolved inner loop (derived from the protocol)
        d["engine_opts"] = public_engine_opts(self.engine_opts)
        return d


#: The texts each method uses, and the flag that sets each by hand.
_USES = {"solution_opt": ("loss_prompt", "template", "system_prompt"), "zero_shot_cot": ("template", "system_prompt"),
         "dspy_program": ()}
_FLAGS = {"loss_prompt": "--loss-prompt", "template": "--template", "system_prompt": "--system-prompt"}


def _given_by_hand(cfg: EvalConfig) -> dict[str, bool]:
    return {"loss_prompt": cfg.loss_prompt is not None, "template": cfg.template is not None,
            "system_prompt": cfg.system_prompt is not None}


def apply_from_run(cfg: EvalConfig) -> tuple[EvalConfig, dict[str, Any] | None]:
    """``cfg`` with the prompts of ``cfg.from_run`` in place, and the ``source`` record.

    The whole prompt pair of the source is applied (``mtg_local.runs.transfer``): its
    learned texts, and those it was given by hand; a text it left at its default stays
    this run's default. A COPRO/MIPROv2/GEPA source is a DSPy program: only
    ``--method dspy_program`` runs it. Read when the run starts, not when the config is
    built, so a grid can build a transfer cell before its source has finished.

    Raises:
        UserError: the source is not a complete run with a learned text this method
            uses, it needs another method, or a text of the pair was also given by hand.
    """
    if not cfg.from_run:
        return cfg, None
    src = read_source_run(cfg.from_run)
    protocol = cfg.protocol.to_dict()
    if cfg.method == "dspy_program" or src.is_dspy:
        if cfg.method != "dspy_program":
            raise UserError(f"--from-run {cfg.from_run}: a {src.method} run learned a DSPy program (its instruction "
                            f"and demos in DSPy's chat prompt, parsed by DSPy's adapters), which --method {cfg.method} "
                            "does not run; evaluate it with --method dspy_program")
        if not src.is_dspy:
            raise UserError(f"--from-run {cfg.from_run}: --method dspy_program applies a {', '.join(DSPY_METHODS)} "
                            f"run's DSPy program; a {src.method} run's prompts are applied with --method "
                            "solution_opt or zero_shot_cot")
        program = dspy_program_of(src.results)
        return dataclasses.replace(cfg, program=program), src.record(dspy_applied(program), protocol=protocol)
    uses = _USES[cfg.method]
    applied = {k: v for k, v in src.texts.items() if k in uses}
    origin = src.origin
    if not any(origin[k] == "learned" for k in applied):
        learned = [k for k in src.texts if origin[k] == "learned"]
        raise UserError(f"--from-run {cfg.from_run}: its learned {', '.join(learned)} is not used by "
                        f"--method {cfg.method}")
    given = _given_by_hand(cfg)
    clash = [k for k in uses if given[k]]
    if clash:
        pair = ", ".join(f"{origin[k]} {k}" for k in uses)
        raise UserError(f"--from-run {cfg.from_run} supplies the {', '.join(clash)}: a transfer applies the "
                        f"source's whole prompt pair ({pair}); drop {' and '.join(_FLAGS[k] for k in clash)}")
    return dataclasses.replace(cfg, **applied), src.record(applied, protocol=protocol)


def _import_dspy_program() -> Any:
    try:
        from mtg_local.baselines import dspy_program
    except ImportError as e:
        raise UserError(f"--method dspy_program needs {e.name or e}; install it with: pip install -e '.[dspy]'") from e
    return dspy_program


def _evaluate_dspy_program(cfg: EvalConfig, task: Any, examples: list, engine: Engine,
                           run_dir: RunDir) -> tuple[dict[str, Any], None]:
    """The DSPy program of ``cfg.program`` on ``examples`` x seeds, as the DSPy baselines test theirs.

    Returns:
        The accuracy summary, and None for ``truncated`` (DSPy programs have no inner-loop calls).
    """
    dp = _import_dspy_program()
    spec = cfg.program or {}
    program = dp.program_from(task, spec.get("instruction") or None, spec.get("demos") or ())
    ev = dp.evaluate_program(task, program, examples, seeds=cfg.seeds, engine=engine,
                             temperature=cfg.protocol.temperature, max_tokens=cfg.protocol.max_tokens,
                             json_fallback=bool(spec.get("json_fallback", True)))
    run_dir.write_trajectories([{"split": cfg.split, "method": cfg.method, **r} for r in ev.records])
    return ev.accuracy, None


def task_help(*, several: bool = False) -> str:
    """``--task`` help: the registered names, or a task file (and, for train, several)."""
    more = ("; or A,B[,C]: one loss prompt / template meta-trained across several tasks (starting from the "
            "first task's loss prompt)") if several else ""
    return (f"task name ({', '.join(task_names())}) or a task file (path/to/task.yaml: docs/tasks.md, "
            f"'Your own task'){more}; default: %(default)s")


def read_text_arg(value: str | None, flag: str) -> str | None:
    """TEXT as is, or the contents of FILE for "@FILE" (trailing newline dropped)."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    if not path.is_file():
        raise UserError(f"{flag} file not found: {path}")
    return path.read_text().rstrip("\n")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate zero-shot CoT, TextGrad solution optimization or a DSPy program on a "
                                    "task split")
    p.add_argument("--task", default="synthetic_word_sorting", metavar="NAME|FILE.yaml", help=task_help())
    p.add_argument("--method", default="solution_opt", choices=EVAL_METHODS,
                   help="default: %(default)s; dspy_program: DSPy's chain-of-thought program as the copro/miprov2/"
                        "gepa baselines test it (with --from-run of such a run: its instruction and demos)")
    p.add_argument("--data-file", default=None, metavar="FILE", help="load the task from a local file")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: %(default)s")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--loss-prompt", default=None, metavar="TEXT|@FILE", help="loss prompt (default: the task's)")
    p.add_argument(
        "--template", default=None, metavar="TEXT|@FILE",
        help=f"inference template (default: the task's, else {DEFAULT_TEMPLATE!r})"
    )
    p.add_argument("--system-prompt", default=None, metavar="TEXT|@FILE", help="forward system prompt (default: none)")
    p.add_argument("--from-run", default=None, metavar="RUN_DIR",
                   help="apply the prompt pair of this finished run: what it learned (loss prompt, template, "
                        "system prompt; a copro/miprov2/gepa run's DSPy program with --method dspy_program) and "
                        "what it was given by hand, e.g. on another task, model or engine; recorded as "
                        "results.json 'source'. The protocol stays this command's (a difference is warned about "
                        "and recorded): to match the source's, add --protocol RUN_DIR/results.json")
    add_protocol_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_args(p, optimizer=True, schedule=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        with RunDirLock(args.out):  # one process per run dir (released by the kernel on death)
            results = run_eval(args)
    except Interrupted as e:
        print(f"mtg eval: {e}", file=sys.stderr)
        return e.exit_code
    given = [k for k in _FLAGS if getattr(args, k, None) is not None]  # texts set by hand
    summary.end_of_run(summary.result_line(results, args.out), summary.eval_summary(results, args.out, given=given))
    return exit_code(results, "eval", args.out)


def run_eval(
    args_or_config: argparse.Namespace | EvalConfig,
    *,
    engine: Engine | None = None,
    optimizer_engine: Engine | None = None,
    stop: StopFlag | None = None,
) -> dict[str, Any]:
    """Runs one evaluation and writes the run dir; returns the results.json body.

    Args:
        args_or_config: parsed ``mtg eval`` arguments or an ``EvalConfig``.
        engine: a ready forward engine (not closed here); default: built from the spec.
        optimizer_engine: a ready optimizer engine; default: built from
            --optimizer-engine if it names another spec, else the forward engine.
        stop: the stop flag to honour (``mtg grid`` passes its own, set by its
            signal handlers: signal handlers exist only in the main thread);
            default: a new one set by SIGUSR1/SIGTERM/SIGINT.
    """
    cfg = args_or_config if isinstance(args_or_config, EvalConfig) else EvalConfig.from_args(args_or_config)
    cfg, source = apply_from_run(cfg)  # before a model is loaded: a bad source costs no engine start
    if source and source["protocol_diff"]:
        print(f"mtg eval: {protocol_warning(cfg.from_run, source)}", file=sys.stderr)
    if cfg.method == "dspy_program":
        _import_dspy_program()  # before a model is loaded
    if cfg.schedule == "item" and cfg.method == "solution_opt":  # before a model is loaded
        check_item_schedule(engine or cfg.engine, optimizer_engine or cfg.optimizer_engine)
    task = load_task(cfg.task, cfg.protocol, data_file=cfg.data_file)
    examples = list(task.splits().limited(cfg.protocol.limit).get(cfg.split))
    template = cfg.template or task.inference_template or DEFAULT_TEMPLATE
    if not examples:
        raise UserError(f"the {cfg.split} split of {cfg.task} has no questions")
    run_dir = RunDir(cfg.out).create()
    started, t0 = now_iso(), time.perf_counter()

    cache_path = None if cfg.no_cache else (cfg.cache or run_dir.cache_path)
    with open_run_engines(cfg.engine, cfg.optimizer_engine, cfg.engine_opts, cache_path=cache_path,
                          engine=engine, optimizer_engine=optimizer_engine) as engines:
        context_check(cfg.protocol, engines)
        config = {**cfg.to_dict(), **engines.specs}
        if cfg.method != "dspy_program":  # the prompts it runs with (None above: the task's); a DSPy program has none
            config.update(loss_prompt=cfg.loss_prompt or task.initial_loss_prompt, template=template)
        run_dir.write_config(config)
        run_dir.log_event("eval_start", method=cfg.method, n_questions=len(examples), seeds=list(cfg.seeds),
                          **({"source_run_id": source["run_id"], "source_protocol_diff": source["protocol_diff"]}
                             if source else {}))
        log_engines(run_dir, forward=engines.forward, optimizer=engines.optimizer)
        meter = UsageMeter(engines.forward_run, engines.optimizer_run)
        common = dict(
            task=task, method=cfg.method, seeds=cfg.seeds, split=cfg.split, n_questions=len(examples),
            config=config, started_at=started, protocol=cfg.protocol, **engines.specs, schedule=cfg.schedule,
            **({"source": source} if source else {}),
        )
        stop = stop if stop is not None else StopFlag()
        try:
            with stop_on_signals(stop, abort_on=ALL_STOP_SIGNALS):  # no boundary to wait for
                engines.probe()  # an engine that is not there: failed in seconds, not after every retry
                if cfg.method == "dspy_program":
                    accuracy, truncated = _evaluate_dspy_program(cfg, task, examples, engines.forward_run, run_dir)
                else:
                    outcome = evaluate(
                        task, examples, method=cfg.method, seeds=cfg.seeds, forward_engine=engines.forward_run,
                        optimizer_engine=engines.optimizer_run, config=cfg.inner, loss_prompt=cfg.loss_prompt,
                        template=template, progress=cfg.progress,
                    )
                    write_trajectories(run_dir, outcome.trajectories, split=cfg.split, method=cfg.method)
                    accuracy, truncated = outcome.accuracy, truncation_summary(outcome.trajectories)
            results = results_record(
                accuracy=accuracy, engine_usage=meter.report(), wall_s=time.perf_counter() - t0,
                truncated=truncated, **common
            )
            run_dir.write_results(results)
            run_dir.log_event("eval_done", accuracy=accuracy["mean"], calls=results["engine_usage"]["calls"])
            return results
        except BaseException as e:
            intr = interruption(e, stop)
            if intr is not None:
                record_interruption(run_dir, intr, resume=_RERUN_HINT, results=results_record(
                    accuracy=None, engine_usage=meter.report(), wall_s=time.perf_counter() - t0, **common))
                raise intr from (None if intr is e else e)
            failed = results_record(
                accuracy=None, engine_usage=meter.report(), wall_s=time.perf_counter() - t0, status="failed",
                error=f"{type(e).__name__}: {e}", **common,
            )
            run_dir.write_results(failed)
            run_dir.log_event("eval_failed", error=failed["error"])
            raise
