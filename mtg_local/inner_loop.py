"""Batched TextGrad solution optimization: the inner loop of metaTextGrad.

CONTRACT (fixed by the lead; the outer-loop code in mtg_local/meta/ is written
against exactly these names -- implement the bodies, do not rename fields or
parameters; adding optional fields/params is fine). The results.json schema is
in docs/results_schema.md.

Each phase (initial answer, loss, backward, update) for ALL items is ONE
engine.generate call: 1 + 3*T calls for any number of items, including items
of different groups / loss prompts / templates. ``InnerLoopConfig.schedule="item"``
instead runs these phases per item, barrier-free (``mtg_local.barrier_free``).

Per step t = 1..T, for every active item: zero_grad, evaluate the answer with
the item's loss prompt (loss), turn the evaluation into feedback on the answer
(backward), rewrite the answer from the feedback under the task's answer
format (TGD step). A failed update keeps the previous answer and the item goes
on; frozen items (``freeze_when``) drop out of later phases.

``prompt_layout`` picks how those three requests are built
(``mtg_local.textgrad.layout``): "textgrad" (TextGrad's own requests, from the
installed package) or "chained" (each extends the previous conversation); the
trajectories record the same things either way.

Seeds: ``item.seed`` is the forward request's ``SamplingConfig.seed``; the
loss/backward/update requests of step t get ``derive_seed(item.seed, phase, t)``
(a stable hash), so every request of a run is reproducible and distinct.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from engines.base import Engine, SamplingConfig, is_cut_off
from mtg_local import metrics
from mtg_local.runs import progress as progress_display
from mtg_local.tasks.base import Example, Task
from mtg_local.textgrad import TextualGradientDescent, Variable, backward, forward, loss
# PROMPT_LAYOUTS ("textgrad": TextGrad's own requests; "chained": each phase extends the previous
# conversation) and UPDATE_PARSINGS are re-exported for the protocol and the CLI.
from mtg_local.textgrad.layout import PROMPT_LAYOUTS, get_layout
from mtg_local.textgrad.optimizer import StepOutcome
from mtg_local.textgrad.update_parsing import UPDATE_PARSINGS

#: The paper's initial inference template y_T (section 2.2).
DEFAULT_TEMPLATE = "Let's break this down step by step. First, "

#: Conditions ``freeze_when`` may combine with commas ("never" alone: none).
#: "error": an engine error for the item (its last good answer stays);
#: "unchanged": an accepted update returned the same answer (a fixed point:
#: with greedy optimizer phases further steps would repeat it).
FREEZE_CONDITIONS = ("error", "unchanged")

#: The inner loop's phases, as recorded in ``Trajectory.finish_reasons``.
PHASES = ("forward", "loss", "backward", "update")

#: How the phases of several items are scheduled (``InnerLoopConfig.schedule``):
#: "phase": one engine call per phase for all items (waits for the slowest);
#: "item": each item runs its own phases in a thread, on an engine that serves
#: concurrent calls (``mtg_local.barrier_free``). Same requests, same outputs.
SCHEDULES = ("phase", "item")


def parse_freeze_when(value: str) -> frozenset[str]:
    """The set of freeze conditions in ``value`` ("never", "error", "unchanged", "error,unchanged")."""
    if value.strip() == "never":
        return frozenset()
    parts = frozenset(p.strip() for p in value.split(",") if p.strip())
    bad = parts - set(FREEZE_CONDITIONS)
    if not parts or bad:
        raise ValueError(
            f"freeze_when must be 'never' or a comma-separated subset of {FREEZE_CONDITIONS}, got {value!r}"
        )
    return parts


def derive_seed(seed: int, phase: str, step: int) -> int:
    """The seed of an optimizer-phase request: a stable hash of (seed, phase, step), < 2**31."""
    digest = hashlib.sha256(f"mtg-local:{seed}:{phase}:{step}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class InnerLoopConfig:
    """Settings of the inner loop (validated in __post_init__)."""

    steps: int = 2  # T, >= 0
    temperature: float = 0.7  # forward (initial answer) sampling temperature
    optimizer_temperature: float = 0.0  # loss / backward / update phases
    top_p: float = 1.0  # nucleus mass of every call
    max_tokens: int = 512  # forward answer
    optimizer_max_tokens: int = 512
    system_prompt: str | None = None  # forward system prompt (trained by TextGrad prompt optimization)
    freeze_when: str = "never"  # early freezing policy
    majority_vote: bool = False
    #: majority-vote tie rule: "last" (latest tied answer) or "first" (TextGrad's multimode()[0])
    vote_tie: str = "last"
    #: an answer with nothing extractable votes as its own label (TextGrad counts None)
    vote_counts_none: bool = False
    #: prefill "<IMPROVED_VARIABLE>" as the update's response prefix where the engine can
    prefill_update_tag: bool = True
    #: how update outputs are read (``UPDATE_PARSINGS``: "tolerant", or TextGrad's "textgrad")
    update_parsing: str = "tolerant"
    #: start each forward answer with the item's inference template (False: no response prefix)
    inference_template: bool = True
    #: reject an update whose answer the task cannot extract when the previous one had one
    keep_answer_format: bool = True
    #: "phase" or "item" (``SCHEDULES``): how requests are sent, not what they are -- so it is
    #: not a protocol setting and does not change the protocol hash
    schedule: str = "phase"
    #: loss/backward/update prompt layout (one of ``PROMPT_LAYOUTS``)
    prompt_layout: str = "textgrad"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")
        for name in ("temperature", "optimizer_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        for name in ("max_tokens", "optimizer_max_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.vote_tie not in ("first", "last"):
            raise ValueError(f"vote_tie must be 'first' or 'last', got {self.vote_tie!r}")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt must be a string or None, got {type(self.system_prompt).__name__}")
        if self.prompt_layout not in PROMPT_LAYOUTS:
            raise ValueError(f"prompt_layout must be one of {', '.join(PROMPT_LAYOUTS)}, got {self.prompt_layout!r}")
        if self.update_parsing not in UPDATE_PARSINGS:
            raise ValueError(f"update_parsing must be one of {', '.join(UPDATE_PARSINGS)}, got {self.update_parsing!r}")
        parse_freeze_when(self.freeze_when)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class InnerItem:
    """One (question, seed) pair with the loss prompt and template it is optimized with."""

    example: Example
    seed: int
    loss_prompt: str  # theta_L used by the evaluation phase
    template: str  # y_T: response prefix of the initial answer
    group: str = ""  # candidate / variant tag, so several candidates share one batch


@dataclasses.dataclass
class Trajectory:
    """Everything the inner loop produced for one item (what the outer loops feed on).

    Lists are aligned by step: ``answers[t]`` is the answer after step t
    (``answers[0]`` the initial one), ``evaluations[t-1]``, ``gradients[t-1]``
    and ``update_errors[t-1]`` belong to step t. A frozen item has fewer steps.
    """

    item: InnerItem
    answers: list[str]  # full responses, step 0..T (answers[0] starts with the template)
    evaluations: list[str]  # loss outputs, one per step 1..T
    gradients: list[str]  # textual gradients (feedback on the answer), one per step
    update_errors: list[str | None]  # None, or why the update was rejected (previous kept)
    errors: list[str]  # engine errors for this item
    final_answer: str  # answers[-1], or the majority-vote answer
    extracted: str | None  # task.extract_answer(final_answer)
    score: float  # task.score(final_answer, example): 0.0 or 1.0
    frozen_at: int | None = None  # step after which the item was frozen, or None
    #: phase ("forward", "loss", "backward", "update") -> finish reason of each call made for
    #: this item, in step order ("stop", "length" = cut off at max_tokens, "context_length" =
    #: cut off by the context, "error", ...)
    finish_reasons: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {p: [] for p in PHASES})

    @property
    def truncated(self) -> int:
        """How many of this item's calls were cut off ("length" or "context_length")."""
        return sum(is_cut_off(r) for rs in self.finish_reasons.values() for r in rs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (one line of trajectories.jsonl)."""
        ex = self.item.example
        return {
            "example_id": ex.id,
            "question": ex.question,
            "gold": ex.answer,
            "seed": self.item.seed,
            "group": self.item.group,
            "loss_prompt": self.item.loss_prompt,
            "template": self.item.template,
            "answers": list(self.answers),
            "evaluations": list(self.evaluations),
            "gradients": list(self.gradients),
            "update_errors": list(self.update_errors),
            "errors": list(self.errors),
            "frozen_at": self.frozen_at,
            "finish_reasons": {k: list(v) for k, v in self.finish_reasons.items()},
            "truncated": self.truncated,
            "final_answer": self.final_answer,
            "extracted": self.extracted,
            "score": self.score,
        }


def solution_optimization(
    task: Task,
    items: Sequence[InnerItem],
    *,
    forward_engine: Engine,
    optimizer_engine: Engine | None = None,
    config: InnerLoopConfig,
    progress: bool = False,
    desc: str | None = None,
) -> list[Trajectory]:
    """Batched TextGrad solution optimization; trajectories in item order.

    Exactly 1 + 3*T engine.generate calls for any number of items (fewer only
    when every item of a phase is frozen or has failed earlier in that step)
    under ``config.schedule == "phase"`` (``run_phases``). Under "item" every
    item runs these phases on its own, barrier-free (``mtg_local.barrier_free``):
    1 + 3*T calls of one request per item.

    Args:
        task: formats questions (with the answer format), extracts and scores.
        items: (question, seed, loss prompt, template) tuples, any mix.
        forward_engine: answers the questions (initial answers).
        optimizer_engine: loss, backward and update phases (default: forward_engine).
        config: steps, sampling, layout, freezing, majority vote.
        progress: show a phase-level tqdm bar (an item-level one under "item") on a terminal.
        desc: the bar's label (default: what the loop is: answers only, or the inner loop).

    Returns:
        One ``Trajectory`` per item, ``result[i]`` for ``items[i]``.

    Raises:
        ValueError: schedule "item" on an engine that does not serve concurrent calls.
    """
    if config.schedule == "item":
        from mtg_local.barrier_free import solution_optimization_by_item  # it runs run_phases per item

        return solution_optimization_by_item(
            task, items, forward_engine=forward_engine, optimizer_engine=optimizer_engine, config=config,
            progress=progress,
        )
    return run_phases(task, items, forward_engine=forward_engine, optimizer_engine=optimizer_engine, config=config,
                      progress=progress, desc=desc)  # fmt: skip


def run_phases(
    task: Task,
    items: Sequence[InnerItem],
    *,
    forward_engine: Engine,
    optimizer_engine: Engine | None = None,
    config: InnerLoopConfig,
    progress: bool = False,
    id_offset: int = 0,
    desc: str | None = None,
) -> list[Trajectory]:
    """The inner loop's four phases, each one engine call for every active item.

    Args:
        task / items / forward_engine / optimizer_engine / config / progress / desc: as
            for ``solution_optimization`` (``config.schedule`` is not read here).
        id_offset: request ids number items from here ("fwd-{id_offset + i}"); the
            item schedule runs item i alone with ``id_offset=i``.
    """
    if not config.inference_template:
        items = [dataclasses.replace(it, template="") for it in items]
    items = list(items)
    opt_engine = optimizer_engine or forward_engine
    layout = get_layout(config.prompt_layout)
    freeze = parse_freeze_when(config.freeze_when)
    n = len(items)
    questions = [task.format_question(it.example) for it in items]
    constraints = [task.update_constraints(it.example) for it in items]  # per item: a batch may mix tasks
    # Transient (leave=False): it sits below an outer-step bar and clears when the loop ends.
    desc = desc or ("answers" if config.steps == 0 else f"inner loop T={config.steps}")
    bar = progress_display.bar(total=1 + 3 * config.steps, desc=f"{desc} ({n} items)", unit="phase",
                               enabled=progress, leave=False)

    def opt_sampling(i: int, phase: str, t: int) -> SamplingConfig:
        return SamplingConfig(temperature=config.optimizer_temperature, top_p=config.top_p,
                              max_tokens=config.optimizer_max_tokens, seed=derive_seed(items[i].seed, phase, t))  # fmt: skip

    def phase(name: str, active: list[int], t: int) -> dict[str, list]:
        """Per-item sampling and request ids of one optimizer phase (``t``: the step)."""
        bar.set_postfix_str(f"step {t} {name}")
        pid = {"loss": "loss", "backward": "bwd", "update": "upd"}[name]
        return {"samplings": [opt_sampling(i, name, t) for i in active],
                "ids": [f"{pid}-{t}-{id_offset + i}" for i in active]}  # fmt: skip

    # 1. forward: the initial answers, each starting with its item's template
    bar.set_postfix_str("forward")
    answers = forward(
        forward_engine, questions, templates=[it.template for it in items],
        samplings=[SamplingConfig(temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens,
                                  seed=it.seed) for it in items],
        system_prompts=[config.system_prompt] * n, ids=[f"fwd-{id_offset + i}" for i in range(n)],
    )  # fmt: skip
    bar.update()
    for it, a in zip(items, answers):  # per item: a batch may mix tasks
        a.role_description = task.answer_role_for(it.example)
    trajs = [_start(it, a, freeze) for it, a in zip(items, answers)]

    for t in range(1, config.steps + 1):
        active = [i for i in range(n) if trajs[i].frozen_at is None]
        params = [answers[i] for i in active]
        optimizer = TextualGradientDescent(
            params, engine=opt_engine, constraints=[constraints[i] for i in active],
            prefill_tag=config.prefill_update_tag,
            validate=_format_keeper(task, [items[i].example for i in active]) if config.keep_answer_format else None,
            layout=layout, parsing=config.update_parsing,
        )
        optimizer.zero_grad()
        # 2. loss: each answer judged with its item's theta_L
        losses = loss(opt_engine, params, questions=[questions[i] for i in active],
                      loss_prompts=[items[i].loss_prompt for i in active],
                      system_prompts=[config.system_prompt] * len(active), layout=layout,
                      **phase("loss", active, t))  # fmt: skip
        bar.update()
        # 3. backward: the evaluation turned into feedback on the answer
        grad_errors = backward(opt_engine, losses, layout=layout, **phase("backward", active, t))
        bar.update()
        # 4. update: the answer rewritten from the feedback (TGD step)
        before = [p.value for p in params]
        outcomes = optimizer.step(**phase("update", active, t))
        bar.update()
        for k, i in enumerate(active):
            _record_step(trajs[i], t, losses[k], params[k], grad_errors[k], outcomes[k], before[k], freeze)
    bar.close()

    for tr in trajs:
        _finish(task, tr, config)
    return trajs


def _start(item: InnerItem, answer: Variable, freeze: frozenset[str]) -> Trajectory:
    """A trajectory holding the initial answer (frozen at once on a forward error under "error")."""
    tr = Trajectory(item, [answer.value], [], [], [], [], "", None, 0.0)
    tr.finish_reasons["forward"].append(answer.finish_reason)
    if answer.error is not None:
        tr.errors.append(f"step 0 forward: {answer.error}")
        if "error" in freeze:
            tr.frozen_at = 0
    return tr


def _record_step(tr: Trajectory, t: int, lv: Variable, param: Variable, grad_error: str | None,
                 outcome: StepOutcome, before: str, freeze: frozenset[str]) -> None:  # fmt: skip
    """Appends step ``t`` of one item to its trajectory and freezes it if a condition holds."""
    engine_error = False
    tr.evaluations.append(lv.value)
    tr.gradients.append(param.gradient_text())
    # Truncated loss/backward outputs still feed the next phase (as in TextGrad); they are
    # counted here. Whether a truncated update replaces the answer is the parsing rule's call.
    tr.finish_reasons["loss"].append(lv.finish_reason)
    if lv.error is None:
        tr.finish_reasons["backward"].append(param.gradients[-1].finish_reason if param.gradients else "error")
    if outcome.finish_reason is not None:
        tr.finish_reasons["update"].append(outcome.finish_reason)
    if lv.error is not None:
        tr.errors.append(f"step {t} loss: {lv.error}")
        tr.update_errors.append("skipped: the loss call failed")
        engine_error = True
    elif grad_error is not None:
        tr.errors.append(f"step {t} backward: {grad_error}")
        tr.update_errors.append("skipped: the backward call failed")
        engine_error = True
    else:
        tr.update_errors.append(outcome.error)
        if outcome.engine_error:
            tr.errors.append(f"step {t} update: {outcome.error}")
            engine_error = True
    tr.answers.append(param.value)
    if ("error" in freeze and engine_error) or (
        "unchanged" in freeze and outcome.updated and param.value.strip() == before.strip()
    ):
        tr.frozen_at = t


def _format_keeper(task: Task, examples: list[Example]) -> Callable[[int, str, str], str | None]:
    """Rejects an update that loses the answer format the previous answer had."""

    def validate(k: int, old: str, new: str) -> str | None:
        ex = examples[k]
        if task.extract_answer(new, ex) is None and task.extract_answer(old, ex) is not None:
            return "rejected: the update has no answer in the task's format (the previous one had)"
        return None

    return validate


def _finish(task: Task, tr: Trajectory, config: InnerLoopConfig) -> None:
    """Sets final_answer / extracted / score (majority vote over the trajectory if asked)."""
    ex = tr.item.example
    final = tr.answers[-1]
    if config.majority_vote:
        extracted = [task.extract_answer(a, ex) for a in tr.answers]
        idx = metrics.majority_vote(extracted, tie=config.vote_tie, none_votes=config.vote_counts_none)
        if idx is not None:
            final = tr.answers[idx]
    tr.final_answer = final
    tr.extracted = task.extract_answer(final, ex)
    scored = task.score_item(final, ex)  # a user scorer that raises: 0, its error kept here
    tr.score = float(scored.score)
    if scored.error:
        tr.errors.append(f"scoring: {scored.error}")


# Also provided (same contract):
#   mtg_local/zero_shot_cot.py: zero_shot_cot(task, items, *, engine, config, progress=False)
#                               -> list[Trajectory]  (1 call)
#   mtg_local/metrics.py: accuracy_by_seed(trajectories) -> dict[int, float];
#                         summarize(per_seed) -> {"mean", "std", "per_seed", "n"}
