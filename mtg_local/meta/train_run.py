"""``run_train``: one resumable meta-training run in a run directory.

Sets up the run dir (config.json, events.jsonl), the task splits, the engines
(wrapped in ``RUN_DIR/cache.sqlite`` unless the cache is off), stop signals
(``mtg_local.runs.interrupt``), runs ``OuterLoop`` and writes results.json (the core fields of
``mtg eval``, docs/results_schema.md, plus "learned", "artifacts", "prompt_pair" (the
whole pair the test used: each text learned, given by hand or the default, which
``mtg eval --from-run`` carries over), "kept_initial" and "history") and the learned
artifacts as plain text files:
``RUN_DIR/learned_loss_prompt.txt`` / ``RUN_DIR/learned_template.txt``.
A multi-task run (``task`` "A,B") adds "tasks" and "per_task" (each task's test
accuracy) to results.json; its "test_accuracy" is the mean over tasks per seed.
"""

from __future__ import annotations

import time
from typing import Any

from engines.base import Engine
from engines.cache import CachedEngine, GenerationCache
from engines.errors import UserError
from engines.gpu_memory import split_engine_options
from engines.registry import create_engine
from mtg_local.barrier_free import check_item_schedule
from mtg_local.evaluation import UsageMeter, now_iso, results_record
from mtg_local.evaluation import truncation_summary
from mtg_local.inner_loop import DEFAULT_TEMPLATE
from mtg_local.meta.meta_config import MetaConfig
from mtg_local.meta.meta_update import Artifacts
from mtg_local.meta.outer_loop import OuterLoop, StopFlag, TrainState
from mtg_local.runs.engine_events import log_engines
from mtg_local.runs.interrupt import Interrupted, interruption, record_interruption, stop_on_signals
from mtg_local.protocol import check_context, load_task, protocol_diff, protocol_hash
from mtg_local.runs.run_dir import RESULTS_SCHEMA_VERSION, RunDir, read_json
from mtg_local.runs.transfer import prompt_pair_record
from mtg_local.tasks.base import Splits, Task
from mtg_local.tasks.multi_task import MultiTask

#: config.json keys that may differ between a run and its resumption.
_RESUME_FREE = ("out", "progress", "engine_opts", "cache", "no_cache", "schedule")
LOSS_PROMPT_FILE = "learned_loss_prompt.txt"
TEMPLATE_FILE = "learned_template.txt"


def _engine_opts(items: tuple[str, ...]) -> dict[str, Any]:
    from engines.registry import parse_engine_opts

    return parse_engine_opts(list(items))


def _cost(config: MetaConfig, meter: UsageMeter) -> float | None:
    """Estimated USD of this session's backend tokens; None unless every engine is priced."""
    from engines.pricing import estimate_cost

    total = 0.0
    for name in meter.engines:
        spec = config.engine if name == "forward" else (config.optimizer_engine or config.engine)
        backend, _, model = spec.partition(":")
        u = meter.delta(name)
        cost = estimate_cost(model, u.prompt_tokens, u.completion_tokens) if backend == "openai" else None
        if cost is None:
            return None
        total += cost
    return total


def load_training_task(config: MetaConfig) -> tuple[Task, Splits, dict[str, Splits]]:
    """The run's task (a ``MultiTask`` for several), its limited splits, and the splits per task."""
    if len(config.tasks) == 1:
        task = load_task(config.task, config.protocol, data_file=config.data_file)
        splits = task.splits().limited(config.limit)
        return task, splits, {config.task: splits}
    multi = MultiTask([load_task(n, config.protocol, data_file=config.data_file_of(n)) for n in config.tasks],
                      limit=config.limit)
    return multi, multi.splits(), multi.task_splits()


def _check_resumable(rd: RunDir, config: MetaConfig) -> None:
    stored = read_json(rd.config_path).get("train", {}) if rd.config_path.exists() else {}
    mine = config.to_dict()
    diff = [k for k in mine if k not in _RESUME_FREE and k != "protocol" and k in stored and stored[k] != mine[k]]
    if isinstance(stored.get("protocol"), dict):
        diff += [f"protocol.{k}" for k in protocol_diff(stored["protocol"], mine["protocol"])]
    if diff:
        raise UserError(f"{rd.path} holds a run with other settings ({', '.join(diff)}); use another --out")


def run_train(
    config: MetaConfig,
    *,
    engine: Engine | None = None,
    optimizer_engine: Engine | None = None,
    resume: bool = False,
    stop: StopFlag | None = None,
) -> dict[str, Any]:
    """Runs (or, with ``resume``, continues) meta-training; returns results.json's content.

    Args:
        config: the run's settings (``config.out`` is the run dir).
        engine: forward engine to use instead of creating ``config.engine``
            (tests pass the shared session engine). Not closed here.
        optimizer_engine: likewise for ``config.optimizer_engine``; default:
            the forward engine.
        resume: continue from RUN_DIR/checkpoint.json; without it an existing
            checkpoint is an error (the run dir holds another run).
        stop: a stop flag to poll; default: one set by SIGUSR1/SIGTERM/SIGINT
            (``mtg_local.runs.interrupt``).

    Raises:
        UserError: bad settings, an occupied run dir, or empty splits.
        Interrupted: a stop signal arrived (``Preempted`` at a stage boundary);
            the checkpoint of the last completed stage is on disk and
            results.json says "interrupted".
    """
    if config.schedule == "item":  # before a model is loaded or the run dir is written
        check_item_schedule(engine or config.engine, optimizer_engine or config.optimizer_engine)
    t0 = time.perf_counter()
    started = now_iso()
    rd = RunDir(config.out).create()
    checkpoint = rd.read_checkpoint()
    if checkpoint is not None and not resume:
        raise UserError(f"{rd.path} already holds a run (checkpoint.json); continue it with --resume {rd.path}")
    if resume:
        _check_resumable(rd, config)

    task, splits, parts = load_training_task(config)
    if resume:  # the same task file or registered name, but its definition or data changed since
        stored = (read_json(rd.config_path).get("task") or {}).get("identity") if rd.config_path.exists() else None
        if isinstance(stored, dict) and stored.get("id") not in (None, task.identity().get("id")):
            raise UserError(f"{rd.path}: the task's definition or data changed since the run started "
                            f"(identity {stored.get('id')} -> {task.identity().get('id')}); use another --out")
    for task_name, part in parts.items():
        for name in ("val", "test") + (("train",) if config.outer_steps else ()):
            if not part.get(name):
                raise UserError(f"the {name} split of task {task_name!r} is empty")
    start = Artifacts(config.initial_loss_prompt or task.initial_loss_prompt,
                      config.initial_template or task.inference_template or DEFAULT_TEMPLATE)
    if checkpoint is None:
        state = TrainState(completed_step=-1, best=start)
        rd.write_config({"command": "train", "train": config.to_dict(),
                         "protocol_hash": protocol_hash(config.protocol, task=task.identity()),
                         "inner_loop": config.inner_config().to_dict(), "task": task.describe(),
                         "splits": {s: len(splits.get(s)) for s in ("train", "val", "test")},
                         **({"splits_per_task": {n: {s: len(p.get(s)) for s in ("train", "val", "test")}
                                                 for n, p in parts.items()}} if len(parts) > 1 else {}),
                         "initial": start.to_dict(), "created_at": started})
        rd.log_event("start", method=config.method, outer_steps=config.outer_steps)
    else:
        state = TrainState.from_dict(checkpoint)
        rd.log_event("resume", completed_step=state.completed_step, tested=state.test is not None)

    own: list[Engine] = []
    # The engines built here share one GPU: split its memory (engines.gpu_memory).
    build_opt = optimizer_engine is None and bool(config.optimizer_engine) and config.optimizer_engine != config.engine
    built = [s for s, b in ((config.engine, engine is None), (config.optimizer_engine, build_opt)) if b]
    opts = iter(split_engine_options(built, _engine_opts(config.engine_opts)))
    if engine is None:
        engine = create_engine(config.engine, **next(opts))
        own.append(engine)
    if optimizer_engine is None:
        if build_opt:
            optimizer_engine = create_engine(config.optimizer_engine, **next(opts))
            own.append(optimizer_engine)
        else:
            optimizer_engine = engine
    try:
        check_context(config.protocol, {"forward": engine, "optimizer": optimizer_engine}, meta=True)
    except ValueError as e:
        for e_own in own:
            e_own.close()
        raise UserError(str(e)) from e
    log_engines(rd, forward=engine, optimizer=optimizer_engine)
    cache = None if config.no_cache else GenerationCache(config.cache or rd.cache_path)
    fwd = CachedEngine(engine, cache) if cache is not None else engine
    opt = fwd if optimizer_engine is engine else (CachedEngine(optimizer_engine, cache) if cache is not None else optimizer_engine)
    meter = UsageMeter(fwd, opt)

    stop = stop if stop is not None else StopFlag()
    loop = OuterLoop(config, task, splits, forward_engine=fwd, optimizer_engine=opt, run_dir=rd, state=state, stop=stop)
    try:
        with stop_on_signals(stop):
            try:
                for e_own in own:  # an engine that is not there: failed in seconds (Engine.probe)
                    e_own.probe()
                state = loop.run()
            except BaseException as e:
                intr = interruption(e, stop)
                if intr is None:
                    raise
                # The checkpoint on disk is the last completed stage's (an aborted
                # stage is replayed from the cache on resume).
                ckpt = rd.read_checkpoint() or {}
                record_interruption(rd, intr, resume=f"mtg train --resume {rd.path}", results={
                    "method": config.method, "config": config.to_dict(),
                    "completed_step": ckpt.get("completed_step", -1), "history": ckpt.get("history", [])})
                if intr is e:
                    raise
                raise intr from e
    except Interrupted:
        raise
    except Exception as e:
        rd.write_results({"status": "failed", "error": f"{type(e).__name__}: {e}", "method": config.method,
                          "config": config.to_dict(), "protocol": config.protocol.to_dict(),
                          "protocol_hash": protocol_hash(config.protocol, task=task.identity()),
                          "settings_hash": protocol_hash(config.protocol), "history": state.history})
        rd.log_event("failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        if cache is not None:
            cache.close()
        for e in own:
            e.close()

    learns = {"loss_prompt": config.method in ("learned_loss", "joint"),
              "template": config.method in ("maml", "reptile", "joint")}
    if learns["loss_prompt"]:
        (rd.path / LOSS_PROMPT_FILE).write_text(state.best.loss_prompt + "\n")
    if learns["template"]:
        (rd.path / TEMPLATE_FILE).write_text(state.best.template + "\n")
    test = state.test or {}
    usage = meter.report()
    multi = {}
    if isinstance(task, MultiTask):
        multi = {"tasks": task.names, "per_task": {
            n: {"test_accuracy": r["accuracy"], "n_questions": r["n_questions"], "truncated": r["truncated"]}
            for n, r in (test.get("per_task") or {}).items()}}
    results = results_record(
        task=task,
        method=config.method,
        engine=engine.spec or config.engine,
        optimizer_engine=optimizer_engine.spec or config.optimizer_engine or config.engine,
        seeds=config.seeds,
        split="test",
        n_questions=test.get("n_questions", len(splits.test)),
        accuracy=test.get("accuracy"),
        engine_usage=usage,
        cost_usd=_cost(config, meter),
        truncated=test.get("truncated"),
        wall_s=time.perf_counter() - t0,
        config=config.to_dict(),
        started_at=started,
        protocol=config.protocol,
        learned={
            "loss_prompt": state.best.loss_prompt if learns["loss_prompt"] else None,
            "template": state.best.template if learns["template"] else None,
            "system_prompt": None,
        },
        history=state.history,
        artifacts=state.best.to_dict(),
        prompt_pair=prompt_pair_record(
            state.best.to_dict(), learned=tuple(k for k, v in learns.items() if v),
            given=tuple(k for k, v in (("loss_prompt", config.initial_loss_prompt),
                                       ("template", config.initial_template)) if v is not None)),
        kept_initial=state.best_step == 0,
        initial_val_accuracy=next((h["val_accuracy"] for h in state.history if h["step"] == 0), None),
        best_val_accuracy=state.best_val,
        best_step=state.best_step,
        resumed=checkpoint is not None,
        schedule=config.schedule,
        **multi,
    )
    rd.write_results(results)
    rd.log_event("done", test_accuracy=results["test_accuracy"], engine_usage=results["engine_usage"])
    return {"schema_version": RESULTS_SCHEMA_VERSION, **results}
