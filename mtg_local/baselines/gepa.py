"""GEPA (Agrawal et al. 2025, reflective prompt evolution) through DSPy, on our engines.

``optimize_gepa`` runs ``dspy.GEPA`` (unchanged DSPy code over the ``gepa``
package's engine) on the task's chain-of-thought program: it evaluates the
program on minibatches of the train split with a feedback metric built from
the task's own scoring (``make_feedback_metric``), asks the reflection model
for a better instruction from those traces and feedbacks, keeps a candidate
that improves on its minibatch, scores it on the whole validation split, and
returns the candidate with the best validation score (GEPA's Pareto front of
per-example validation scores picks the parents). Every DSPy LM call goes
through a request coalescer, so DSPy's evaluation threads reach the engine as
batches; the task and reflection LMs count their own requests and tokens.

Where GEPA's defaults and this project's protocol differ, we chose:

* **Budget**: GEPA's own knobs, ``auto`` ("light" by default, as for
  MIPROv2) or ``max_metric_calls`` -- method settings, not protocol.
* **Splits**: train for reflection minibatches, validation for the Pareto
  front and the final choice (GEPA's intended use; without a valset it would
  select on the reflection data). The test split is only used afterwards.
* **Task model sampling**: the protocol's ``temperature`` and ``max_tokens``
  (as for COPRO / MIPROv2), one seed per request derived from the
  optimization seed; the test evaluation is the protocol's (its seeds).
* **Reflection model**: ``temperature`` 1.0 (GEPA's documented setting)
  unless the run sets ``--prompt-temperature`` / ``--optimizer-temperature``;
  completion budget the protocol's ``optimizer_max_tokens`` (GEPA suggests
  32k for reasoning models; an instruction fits in far less).
* **Seed**: GEPA's seed (minibatch order, Pareto sampling) is the
  optimization seed (GEPA's default is 0, as ours).
* **Format failures**: a completion the task model wrote without DSPy's field
  markers is scored on its raw text (as in every method here), and shown to the
  reflection model with DSPy-GEPA's format feedback (``add_format_failure_as_feedback``,
  off in DSPy by default; weak local models need it most).
* **Unparsable reflections**: DSPy's proposer asks for JSON; a reply that is
  not JSON is read as the instruction itself (``TolerantJSONAdapter``), as
  the ``gepa`` package's own proposer reads a reply without a fenced block.
* **Failed reflections**: a reflection that raises (an empty instruction, a
  failed request) is recorded -- a history entry with ``failed`` and the error,
  a ``gepa_reflection_failed`` event, ``optimizer_details.reflections`` counts --
  and GEPA's own retry of it is sent with another seed (DSPy's ``rollout_id``),
  so the run's cache cannot answer the retry with the reply that failed
  (``RetryingInstructionProposer``). At reflection temperature 0 the retry
  gets the same text from the model and only helps against a failed request.
* **Resumption**: GEPA's ``log_dir`` (pickled state) is not used; a rerun of
  the same command replays GEPA from the run's generation cache.
* **A dead engine**: when every task request of a GEPA iteration failed, GEPA
  stops (``AllFailedStopper``) instead of spending its budget on failures; the
  run's status then comes from the failed requests (``failed``, not 0 %).
* **A stop signal**: GEPA catches every exception of a reflection (so also the
  ``Interrupted`` a signal raises there); the run's ``StopFlag`` therefore also
  stops GEPA before its next iteration, and ``optimize_gepa`` then raises
  ``Interrupted`` instead of returning a program.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from mtg_local.baselines.dspy_program import (
    DSPyOptimized,
    DSPyRunConfig,
    demos_of,
    dspy_examples,
    dspy_session,
    instruction_of,
    make_program,
    response_text,
)

import dspy  # noqa: E402  (dspy_program set the offline environment first)
from engines.base import Engine  # noqa: E402
from mtg_local.baselines.gepa_callbacks import AllFailedStopper, HistoryRecorder, RetryingInstructionProposer  # noqa: E402
from mtg_local.runs.interrupt import Interrupted, StopFlag, signal_name  # noqa: E402
from mtg_local.baselines.tolerant_chat_adapter import TolerantJSONAdapter  # noqa: E402
from mtg_local.prompts import gepa_prompts as GP  # noqa: E402
from mtg_local.tasks.base import Example, Task  # noqa: E402

AUTO_MODES = ("light", "medium", "heavy")
CANDIDATE_SELECTIONS = ("pareto", "current_best")


def _positive_int(name: str, v: Any, low: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class GepaConfig(DSPyRunConfig):
    """GEPA's knobs (DSPy's defaults unless noted) plus the shared DSPy run settings.

    The prompt model of ``DSPyRunConfig`` is GEPA's reflection model.

    Attributes:
        prompt_temperature: reflection temperature (1.0, GEPA's setting).
        auto: "light", "medium" or "heavy" (DSPy derives the number of metric
            calls from it and the validation size), or None with ``max_metric_calls``.
        max_metric_calls: the budget in program evaluations on single examples
            (only with auto=None). GEPA checks it before each iteration, so a run
            may pass it: the seed's validation (one evaluation per validation
            example) is always spent, and the last iteration may add up to
            2 x ``reflection_minibatch_size`` + the validation size (the parent and
            the proposal on a minibatch, then the validation of an accepted one;
            a merge: up to 5 + the validation size).
        reflection_minibatch_size: train examples per reflection.
        candidate_selection: "pareto" (sample parents from the Pareto front)
            or "current_best".
        use_merge: also propose merges of two candidates of the front.
        max_merge_invocations: most merges tried.
        skip_perfect_score: no reflection on a minibatch the parent solved fully.
        format_failure_feedback: show unparsable task completions to the
            reflection model with a format feedback (DSPy's default: off).
    """

    prompt_temperature: float = 1.0
    auto: str | None = "light"
    max_metric_calls: int | None = None
    reflection_minibatch_size: int = 3
    candidate_selection: str = "pareto"
    use_merge: bool = True
    max_merge_invocations: int = 5
    skip_perfect_score: bool = True
    format_failure_feedback: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.auto is None) == (self.max_metric_calls is None):
            raise ValueError(
                f"give exactly one GEPA budget: auto ({', '.join(AUTO_MODES)}) or max_metric_calls; "
                f"got auto={self.auto!r}, max_metric_calls={self.max_metric_calls!r}"
            )
        if self.auto is not None and self.auto not in AUTO_MODES:
            raise ValueError(f"auto must be one of {AUTO_MODES} or None, got {self.auto!r}")
        if self.max_metric_calls is not None:
            _positive_int("max_metric_calls", self.max_metric_calls)
        _positive_int("reflection_minibatch_size", self.reflection_minibatch_size)
        _positive_int("max_merge_invocations", self.max_merge_invocations, 0)
        if self.candidate_selection not in CANDIDATE_SELECTIONS:
            raise ValueError(f"candidate_selection must be one of {CANDIDATE_SELECTIONS}, got {self.candidate_selection!r}")
        for name in ("use_merge", "skip_perfect_score", "format_failure_feedback"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


def feedback_text(task: Task, response: str, example: Example) -> tuple[float, str]:
    """The task's score of ``response`` and GEPA's feedback.

    The feedback is the task's own when its scorer gives one (a task file's ``python``
    scorer returning ``(score, feedback)``), else ours: the gold answer and what was extracted.
    """
    scored = task.score_item(response, example)
    score = scored.score
    if scored.feedback:
        return score, scored.feedback
    extracted = task.extract_answer(response, example) if response else None
    if extracted is None:
        return score, GP.GEPA_FEEDBACK_NO_ANSWER.format(gold=example.answer)
    template = GP.GEPA_FEEDBACK_CORRECT if score >= 1.0 else GP.GEPA_FEEDBACK_WRONG
    return score, template.format(gold=example.answer, extracted=extracted)


def make_feedback_metric(task: Task, examples: Sequence[Example]):
    """GEPA's metric ``(gold, pred, trace, pred_name, pred_trace) -> dspy.Prediction(score, feedback)``.

    The score is ``task.score`` of the same response text every DSPy method
    scores (``dspy_program.response_text``); the feedback names the gold answer
    and the answer the task extracted (``feedback_text``). The gold ``Example``
    is found by the question text, as in ``dspy_program.make_metric``.
    """
    by_question = {task.format_question(ex): ex for ex in examples}

    def metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        ex = by_question.get(gold.question) or Example(id="", question=gold.question, answer=gold.answer)
        text = response_text(task, getattr(pred, "answer", None), getattr(pred, "raw", "") or "")
        score, feedback = feedback_text(task, text, ex)
        return dspy.Prediction(score=score, feedback=feedback)

    return metric


def optimize_gepa(
    task: Task,
    train: Sequence[Example],
    val: Sequence[Example],
    *,
    engine: Engine,
    reflection_engine: Engine | None = None,
    config: GepaConfig,
    on_candidate: Callable[[dict[str, Any]], None] | None = None,
    stop: StopFlag | None = None,
) -> DSPyOptimized:
    """Runs GEPA (reflect on ``train`` minibatches, select on ``val``) and returns the best program.

    Args:
        task: the task (question format, scoring, feedback).
        train: examples GEPA reflects on.
        val: examples candidates are scored on (the Pareto front and the final choice).
        engine: the task model's engine.
        reflection_engine: the engine of the reflection model (default: ``engine``).
        config: GEPA and run settings.
        on_candidate: called with each history entry as GEPA produces it.
        stop: the run's stop flag (set by a signal); GEPA stops before its next iteration.

    Raises:
        Interrupted: ``stop`` was set during the run.

    Returns:
        The program with the best validation score; ``details`` holds the
        budget, every candidate with its validation score, the reflection
        attempts (``reflections``: attempts, failed, retries), and the usage of
        the task and reflection LMs (``usage_by_role``).
    """
    if not train or not val:
        raise ValueError("GEPA needs training and validation examples")
    t0 = time.perf_counter()
    metric = make_feedback_metric(task, [*train, *val])
    recorder = HistoryRecorder(on_candidate)
    with dspy_session(engine, reflection_engine, config) as session:
        stopper = AllFailedStopper(session.task_lm.counters)
        optimizer = dspy.GEPA(
            metric=metric,
            auto=config.auto,
            max_metric_calls=config.max_metric_calls,
            reflection_minibatch_size=config.reflection_minibatch_size,
            candidate_selection_strategy=config.candidate_selection,
            reflection_lm=session.prompt_lm,
            skip_perfect_score=config.skip_perfect_score,
            add_format_failure_as_feedback=config.format_failure_feedback,
            instruction_proposer=RetryingInstructionProposer(recorder, stop, adapter=TolerantJSONAdapter()),
            use_merge=config.use_merge,
            max_merge_invocations=config.max_merge_invocations,
            num_threads=config.num_threads,
            failure_score=0.0,
            perfect_score=1.0,
            track_stats=True,
            seed=config.seed,
            gepa_kwargs={"callbacks": [recorder], "stop_callbacks": [stopper, lambda state: bool(stop)]},
        )
        program = optimizer.compile(
            make_program(task, trace_failed_parses=True),
            trainset=dspy_examples(task, train),
            valset=dspy_examples(task, val),
        )
    if stop:
        raise Interrupted(f"stopped by {signal_name(stop.signal)}", stop.signal)
    results = program.detailed_results
    candidates = [
        {"idx": i, "instruction": instruction_of(c), "val_accuracy": s, "parents": list(p),
         "discovered_at_metric_call": n}
        for i, (c, s, p, n) in enumerate(zip(results.candidates, results.val_aggregate_scores, results.parents,
                                              results.discovery_eval_counts))
    ]
    history = recorder.finish()
    for h in history:
        h["kept"] = h.get("candidate_idx") == results.best_idx
        if h["candidate"] is None and h.get("candidate_idx") is not None:  # a merge: its text from the pool
            h["candidate"] = candidates[h["candidate_idx"]]["instruction"]
    return DSPyOptimized(
        program=program,
        instruction=instruction_of(program),
        demos=demos_of(program),
        wall_s=time.perf_counter() - t0,
        coalescer=session.coalescer_stats(),
        details={
            "history": history,
            "candidates": candidates,
            "best_idx": results.best_idx,
            "best_val_accuracy": results.val_aggregate_scores[results.best_idx],
            "budget_metric_calls": optimizer.max_metric_calls,
            "metric_calls": results.total_metric_calls,
            "full_val_evals": results.num_full_val_evals,
            "stopped_by_failures": stopper.fired,
            "reflections": dict(recorder.reflections),
            "usage_by_role": session.usage_by_role(("task", "reflection")),
        },
    )
