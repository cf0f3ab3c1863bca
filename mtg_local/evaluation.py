"""Evaluate a method on a split over seeds, and write the run dir's results.

Shared by ``mtg eval``, ``mtg train`` (final test of learned artifacts) and the
baselines: build the N x S items, run the method (one batched inner loop for
all of them), score per seed, measure engine usage, and write
``results.json`` (schema: ``docs/results_schema.md``) and
``trajectories.jsonl``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Sequence
from typing import Any

from engines.base import FINISH_CONTEXT, Engine, Usage, is_cut_off
from engines.errors import UserError
from mtg_local import metrics
from mtg_local.inner_loop import (
    DEFAULT_TEMPLATE,
    PHASES,
    InnerItem,
    InnerLoopConfig,
    Trajectory,
    solution_optimization,
)
from mtg_local.protocol import Protocol, protocol_hash
from mtg_local.runs.health import assess
from mtg_local.runs.run_dir import RunDir
from mtg_local.tasks.base import Example, Task
from mtg_local.zero_shot_cot import zero_shot_cot

#: Methods ``run_method`` knows.
METHODS = ("zero_shot_cot", "solution_opt")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_items(
    examples: Sequence[Example],
    seeds: Sequence[int],
    *,
    loss_prompt: str,
    template: str = DEFAULT_TEMPLATE,
    group: str = "",
) -> list[InnerItem]:
    """The N x S items, question-major: all seeds of question 0, then question 1, ..."""
    return [
        InnerItem(example=ex, seed=int(s), loss_prompt=loss_prompt, template=template, group=group)
        for ex in examples
        for s in seeds
    ]


def run_method(
    method: str,
    task: Task,
    items: Sequence[InnerItem],
    *,
    forward_engine: Engine,
    optimizer_engine: Engine | None = None,
    config: InnerLoopConfig,
    progress: bool = False,
) -> list[Trajectory]:
    """Runs ``method`` ("zero_shot_cot" or "solution_opt") on ``items``; trajectories in item order."""
    if method == "zero_shot_cot":
        return zero_shot_cot(task, items, engine=forward_engine, config=config, progress=progress)
    if method == "solution_opt":
        return solution_optimization(
            task, items, forward_engine=forward_engine, optimizer_engine=optimizer_engine, config=config,
            progress=progress,
        )
    raise UserError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


@dataclasses.dataclass
class EvalOutcome:
    """Trajectories of one evaluation and their accuracy over seeds."""

    trajectories: list[Trajectory]
    per_seed: dict[int, float]
    accuracy: dict[str, Any]  # metrics.summarize(per_seed)


def evaluate(
    task: Task,
    examples: Sequence[Example],
    *,
    method: str,
    seeds: Sequence[int],
    forward_engine: Engine,
    optimizer_engine: Engine | None = None,
    config: InnerLoopConfig,
    loss_prompt: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    group: str = "",
    progress: bool = False,
) -> EvalOutcome:
    """Runs ``method`` on every (example, seed) in one batched loop and scores per seed.

    Args:
        task: the task (formats, extracts, scores).
        examples: the questions (e.g. the first N of the test split).
        method: "zero_shot_cot" or "solution_opt".
        seeds: sampling seeds; each question is answered once per seed.
        forward_engine / optimizer_engine: engines (optimizer defaults to forward).
        config: inner-loop settings.
        loss_prompt: theta_L (default: ``task.initial_loss_prompt``).
        template: the inference template y_T.
        group: tag recorded on every item.
        progress: show the phase-level progress bar.
    """
    items = make_items(
        examples, seeds, loss_prompt=loss_prompt or task.initial_loss_prompt, template=template, group=group
    )
    trajs = run_method(
        method, task, items, forward_engine=forward_engine, optimizer_engine=optimizer_engine, config=config,
        progress=progress,
    )
    per_seed = metrics.accuracy_by_seed(trajs)
    return EvalOutcome(trajs, per_seed, metrics.summarize(per_seed))


def truncation_summary(trajectories: Sequence[Trajectory]) -> dict[str, int]:
    """Calls cut off, per inner-loop phase and in total, and how many of them by the context.

    Returns:
        ``{"forward": n, "loss": n, "backward": n, "update": n, "total": n, "context": n}``
        (results.json's ``truncated``): the phase counts and ``total`` count calls cut off
        at max_tokens (finish_reason "length") or by the context ("context_length");
        ``context`` is the part of ``total`` cut off by the context, where a larger
        max_tokens does not help (a shorter prompt or a longer ``max_model_len`` does).
        A truncated forward answer usually lost its ``Answer:`` line and scores 0, so a
        non-zero count means the numbers are not to be trusted.
    """
    out = {p: 0 for p in PHASES}
    by_context = 0
    for t in trajectories:
        for phase, reasons in t.finish_reasons.items():
            out[phase] = out.get(phase, 0) + sum(is_cut_off(r) for r in reasons)
            by_context += sum(r == FINISH_CONTEXT for r in reasons)
    out["total"] = sum(out.values())
    out["context"] = by_context
    return out


class UsageMeter:
    """Engine usage since construction, for engines that may be shared and already used.

    ``report()`` gives the schema's ``engine_usage``: the sum over distinct
    engines, plus ``engines`` (per-engine, keyed "forward"/"optimizer") when
    the forward and optimizer engines differ.
    """

    def __init__(self, forward_engine: Engine, optimizer_engine: Engine | None = None) -> None:
        self.engines: dict[str, Engine] = {"forward": forward_engine}
        if optimizer_engine is not None and optimizer_engine is not forward_engine:
            self.engines["optimizer"] = optimizer_engine
        self._start = {k: e.usage for k, e in self.engines.items()}

    def delta(self, name: str) -> Usage:
        now, start = self.engines[name].usage, self._start[name]
        d = Usage()
        for f in dataclasses.fields(Usage):
            setattr(d, f.name, getattr(now, f.name) - getattr(start, f.name))
        return d

    def report(self) -> dict[str, Any]:
        total = Usage()
        per: dict[str, Any] = {}
        for name in self.engines:
            d = self.delta(name)
            total.add(d)
            per[name] = d.to_dict()
        out = total.to_dict()
        if total.errors:
            # The engine keeps its first error since it was built; a shared engine that had
            # failed before this meter started may name that older error (still a real one).
            out["first_error"] = next(
                (e.first_error for k, e in self.engines.items() if self.delta(k).errors and e.first_error), None
            )
        if len(per) > 1:
            out["engines"] = per
        return out


def results_record(
    *,
    task: Task,
    method: str,
    engine: str,
    optimizer_engine: str | None,
    seeds: Sequence[int],
    split: str,
    n_questions: int,
    accuracy: dict[str, Any] | None,
    engine_usage: dict[str, Any],
    wall_s: float,
    config: dict[str, Any],
    started_at: str,
    status: str = "complete",
    learned: dict[str, str | None] | None = None,
    history: list[dict[str, Any]] | None = None,
    cost_usd: float | None = None,
    truncated: dict[str, int] | None = None,
    protocol: Protocol | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A results.json body in the schema of ``docs/results_schema.md`` (without schema_version).

    ``truncated`` is ``truncation_summary`` of the scored trajectories; None
    where the method has none (DSPy baselines), recorded as null.

    ``protocol`` is recorded as the top-level ``protocol`` object, its
    ``settings_hash`` (what ``mtg report`` groups tables by) and ``protocol_hash``
    (the settings and the task's identity, ``mtg_local.protocol.task_hash_part``);
    ``task_id`` is the task's identity id (``Task.identity``).

    A "complete" status is checked against the failed requests in ``engine_usage``
    (``mtg_local.runs.health``): it becomes "degraded" or "failed" there, and
    ``failed_requests`` says how many of how many, with the first error.
    """
    empty = {"mean": 0.0, "std": 0.0, "per_seed": {}, "n": 0}
    health = assess(engine_usage)
    if status == "complete" and not health.ok:
        status = health.status
    if health.errors:
        extra.setdefault("failed_requests", health.record())
    info = task.describe()
    identity = info.get("identity") if isinstance(info.get("identity"), dict) else None
    proto = {"protocol": protocol.to_dict(), "protocol_hash": protocol_hash(protocol, task=identity),
             "settings_hash": protocol_hash(protocol)} if protocol else {}
    return {
        "status": status,
        "task": task.name,
        "task_info": info,
        **({"task_id": identity["id"]} if identity else {}),
        "method": method,
        "engine": engine,
        "optimizer_engine": optimizer_engine or engine,
        "seeds": [int(s) for s in seeds],
        "split": split,
        "n_questions": n_questions,
        **proto,
        "test_accuracy": accuracy if accuracy is not None else empty,
        "engine_usage": engine_usage,
        "cost_usd": cost_usd,
        "truncated": truncated,
        "wall_s": round(wall_s, 3),
        "config": config,
        "learned": learned or {"loss_prompt": None, "template": None, "system_prompt": None},
        "history": history or [],
        "started_at": started_at,
        "finished_at": now_iso(),
        **extra,
    }


def write_trajectories(run_dir: RunDir, trajectories: Sequence[Trajectory], *, split: str, method: str) -> None:
    """Writes trajectories.jsonl: one ``Trajectory.to_dict()`` per line, plus split and method."""
    run_dir.write_trajectories([{"split": split, "method": method, **t.to_dict()} for t in trajectories])
