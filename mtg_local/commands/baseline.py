"""``mtg baseline``: TextGrad prompt optimization, COPRO, MIPROv2 or GEPA, then the test over seeds.

``--method prompt_opt`` trains the forward system prompt as TextGrad's
``evaluation/prompt_optimization.py`` does, phase-batched
(``mtg_local.baselines.prompt_optimization``); ``copro``, ``miprov2`` and
``gepa`` run the real DSPy optimizers on our engines (``pip install -e '.[dspy]'``;
GEPA's reflection model is ``--reflection-engine``, default the run's engine).
The learned prompt is then evaluated on the test split, every question once per
seed, in one engine call. Writes RUN_DIR/config.json, events.jsonl,
results.json (schema: docs/results_schema.md; the learned instruction or
system prompt under ``learned.system_prompt``), trajectories.jsonl and, for
DSPy methods, dspy_program.json (DSPy's saved program state) and
learned_instruction.txt (the optimized instruction as plain text).
SIGUSR1/SIGTERM/SIGINT (also to the whole process group) stop it at once with
results.json status "interrupted" and exit 99 (130 for SIGINT): rerun the same
command; finished generations come from the run's cache. It ends with a JSON
summary on stdout and a short human summary on stderr (test accuracy ± std over
seeds, the learned prompt applied at test, tokens, wall time, run dir).

Tests call ``run_baseline(config, engine=...)`` with a session engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from typing import Any

from engines import Engine
from engines.errors import UserError
from mtg_local.commands.common import DEFAULT_ENGINE, add_engine_args, open_run_engines
from mtg_local.commands.eval import read_text_arg, task_help
from mtg_local.protocol_flags import add_protocol_args, context_check, parse_seeds, protocol_from_args
from mtg_local.evaluation import UsageMeter, evaluate, now_iso, results_record, write_trajectories
from mtg_local.evaluation import truncation_summary
from mtg_local.inner_loop import DEFAULT_TEMPLATE
from mtg_local.protocol import DEFAULT_PROTOCOL, Protocol, load_task
from mtg_local.runs.interrupt import ALL_STOP_SIGNALS, Interrupted, StopFlag, interruption, record_interruption
from mtg_local.runs.interrupt import signal_name, stop_on_signals
from mtg_local.runs.health import exit_code
from mtg_local.runs.engine_events import log_engines
from mtg_local.runs.lock import RunDirLock
from mtg_local.runs import summary
from mtg_local.runs.run_dir import RunDir
from mtg_local.runs.secrets import public_engine_opts
from mtg_local.runs.transfer import prompt_pair_record
from mtg_local.tasks import normalize_task_spec

METHODS = ("prompt_opt", "copro", "miprov2", "gepa")
#: The optimized instruction of a DSPy method, as plain text in the run dir.
INSTRUCTION_FILE = "learned_instruction.txt"


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """Resolved settings of one ``mtg baseline`` run.

    ``method_config`` is a ``PromptOptConfig``, ``CoproConfig``, ``MiproConfig`` or
    ``GepaConfig`` (the method's own optimizer knobs). For GEPA, ``optimizer_engine``
    is the reflection engine (``--reflection-engine``). Test seeds, limit, task seed, scoring and
    the test evaluation's sampling come from ``protocol``.
    """

    out: str
    method: str
    method_config: Any
    task: str = "synthetic_word_sorting"
    engine: str = DEFAULT_ENGINE
    optimizer_engine: str | None = None
    engine_opts: tuple[str, ...] = ()
    data_file: str | None = None
    protocol: Protocol = DEFAULT_PROTOCOL
    cache: str | None = None
    no_cache: bool = False

    def __post_init__(self) -> None:
        if not self.out:
            raise UserError("--out RUN_DIR is required")
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.protocol, Protocol):
            raise UserError(f"protocol must be a Protocol, got {type(self.protocol).__name__}")
        object.__setattr__(self, "task", normalize_task_spec(self.task))  # a task file: its absolute path

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.protocol.seeds

    @property
    def limit(self) -> int | None:
        return self.protocol.limit

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without secret engine options."""
        d = dataclasses.asdict(self)
        d["engine_opts"] = public_engine_opts(self.engine_opts)
        d["method_config"] = self.method_config.to_dict()
        d["protocol"] = self.protocol.to_dict()
        return d


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="run a prompt-optimization baseline (prompt_opt, copro, miprov2, gepa) and test it")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--task", default="synthetic_word_sorting", metavar="NAME|FILE.yaml", help=task_help())
    p.add_argument("--data-file", default=None, metavar="FILE", help="load the task from a local file")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    add_protocol_args(p)
    g = p.add_argument_group("optimization (method settings, not protocol)")
    g.add_argument("--optimization-seed", type=int, default=0, help="seed of the optimization run (default: 0)")
    g.add_argument("--prompt-temperature", type=float, default=None,
                   help="DSPy's prompt / GEPA's reflection model (default: the protocol's --optimizer-temperature "
                        "if given, else 0.7; GEPA 1.0)")
    g = p.add_argument_group("prompt_opt (TextGrad)")
    g.add_argument("--batch-size", type=int, default=3, help="default: %(default)s (TextGrad's)")
    g.add_argument("--epochs", type=int, default=3, help="default: %(default)s (TextGrad's)")
    g.add_argument("--steps-per-epoch", type=int, default=4,
                   help="minibatches per epoch (TextGrad breaks after the 4th); 0: whole epochs (default: %(default)s)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after N minibatches")
    g.add_argument("--val-seeds", default="0", help="validation seeds (default: %(default)s)")
    g.add_argument("--initial-system-prompt", default=None, metavar="TEXT|@FILE",
                   help="default: TextGrad's BBH task description without its answer-format sentence")
    g.add_argument("--template", default=None, metavar="TEXT|@FILE",
                   help=f"answer prefix; '' for none, as TextGrad (default: the task's inference_template, "
                        f"else {DEFAULT_TEMPLATE!r})")
    g = p.add_argument_group("DSPy (copro, miprov2, gepa)")
    g.add_argument("--num-threads", type=int, default=16, help="DSPy threads, coalesced into batches (default: %(default)s)")
    g.add_argument("--max-errors", type=int, default=None, help="DSPy error budget (default: unlimited)")
    g.add_argument("--no-json-fallback", action="store_true",
                   help="no JSON-adapter re-ask of unparsable task-model outputs (optimization and test alike)")
    g.add_argument("--breadth", type=int, default=10, help="COPRO; default: %(default)s")
    g.add_argument("--depth", type=int, default=3, help="COPRO; default: %(default)s")
    g.add_argument("--init-temperature", type=float, default=None, help="COPRO 1.4 / MIPROv2 1.0 by default")
    g.add_argument("--auto", default=None, choices=("light", "medium", "heavy", "none"),
                   help="MIPROv2 / GEPA budget preset; default: light (GEPA: unless --max-metric-calls)")
    g.add_argument("--max-bootstrapped-demos", type=int, default=4, help="MIPROv2; default: %(default)s")
    g.add_argument("--max-labeled-demos", type=int, default=4, help="MIPROv2; default: %(default)s")
    g.add_argument("--num-candidates", type=int, default=None, help="MIPROv2 with --auto none")
    g.add_argument("--num-trials", type=int, default=None, help="MIPROv2 with --auto none")
    g.add_argument("--minibatch-size", type=int, default=35, help="MIPROv2; default: %(default)s")
    g.add_argument("--no-data-aware-proposer", action="store_true", help="MIPROv2: do not summarize the data")
    g = p.add_argument_group("GEPA (method settings, not protocol; docs: mtg_local/baselines/gepa.py)")
    g.add_argument("--reflection-engine", default=None, metavar="SPEC",
                   help="engine of GEPA's reflection model (default: the --engine one)")
    g.add_argument("--max-metric-calls", type=int, default=None, metavar="N",
                   help="GEPA budget in single-example program evaluations (instead of --auto). GEPA checks it "
                        "before each iteration, so it can overshoot: the seed's validation (one call per validation "
                        "question) is always spent, and the last iteration may pass N by up to 2 x "
                        "--reflection-minibatch-size + the validation size (a merge: 5 + the validation size)")
    g.add_argument("--reflection-minibatch-size", type=int, default=3, help="train examples per reflection; default: %(default)s")
    g.add_argument("--candidate-selection", default="pareto", choices=("pareto", "current_best"),
                   help="how GEPA picks the parent to improve; default: %(default)s")
    g.add_argument("--no-merge", action="store_true", help="no merges of two candidates of the Pareto front")
    g.add_argument("--max-merge-invocations", type=int, default=5, help="default: %(default)s")
    g.add_argument("--no-format-failure-feedback", action="store_true",
                   help="do not show the reflection model completions that missed DSPy's output format")
    p.add_argument("--no-progress", action="store_true",
                   help="accepted for grid files that pass it to every run (this command shows no bars)")
    add_engine_args(p, optimizer=True)
    p.set_defaults(func=run)


def method_config_from_args(args: argparse.Namespace, protocol: Protocol = DEFAULT_PROTOCOL) -> Any:
    """The method's config dataclass from parsed arguments (imports dspy only for DSPy methods).

    The task model's sampling is the protocol's (prompt_opt reads all of its sampling from
    the protocol when it runs, so its config holds method settings only).
    """
    try:
        if args.method == "prompt_opt":
            from mtg_local.baselines.prompt_optimization import PromptOptConfig

            if importlib.util.find_spec("textgrad") is None:
                raise UserError("--method prompt_opt needs textgrad; install it with: pip install textgrad")
            template = read_text_arg(args.template, "--template")
            return PromptOptConfig(
                batch_size=args.batch_size, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch or None,
                max_steps=args.max_steps, template=template,
                initial_system_prompt=read_text_arg(args.initial_system_prompt, "--initial-system-prompt"),
                val_seeds=parse_seeds(args.val_seeds), seed=args.optimization_seed,
            )
        prompt_t = args.prompt_temperature if args.prompt_temperature is not None else args.optimizer_temperature
        if prompt_t is None:
            prompt_t = 1.0 if args.method == "gepa" else 0.7  # GEPA's reflection setting (gepa.py docstring)
        common = dict(
            temperature=protocol.temperature, max_tokens=protocol.max_tokens,
            prompt_temperature=prompt_t,
            prompt_max_tokens=protocol.optimizer_max_tokens, num_threads=args.num_threads,
            max_errors=args.max_errors, json_fallback=not args.no_json_fallback, seed=args.optimization_seed,
        )
        if args.method == "copro":
            from mtg_local.baselines.copro import CoproConfig

            init = 1.4 if args.init_temperature is None else args.init_temperature
            return CoproConfig(breadth=args.breadth, depth=args.depth, init_temperature=init, **common)
        if args.method == "gepa":
            return _gepa_config(args, common)
        from mtg_local.baselines.miprov2 import MiproConfig

        return MiproConfig(
            auto=None if args.auto == "none" else (args.auto or "light"),
            max_bootstrapped_demos=args.max_bootstrapped_demos, max_labeled_demos=args.max_labeled_demos,
            num_candidates=args.num_candidates, num_trials=args.num_trials, minibatch_size=args.minibatch_size,
            init_temperature=1.0 if args.init_temperature is None else args.init_temperature,
            data_aware_proposer=not args.no_data_aware_proposer, **common,
        )
    except ImportError as e:
        raise UserError(f"--method {args.method} needs {e.name or e}; install it with: pip install -e '.[dspy]'") from e
    except ValueError as e:
        raise UserError(f"bad {args.method} setting: {e}") from e


def _gepa_config(args: argparse.Namespace, common: dict[str, Any]) -> Any:
    from mtg_local.baselines.gepa import GepaConfig

    if args.max_metric_calls is not None and args.auto not in (None, "none"):
        raise ValueError(f"give --auto {args.auto} or --max-metric-calls {args.max_metric_calls}, not both")
    auto = None if args.max_metric_calls is not None or args.auto == "none" else (args.auto or "light")
    return GepaConfig(
        auto=auto, max_metric_calls=args.max_metric_calls, reflection_minibatch_size=args.reflection_minibatch_size,
        candidate_selection=args.candidate_selection, use_merge=not args.no_merge,
        max_merge_invocations=args.max_merge_invocations, format_failure_feedback=not args.no_format_failure_feedback,
        **common,
    )


def _optimizer_spec(args: argparse.Namespace) -> str | None:
    """``--optimizer-engine``, or GEPA's ``--reflection-engine`` (the same role: the engine that writes prompts)."""
    reflection = getattr(args, "reflection_engine", None)
    if reflection is None:
        return args.optimizer_engine
    if args.method != "gepa":
        raise UserError(f"--reflection-engine is GEPA's; --method {args.method} takes --optimizer-engine")
    if args.optimizer_engine is not None and args.optimizer_engine != reflection:
        raise UserError(f"--reflection-engine {reflection} and --optimizer-engine {args.optimizer_engine} "
                        "name GEPA's reflection engine twice; give one")
    return reflection


def config_from_args(args: argparse.Namespace) -> BaselineConfig:
    """The run's config from parsed ``mtg baseline`` arguments (also used by ``mtg grid``)."""
    protocol = protocol_from_args(args)
    return BaselineConfig(
        out=args.out, method=args.method, method_config=method_config_from_args(args, protocol), task=args.task,
        engine=args.engine, optimizer_engine=_optimizer_spec(args), engine_opts=tuple(args.engine_opt),
        data_file=args.data_file, protocol=protocol, cache=args.cache, no_cache=args.no_cache,
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        with RunDirLock(cfg.out):  # one process per run dir, as eval and train (released by the kernel on death)
            results = run_baseline(cfg)
    except Interrupted as e:
        print(f"mtg baseline: {e}", file=sys.stderr)
        return e.exit_code
    instruction = INSTRUCTION_FILE if cfg.method != "prompt_opt" else None
    summary.end_of_run(summary.result_line(results, cfg.out),
                       summary.baseline_summary(results, cfg.out, instruction_file=instruction))
    return exit_code(results, "baseline", cfg.out)


def run_baseline(
    cfg: BaselineConfig, *, engine: Engine | None = None, optimizer_engine: Engine | None = None,
    stop: StopFlag | None = None,
) -> dict[str, Any]:
    """Optimizes, tests over seeds and writes the run dir; returns the results.json body.

    Args:
        cfg: the run's settings.
        engine: a ready task/forward engine (not closed here); default: built from the spec.
        optimizer_engine: a ready optimizer/prompt engine; default: from the spec, else ``engine``.
        stop: the stop flag to honour (``mtg grid`` passes its own); default: a
            new one set by SIGUSR1/SIGTERM/SIGINT.
    """
    task = load_task(cfg.task, cfg.protocol, data_file=cfg.data_file)
    splits = task.splits().limited(cfg.limit)
    if not splits.train or not splits.val or not splits.test:
        raise UserError(f"{cfg.task} needs non-empty train, val and test splits for {cfg.method}")
    if cfg.method == "prompt_opt":  # the template a run used is recorded, not "the default"
        cfg = dataclasses.replace(cfg, method_config=cfg.method_config.for_task(task))
    run_dir = RunDir(cfg.out).create()
    started, t0 = now_iso(), time.perf_counter()
    cache_path = None if cfg.no_cache else (cfg.cache or run_dir.cache_path)
    with open_run_engines(cfg.engine, cfg.optimizer_engine, cfg.engine_opts, cache_path=cache_path,
                          engine=engine, optimizer_engine=optimizer_engine) as engines:
        context_check(cfg.protocol, engines)
        config = {**cfg.to_dict(), **engines.specs}
        run_dir.write_config(config)
        run_dir.log_event("baseline_start", method=cfg.method, n_train=len(splits.train), n_val=len(splits.val),
                          n_test=len(splits.test), seeds=list(cfg.seeds))
        log_engines(run_dir, forward=engines.forward, optimizer=engines.optimizer)
        meter = UsageMeter(engines.forward_run, engines.optimizer_run)
        common = dict(task=task, method=cfg.method, seeds=cfg.seeds, split="test", n_questions=len(splits.test),
                      config=config, started_at=started, protocol=cfg.protocol, **engines.specs)
        stop = stop if stop is not None else StopFlag()
        try:
            with stop_on_signals(stop, abort_on=ALL_STOP_SIGNALS):  # no boundary to wait for
                engines.probe()  # an engine that is not there: failed in seconds, not after every retry
                if cfg.method == "prompt_opt":
                    body = _prompt_opt(cfg, task, splits, run_dir, engines.forward_run, engines.optimizer_run)
                else:
                    body = _dspy_method(cfg, task, splits, run_dir, engines.forward_run, engines.optimizer_run,
                                        engines.specs, stop)
                if stop:  # DSPy counts refused engine calls as errors and may finish anyway
                    raise Interrupted(f"stopped by {signal_name(stop.signal)}", stop.signal)
            results = results_record(engine_usage=meter.report(), wall_s=time.perf_counter() - t0,
                                     cost_usd=run_cost(engines.specs, meter), **common, **body)
            run_dir.write_results(results)
            run_dir.log_event("baseline_done", accuracy=results["test_accuracy"]["mean"],
                              calls=results["engine_usage"]["calls"])
            return results
        except BaseException as e:
            intr = interruption(e, stop)
            if intr is not None:
                record_interruption(run_dir, intr, resume="the same command (finished generations are served from "
                                    "the run's cache)", results=results_record(
                                        accuracy=None, engine_usage=meter.report(), wall_s=time.perf_counter() - t0,
                                        **common))
                raise intr from (None if intr is e else e)
            failed = results_record(accuracy=None, engine_usage=meter.report(), wall_s=time.perf_counter() - t0,
                                    status="failed", error=f"{type(e).__name__}: {e}", **common)
            run_dir.write_results(failed)
            run_dir.log_event("baseline_failed", error=failed["error"])
            raise


def spec_cost(spec: str, usage: dict[str, Any]) -> float | None:
    """Estimated USD of ``usage``'s tokens on engine ``spec``; None for local or unpriced models."""
    from engines.pricing import estimate_spec_cost

    return estimate_spec_cost(spec, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def run_cost(specs: dict[str, str], meter: UsageMeter) -> float | None:
    """Estimated USD of the run's backend tokens; None unless every engine it used is priced."""
    total = 0.0
    for name in meter.engines:
        cost = spec_cost(specs["engine" if name == "forward" else "optimizer_engine"], meter.delta(name).to_dict())
        if cost is None:
            return None
        total += cost
    return total


def _prompt_opt(cfg, task, splits, run_dir: RunDir, fwd: Engine, opt: Engine) -> dict[str, Any]:
    from mtg_local.baselines.prompt_optimization import optimize_system_prompt

    mc = cfg.method_config
    res = optimize_system_prompt(
        task, splits.train, splits.val, forward_engine=fwd, optimizer_engine=opt, config=mc, protocol=cfg.protocol,
        on_step=lambda h: run_dir.log_event("prompt_opt_step", **{k: h.get(k) for k in ("step", "val_accuracy", "accepted")}),
    )
    outcome = evaluate(task, splits.test, method="zero_shot_cot", seeds=cfg.seeds, forward_engine=fwd,
                       config=cfg.protocol.inner_config(system_prompt=res.system_prompt), template=mc.template,
                       group="test")
    write_trajectories(run_dir, outcome.trajectories, split="test", method="prompt_opt")
    initial = res.history[0]["candidate"] if res.history else None
    return {
        "accuracy": outcome.accuracy,
        "learned": {"loss_prompt": None, "template": mc.template, "system_prompt": res.system_prompt},
        # the template is the fixed half: given by hand unless it is the default
        "prompt_pair": prompt_pair_record({"template": mc.template, "system_prompt": res.system_prompt},
                                          learned=("system_prompt",),
                                          given=("template",) if mc.template != DEFAULT_TEMPLATE else ()),
        "kept_initial": res.system_prompt == initial,
        "history": res.history,
        "val_accuracy": res.val_accuracy,
        "truncated": truncation_summary(outcome.trajectories),
    }


def _dspy_method(cfg, task, splits, run_dir: RunDir, fwd: Engine, opt: Engine, specs: dict[str, str],
                 stop: StopFlag) -> dict[str, Any]:
    from mtg_local.baselines.dspy_program import evaluate_program, instruction_of, make_program

    mc = cfg.method_config
    prompt_engine = None if opt is fwd else opt
    if cfg.method == "copro":
        from mtg_local.baselines.copro import optimize_copro

        res = optimize_copro(task, splits.train, engine=fwd, prompt_engine=prompt_engine, config=mc)
        history = [{"step": c["depth"], "candidate": c["instruction"], "val_accuracy": c["train_accuracy"],
                    "accepted": c["instruction"] == res.instruction, "scored_on": "train"}
                   for c in res.details["candidates"]]
    elif cfg.method == "gepa":
        from mtg_local.baselines.gepa import optimize_gepa

        res = optimize_gepa(task, splits.train, splits.val, engine=fwd, reflection_engine=prompt_engine, config=mc,
                            on_candidate=lambda h: run_dir.log_event(
                                "gepa_reflection_failed" if h.get("failed") else "gepa_candidate", **h), stop=stop)
        history = res.details.pop("history")
    else:
        from mtg_local.baselines.miprov2 import optimize_miprov2

        res = optimize_miprov2(task, splits.train, splits.val, engine=fwd, prompt_engine=prompt_engine, config=mc)
        history = [{"step": t["trial"], "candidate": None,
                    "val_accuracy": None if t["full_eval_score"] is None else t["full_eval_score"] / 100.0,
                    "minibatch_accuracy": None if t["minibatch_score"] is None else t["minibatch_score"] / 100.0,
                    "accepted": None} for t in res.details["trials"]]
    run_dir.log_event(f"{cfg.method}_optimized", wall_s=round(res.wall_s, 3), coalescer=res.coalescer)
    (run_dir.path / INSTRUCTION_FILE).write_text(res.instruction + "\n")
    try:
        res.program.save(str(run_dir.path / "dspy_program.json"))
    except Exception as e:  # noqa: BLE001 - the artifact is also in results.json; note and go on
        run_dir.log_event("dspy_save_failed", error=f"{type(e).__name__}: {e}")
    # All test questions x seeds in one engine call (see dspy_program.evaluate_program).
    test_meter = UsageMeter(fwd)
    ev = evaluate_program(task, res.program, splits.test, seeds=cfg.seeds, engine=fwd,
                          temperature=cfg.protocol.temperature, max_tokens=cfg.protocol.max_tokens,
                          json_fallback=mc.json_fallback)
    run_dir.write_trajectories([{"split": "test", "method": cfg.method, **r} for r in ev.records])
    extra = {}
    if "usage_by_role" in res.details:  # GEPA: optimization requests by role, then the test call
        roles = res.details.pop("usage_by_role")
        roles["test"] = test_meter.report()
        role_specs = {"task": specs["engine"], "reflection": specs["optimizer_engine"], "test": specs["engine"]}
        for role, u in roles.items():
            u["cost_usd"] = spec_cost(role_specs[role], u)
        extra["usage_by_role"] = roles
    return {
        **extra,
        "accuracy": ev.accuracy,
        "learned": {"loss_prompt": None, "template": None, "system_prompt": res.instruction, "demos": res.demos},
        "prompt_pair": prompt_pair_record({"system_prompt": res.instruction}, learned=("system_prompt",), given=()),
        "kept_initial": res.instruction == instruction_of(make_program(task)) and not res.demos,
        "history": history,
        "optimization_wall_s": round(res.wall_s, 3),
        "coalescer": res.coalescer,
        # COPRO's candidates are its history; GEPA's pool (merges included) is kept beside its history.
        "optimizer_details": {k: v for k, v in res.details.items() if k != "candidates" or cfg.method == "gepa"},
    }
