"""One outer-loop update of a learned artifact, and the batched proposal of candidates.

A ``MetaUpdate`` turns the train minibatch's trajectories into a new value for
one artifact (the loss prompt or the inference template). ``propose`` runs any
number of updates together, so each stage is **one** engine call whatever the
number of updates (the joint method has two):

    call 1: the meta evaluations (theta_meta / theta_R) of all updates that need one
    call 2: protocol ``meta_step="backward"`` (the default): the backward calls
            through those evaluations, one per update
    call 3: the TGD steps of all updates that were not skipped

The meta step as the paper writes it (eqs. 6 and 9, appendix A: TextGrad
backpropagation) is ``meta_step="backward"``: the meta evaluation is a language
model call whose output is the loss, so, as TextGrad's backward through such a
call (``_backward_through_llm_base``), a backward call asks for feedback on the
evaluated variable (theta_L or y_T) given that call's conversation (its input, the
meta prompt with the wrong answers, and its output, the meta evaluation); the TGD
step then quotes that conversation and the feedback. Both are the inner loop's
batched TextGrad operations (``mtg_local.textgrad.ops.backward`` with a
``LossContext`` describing the meta-evaluation call, and
``TextualGradientDescent``), so the meta step sends exactly the texts the inner
loop's backward and update calls send. The meta-evaluation call has no system
prompt, so its conversation's system prompt is empty. ``meta_step="direct"`` skips
the backward call: the TGD step's feedback is the meta evaluation itself
(``META_FEEDBACK_CONTEXT``), one call fewer per outer step.

A MAML-style update (eq. 7) has no meta evaluation: its TGD step reads the inner
loop's last gradients directly, under either setting, in the same TGD call. Every
TGD step is TextGrad's own update request; a step without a backward call gets its
<CONTEXT> text (``META_FEEDBACK_CONTEXT``, ``MAML_GRADIENT_CONTEXT``) as its feedback.
Under the protocol's ``meta_prefill_update_tag`` (on by default; ours, TextGrad
prefills nothing) the step's answer starts with ``<IMPROVED_VARIABLE>`` where
the engine can prefill. How these requests differ from what TextGrad's own
backward and TGD send through the same meta-evaluation call is listed in
docs/protocol.md (``meta_step``) and tested in ``tests/test_meta_outer_loops.py``.

A TGD output that was cut off (finish reason "length" or "context_length") is
never a candidate, whatever its tags say; a cut-off meta evaluation or backward
output still feeds the next stage and is recorded (``meta_evaluation_truncated``,
``meta_backward_truncated``, and every call's finish reason under
``finish_reasons``). The TGD output is parsed leniently (``parse_improved``): a
bad candidate costs one validation and is reverted by the outer loop.

Learned loss and Reptile make 3 calls per outer step (2 with ``direct``), MAML 1,
joint 3 (2).

What the meta step is shown. The minibatch's trajectories are question-major
(all seeds of question 1, then question 2, ...), so taking the first
``max_pairs`` of them would show the first question several times and the
last ones not at all (minibatch 3 x 6 seeds, 8 pairs: 6 + 2 + 0). The pairs
are therefore ordered round-robin over the minibatch's questions
(``spread_over_questions``): every distinct question that has a pair appears
once before any question appears a second time under another seed, and so on;
ties keep item order, so the choice is deterministic. At most ``max_pairs``
pairs are shown (default 8, ``MetaConfig.max_meta_pairs``): with the default
minibatch of 3 questions that covers every question with up to 2-3 seeds
each, which is what the meta prompt needs to generalise across questions
rather than across samples of one question, while keeping the meta prompt
short enough for the optimizer's context.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

from engines.base import Engine, GenRequest, SamplingConfig, is_cut_off
from mtg_local.inner_loop import Trajectory
from mtg_local.prompts import meta_prompts as P
from mtg_local.tasks.base import Task
from mtg_local.textgrad import ops
from mtg_local.textgrad.optimizer import TextualGradientDescent
from mtg_local.textgrad.variable import Gradient, LossContext, Variable

TARGETS = ("loss_prompt", "template")


@dataclasses.dataclass(frozen=True)
class Artifacts:
    """What metaTextGrad learns: the loss prompt theta_L and the inference template y_T."""

    loss_prompt: str
    template: str

    def with_value(self, target: str, value: str) -> Artifacts:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        return dataclasses.replace(self, **{target: value})

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifacts:
        return cls(loss_prompt=d["loss_prompt"], template=d["template"])


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A proposed artifact pair and how it was made.

    Attributes:
        label: "loss_prompt", "template" or "both" (joint combination).
        artifacts: the full pair to validate (unchanged parts are the current ones).
        info: per-update record (meta feedback, raw TGD output, parse mode).
    """

    label: str
    artifacts: Artifacts
    info: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class MetaContext:
    """What updates need besides trajectories: the task, the engine, sampling, limits.

    ``meta_step`` is the protocol's: "backward" (a backward call through the meta
    evaluation, then the TGD step) or "direct" (the TGD step from the evaluation).
    ``prefill_tag`` is the protocol's ``meta_prefill_update_tag``: the TGD step's
    answer starts with ``<IMPROVED_VARIABLE>`` where the engine can prefill.
    """

    task: Task
    engine: Engine
    max_tokens: int
    temperature: float
    max_pairs: int
    top_p: float = 1.0
    meta_step: str = "backward"
    prefill_tag: bool = True


class MetaUpdate(abc.ABC):
    """Updates one artifact (``target``) from an inner loop's trajectories."""

    #: "loss_prompt" or "template"
    target: str = ""
    #: role description in the TGD step prompt
    role: str = ""

    @abc.abstractmethod
    def meta_evaluation(self, ctx: MetaContext, current: Artifacts, trajs: Sequence[Trajectory]) -> str | None:
        """The meta-evaluation prompt, "" if this update needs none, None to skip the step."""

    @abc.abstractmethod
    def context(
        self, ctx: MetaContext, current: Artifacts, trajs: Sequence[Trajectory], feedback: str | None
    ) -> str | None:
        """The TGD step's <CONTEXT> from the meta feedback (or the trajectories); None to skip.

        Used when the step makes no backward call: under ``meta_step="direct"``, or for an
        update without a meta evaluation (MAML-style).
        """

    def skip_reason(self) -> str:
        """Why ``meta_evaluation``/``context`` returned None (recorded in the history)."""
        return "no wrong answers in the minibatch"


def spread_over_questions(trajs: Sequence[Trajectory]) -> list[Trajectory]:
    """``trajs`` reordered round-robin over their questions (see the module docstring).

    Round r holds the r-th trajectory of every question, questions in order
    of first appearance; within a question item order is kept.
    """
    by_question: dict[str, list[Trajectory]] = {}
    for t in trajs:
        by_question.setdefault(t.item.example.id, []).append(t)
    rounds = max((len(v) for v in by_question.values()), default=0)
    return [ts[r] for r in range(rounds) for ts in by_question.values() if r < len(ts)]


def wrong_pairs_block(task: Task, trajs: Sequence[Trajectory], max_pairs: int) -> str | None:
    """The numbered Q&A block of up to ``max_pairs`` wrong answers, or None if there are none.

    Wrong answers are taken round-robin over the questions
    (``spread_over_questions``), so every minibatch question with a wrong
    answer is shown before any repeats. Items whose engine calls failed are
    left out: an empty answer says nothing about the loss prompt or template.
    """
    wrong = spread_over_questions([t for t in trajs if t.score < 1.0 and not t.errors])[:max_pairs]
    if not wrong:
        return None
    pairs = [
        P.QA_PAIR.format(
            i=i, question=task.format_question(t.item.example), response=t.final_answer, answer=t.item.example.answer
        )
        for i, t in enumerate(wrong, start=1)
    ]
    return P.QA_PAIR_SEPARATOR.join(pairs)


def parse_improved(text: str) -> tuple[str | None, str]:
    """The value between <IMPROVED_VARIABLE> tags, and how it was found.

    Small models often drop the tags, so parsing is lenient (a bad candidate
    costs one validation and is reverted by the outer loop): both tags ->
    "tags"; only the opening tag -> the rest of the text ("open_tag"); no tag ->
    the whole text ("untagged"). An empty value gives ``(None, "empty")``.
    """
    start = text.find(P.IMPROVED_START_TAG)
    if start >= 0:
        body = start + len(P.IMPROVED_START_TAG)
        end = text.find(P.IMPROVED_END_TAG, body)
        stop = end if end >= 0 else len(text)
        # A prefilled tag that the model wrote again: take the text after the last one.
        last = text.rfind(P.IMPROVED_START_TAG, body, stop)
        if last >= 0:
            body = last + len(P.IMPROVED_START_TAG)
        value, mode = text[body:stop], ("tags" if end >= 0 else "open_tag")
    else:
        value, mode = text, "untagged"
    value = value.strip()
    return (value, mode) if value else (None, "empty")


def _sampling(ctx: MetaContext, seed: int) -> SamplingConfig:
    return SamplingConfig(temperature=ctx.temperature, top_p=ctx.top_p, max_tokens=ctx.max_tokens, seed=seed)


def normalize_value(target: str, value: str) -> str:
    """Templates are response prefixes: they end with one space, like the paper's initial one."""
    return value.rstrip() + " " if target == "template" else value


def _variable(u: MetaUpdate, current: Artifacts) -> Variable:
    """The learned artifact as a TextGrad variable; a template as theta_R shows it (no trailing space)."""
    value = getattr(current, u.target)
    return Variable(value.strip() if u.target == "template" else value, u.role)


def propose(
    updates: Sequence[MetaUpdate],
    ctx: MetaContext,
    current: Artifacts,
    trajs: Sequence[Trajectory],
    *,
    step: int,
    combine: bool = False,
) -> tuple[list[Candidate], dict[str, Any]]:
    """Runs ``updates`` together, one engine call per stage (see the module docstring).

    Args:
        updates: at most one per target.
        ctx: task, optimizer engine, meta sampling settings and ``meta_step``.
        current: the artifacts the minibatch was run with.
        trajs: the minibatch trajectories (item order).
        step: outer step (1-based); also the meta requests' seed, so a retried
            step with a sampling temperature > 0 does not hit the cache.
        combine: also propose the combination of all successful updates ("both").

    Returns:
        (candidates in update order [+ "both"], info per target for the history).
    """
    sampling = _sampling(ctx, step)
    info: dict[str, dict[str, Any]] = {u.target: {} for u in updates}
    live: list[MetaUpdate] = []
    evals: list[tuple[MetaUpdate, GenRequest]] = []
    for u in updates:
        prompt = u.meta_evaluation(ctx, current, trajs)
        if prompt is None:
            info[u.target]["skipped"] = u.skip_reason()
            continue
        live.append(u)
        if prompt:
            evals.append((u, GenRequest.chat(prompt, sampling=sampling, id=f"meta-eval-{step}-{u.target}")))
    feedback: dict[str, str | None] = {u.target: None for u in live}
    variables = {u.target: _variable(u, current) for u in live}
    losses: list[tuple[MetaUpdate, Variable]] = []
    if evals:
        for (u, req), res in zip(evals, ctx.engine.generate([r for _, r in evals])):
            rec = info[u.target]
            if not res.ok:
                rec["skipped"] = f"meta evaluation failed: {res.error}"
                live.remove(u)
                continue
            feedback[u.target] = rec["meta_feedback"] = res.text
            # A meta evaluation cut off at its token limit still feeds the next stage: it is
            # feedback, not a candidate, and its first part still says what to change; the
            # candidate it leads to is validated like any other. It is recorded.
            rec["meta_evaluation_truncated"] = is_cut_off(res.finish_reason)
            rec.setdefault("finish_reasons", {})["meta_evaluation"] = res.finish_reason
            if ctx.meta_step == "backward":
                assert req.messages is not None
                call = LossContext(evaluated=variables[u.target], loss_prompt=req.messages[-1].content,
                                   loss_input=req.messages[-1].content, system_prompt="")
                losses.append((u, Variable(res.text, P.META_EVALUATION_ROLE, requires_grad=False,
                                           loss_context=call, finish_reason=res.finish_reason)))
    if losses:
        errors = ops.backward(ctx.engine, [lv for _, lv in losses], samplings=sampling,
                              ids=[f"meta-bwd-{step}-{u.target}" for u, _ in losses])
        for (u, _), error in zip(losses, errors):
            rec = info[u.target]
            if error is not None:
                rec["skipped"] = f"meta backward failed: {error}"
                live.remove(u)
                continue
            g = variables[u.target].gradients[-1]
            rec["meta_gradient"] = g.text
            rec["meta_backward_truncated"] = is_cut_off(g.finish_reason)
            rec.setdefault("finish_reasons", {})["meta_backward"] = g.finish_reason
    stepped: list[MetaUpdate] = []
    for u in list(live):
        var = variables[u.target]
        if not var.gradients:  # no backward call: a TGD step straight from the context
            context = u.context(ctx, current, trajs, feedback[u.target])
            if context is None:
                info[u.target]["skipped"] = u.skip_reason()
                continue
            var.gradients.append(Gradient(text=context))  # TextGrad's update request, this as its feedback
        stepped.append(u)
    candidates: list[Candidate] = []
    if stepped:
        # The protocol's meta_prefill_update_tag (default on, ours: small models then rarely lose
        # the tag) prefills the opening tag where the engine can; TextGrad's TGD prefills nothing.
        tgd = TextualGradientDescent([variables[u.target] for u in stepped], engine=ctx.engine,
                                     prefill_tag=ctx.prefill_tag)
        outcomes = tgd.step(samplings=sampling, ids=[f"meta-tgd-{step}-{u.target}" for u in stepped])
        for u, out in zip(stepped, outcomes):
            rec = info[u.target]
            if out.engine_error:
                rec["skipped"] = f"TGD step failed: {out.error}"
                continue
            rec["tgd_output"] = out.raw
            rec.setdefault("finish_reasons", {})["meta_tgd"] = out.finish_reason
            if is_cut_off(out.finish_reason):
                # A prompt cut off mid-text is never a candidate: no validation call is spent on it.
                where = "the context" if out.finish_reason == "context_length" else "max_tokens"
                rec["skipped"] = f"TGD step output cut off at {where}"
                rec["tgd_truncated"] = True
                continue
            value, mode = parse_improved(out.raw)
            rec["parse"] = mode
            if value is None:
                rec["skipped"] = "TGD step gave an empty value"
                continue
            value = normalize_value(u.target, value)
            if value == getattr(current, u.target):
                rec["skipped"] = "TGD step returned the unchanged value"
                continue
            candidates.append(Candidate(u.target, current.with_value(u.target, value), rec))
    if combine and len(candidates) > 1:
        both = current
        for c in candidates:
            both = both.with_value(c.label, getattr(c.artifacts, c.label))
        candidates.append(Candidate("both", both, {}))
    return candidates, info
