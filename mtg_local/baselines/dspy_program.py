"""What COPRO, MIPROv2 and GEPA share: the DSPy program, metric, data and batched test evaluation.

* ``make_program(task)``: ``dspy.ChainOfThought`` over ``question -> answer``
  (the answer field's description carries the task's answer format, as in the
  paper's appendix B prompts);
* ``make_metric(task, examples)``: ``task.score`` on the prediction, the same
  scoring as every other method (``response_text`` says how a prediction
  becomes the response text that is scored);
* ``dspy_examples``: our examples as ``dspy.Example``s;
* ``evaluate_program``: the compiled program on N test questions x S seeds
  in **one** ``engine.generate`` call: the prompts are built with DSPy's own
  ``ChatAdapter.format`` from the optimized signature and demos, and the
  completions parsed with ``ChatAdapter.parse``. The completions it cannot
  parse are asked again as DSPy does during optimization (its JSON-adapter
  fallback, ``json_fallback``): the JSON adapter's prompt, same sampling and
  seed, all of them in one more engine call, parsed with ``JSONAdapter.parse``.
  A completion neither adapter parses is scored on its raw text (the last
  one), as ``TaskProgram`` scores it during optimization;
* ``program_from``: the task's program with a given instruction and demos (a
  finished run's, for ``mtg eval --method dspy_program --from-run``).
* ``DSPyRunConfig`` / ``dspy_session``: the settings both optimizers share
  and the DSPy context (task and prompt LMs over request coalescers, so
  DSPy's evaluation threads reach the engine as batched calls; each LM
  counts its own requests and tokens, ``DSPySession.usage_by_role``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from engines.adapters.common import offline_library_env

offline_library_env()

import dspy  # noqa: E402
from dspy.teleprompt.bootstrap_trace import FailedPrediction  # noqa: E402
from dspy.utils.exceptions import AdapterParseError  # noqa: E402

from engines.adapters.dspy_lm import EngineDSPyLM  # noqa: E402
from engines.base import Engine, GenRequest, SamplingConfig  # noqa: E402
from engines.coalescer import CoalescerConfig, RequestCoalescer  # noqa: E402
from mtg_local import metrics  # noqa: E402
from mtg_local.baselines.tolerant_chat_adapter import TolerantChatAdapter  # noqa: E402
from mtg_local.prompts import baseline_prompts as P  # noqa: E402
from mtg_local.tasks.base import Example, Task  # noqa: E402


def make_signature(task: Task) -> type[dspy.Signature]:
    """``question -> answer`` with the task's answer format in the answer description."""
    answer_desc = P.DSPY_ANSWER_DESC_TEMPLATE.format(format_instruction=task.format_instruction).strip()
    return dspy.Signature(
        {
            "question": dspy.InputField(desc=P.DSPY_QUESTION_DESC),
            "answer": dspy.OutputField(desc=answer_desc),
        }
    )


class TaskProgram(dspy.Module):
    """Chain of thought over ``question -> answer``.

    A completion that DSPy cannot parse (weak local models often ignore the
    ``[[ ## field ## ]]`` markers) becomes a prediction with ``answer=None``
    and the raw text in ``raw``, so the metric scores the raw text like any
    other method would, instead of DSPy counting an error (too many of which
    abort an optimizer run).

    With ``trace_failed_parses`` (GEPA), such a call is also put in DSPy's
    trace as DSPy's own ``FailedPrediction`` of the predictor, as DSPy's trace
    bootstrapping does when a program lets the parse error through: the
    reflection then sees the raw completion with a format feedback, while the
    example is still scored on its raw text.
    """

    def __init__(self, signature: type[dspy.Signature], *, trace_failed_parses: bool = False) -> None:
        super().__init__()
        self.prog = dspy.ChainOfThought(signature)
        self.trace_failed_parses = trace_failed_parses

    def forward(self, question: str) -> dspy.Prediction:
        try:
            return self.prog(question=question)
        except AdapterParseError as e:
            raw = str(e.lm_response or "")
            trace = dspy.settings.trace
            if self.trace_failed_parses and trace is not None and dspy.settings.max_trace_size > 0:
                if len(trace) >= dspy.settings.max_trace_size:  # as dspy.Predict keeps its trace
                    trace.pop(0)
                trace.append((self.prog.predict, {"question": question}, FailedPrediction(completion_text=raw)))
            return dspy.Prediction(reasoning="", answer=None, raw=raw)


def make_program(task: Task, *, trace_failed_parses: bool = False) -> TaskProgram:
    return TaskProgram(make_signature(task), trace_failed_parses=trace_failed_parses)


def program_from(task: Task, instruction: str | None = None, demos: Sequence[dict[str, Any]] = ()) -> TaskProgram:
    """The task's program with ``instruction`` (None: DSPy's default) and ``demos`` (plain dicts, as DSPy loads them).

    The answer field keeps this task's description (its answer format): what an
    optimizer learned is the instruction and the demos, as GEPA, COPRO and MIPROv2
    set them (``signature.with_instructions``, ``predictor.demos``).
    """
    program = make_program(task)
    predictor = program.predictors()[0]
    if instruction:
        predictor.signature = predictor.signature.with_instructions(instruction)
    predictor.demos = [dict(d) for d in demos]
    return program


def response_text(task: Task, answer: str | None, raw: str = "") -> str:
    """The response text scored for a prediction.

    The parsed answer field if it already holds the task's answer line,
    else ``"Answer: " + answer`` (the field holds just the answer); the raw
    completion when nothing was parsed.
    """
    if answer is None:
        return raw
    answer = str(answer)
    return answer if task.extract_answer(answer) is not None else f"Answer: {answer}"


def dspy_examples(task: Task, examples: Sequence[Example]) -> list[dspy.Example]:
    """Our examples as DSPy examples (input: the full user question; label: the gold answer)."""
    return [dspy.Example(question=task.format_question(ex), answer=ex.answer).with_inputs("question") for ex in examples]


def make_metric(task: Task, examples: Sequence[Example]):
    """A DSPy metric ``(example, prediction, trace=None) -> float`` that is ``task.score``.

    The gold ``Example`` is found by the question text (the DSPy examples carry
    no extra fields, so nothing else leaks into demos).
    """
    by_question = {task.format_question(ex): ex for ex in examples}

    def metric(example: Any, pred: Any, trace: Any = None) -> float:
        gold = by_question.get(example.question) or Example(id="", question=example.question, answer=example.answer)
        text = response_text(task, getattr(pred, "answer", None), getattr(pred, "raw", "") or "")
        return task.score(text, gold)

    return metric


def instruction_of(program: dspy.Module) -> str:
    """The (optimized) instruction of the program's predictor."""
    return program.predictors()[0].signature.instructions


def demos_of(program: dspy.Module) -> list[dict[str, Any]]:
    """The predictor's demos as plain dicts (JSON-ready)."""
    out = []
    for d in program.predictors()[0].demos:
        items = d.items() if hasattr(d, "items") else dict(d).items()
        out.append({k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in items})
    return out


@dataclasses.dataclass
class ProgramEvaluation:
    """The compiled program's answers on a split over seeds.

    Attributes:
        records: one JSON-ready dict per (question, seed), question-major.
        per_seed: accuracy per seed.
        accuracy: ``metrics.summarize(per_seed)``.
    """

    records: list[dict[str, Any]]
    per_seed: dict[int, float]
    accuracy: dict[str, Any]


def _parse(adapter: Any, signature: Any, text: str) -> dict[str, Any] | None:
    """The adapter's parse of ``text``, or None where it raises (as DSPy's ``_call_postprocess``: empty text fails)."""
    if not text:
        return None
    try:
        return adapter.parse(signature, text)
    except AdapterParseError:
        return None


def evaluate_program(
    task: Task,
    program: dspy.Module,
    examples: Sequence[Example],
    *,
    seeds: Sequence[int],
    engine: Engine,
    temperature: float,
    max_tokens: int,
    json_fallback: bool = True,
) -> ProgramEvaluation:
    """Answers every (question, seed) with the program's prompt in one engine call and scores it.

    Parsing is the optimization's (``TaskProgram`` under ``dspy_session``): DSPy's
    ChatAdapter, then -- with ``json_fallback``, as DSPy's ChatAdapter falls back --
    its JSONAdapter on the completions the chat adapter could not parse (one more
    engine call for all of them: the JSON adapter's prompt, the same sampling and
    seed), then the raw text of the last completion.

    Args:
        task: scores the answers.
        program: a (compiled) ``TaskProgram``; its predictor's signature and
            demos make the prompt.
        examples: the questions.
        seeds: one request per question per seed (the seed is the request's).
        engine: the forward engine (one ``generate`` call, two with the JSON fallback).
        temperature / max_tokens: sampling.
        json_fallback: re-ask unparsable completions through DSPy's JSON adapter.

    Returns:
        Records (``parsed_by``: "chat", "json" or None), accuracy per seed and its summary.
    """
    predictor = program.predictors()[0]
    signature, demos = predictor.signature, list(predictor.demos)
    chat = dspy.ChatAdapter()
    # DSPy's ChatAdapter builds its fallback as JSONAdapter with its own function-calling settings.
    json_adapter = dspy.JSONAdapter(use_native_function_calling=chat.use_native_function_calling,
                                    parallel_tool_calls=chat.parallel_tool_calls)
    requests, keys = [], []
    for ex in examples:
        messages = chat.format(signature, demos, {"question": task.format_question(ex)})
        for s in seeds:
            sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens, seed=int(s))
            requests.append(GenRequest(messages=tuple(messages), sampling=sampling, id=f"test-{ex.id}-s{s}"))
            keys.append((ex, int(s)))
    results = list(engine.generate(requests))
    parsed: list[dict[str, Any] | None] = [_parse(chat, signature, r.text) if r.ok else None for r in results]
    parsed_by: list[str | None] = ["chat" if p is not None else None for p in parsed]
    retry = [i for i, r in enumerate(results) if r.ok and parsed[i] is None] if json_fallback else []
    if retry:
        again = engine.generate([
            GenRequest(messages=tuple(json_adapter.format(signature, demos,
                                                          {"question": task.format_question(keys[i][0])})),
                       sampling=requests[i].sampling, id=f"{requests[i].id}-json") for i in retry])
        for i, r in zip(retry, again):
            results[i] = r
            parsed[i] = _parse(json_adapter, signature, r.text) if r.ok else None
            parsed_by[i] = "json" if parsed[i] is not None else None
    records: list[dict[str, Any]] = []
    scores: dict[int, list[float]] = {int(s): [] for s in seeds}
    retried = set(retry)
    for k, ((ex, s), r) in enumerate(zip(keys, results)):
        answer = parsed[k].get("answer") if parsed[k] is not None else None
        text = response_text(task, answer, r.text) if r.ok else ""
        scored = task.score_item(text, ex) if r.ok else None  # a user scorer that raises: 0, error kept
        score = scored.score if scored is not None else 0.0
        scores[s].append(score)
        records.append(
            {
                "example_id": ex.id,
                "question": ex.question,
                "gold": ex.answer,
                "seed": s,
                "final_answer": r.text,
                "parsed": parsed[k] is not None,
                "parsed_by": parsed_by[k],
                "json_retry": k in retried,
                "scored_text": text,
                "extracted": task.extract_answer(text, ex) if text else None,
                "score": score,
                "errors": [r.error] if r.error else ([f"scoring: {scored.error}"] if scored and scored.error else []),
            }
        )
    per_seed = {s: (sum(v) / len(v) if v else 0.0) for s, v in scores.items()}
    return ProgramEvaluation(records, per_seed, metrics.summarize(per_seed))


# -- running DSPy on our engines ----------------------------------------------
def check_temperature(name: str, value: Any) -> None:
    """Raises ValueError unless ``value`` is a number in [0, 2] (the range every sampler here accepts)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 2):
        raise ValueError(f"{name} must be a number in [0, 2], got {value!r}")


@dataclasses.dataclass(frozen=True)
class DSPyRunConfig:
    """Settings every DSPy-optimizer baseline shares (validated in __post_init__).

    Attributes:
        temperature: task model sampling temperature (optimization and test).
        max_tokens: task model completion budget.
        prompt_temperature: default temperature of the prompt (optimizer) model;
            the optimizers pass their own where they sample candidates.
        prompt_max_tokens: prompt model completion budget.
        num_threads: DSPy evaluation threads; their calls are coalesced into
            batches, so more threads mean bigger engine batches.
        max_errors: DSPy's error budget before it aborts (None: effectively
            unlimited -- a weak local model should lower the score, not abort).
        json_fallback: let DSPy retry unparsable completions with its JSON adapter
            (``evaluate_program`` does the same at test).
        seed: base seed of every optimization request.
        window_s: coalescing window in seconds.
    """

    temperature: float = 0.7
    max_tokens: int = 512
    prompt_temperature: float = 0.7
    prompt_max_tokens: int = 512
    num_threads: int = 16
    max_errors: int | None = None
    json_fallback: bool = True
    seed: int = 0
    window_s: float = 0.02

    def __post_init__(self) -> None:
        for name in ("temperature", "prompt_temperature"):
            check_temperature(name, getattr(self, name))
        for name in ("max_tokens", "prompt_max_tokens", "num_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_errors is not None and (not isinstance(self.max_errors, int) or self.max_errors < 0):
            raise ValueError(f"max_errors must be None or an integer >= 0, got {self.max_errors!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        CoalescerConfig(window_s=self.window_s)  # validates the window

    @property
    def error_budget(self) -> int:
        return self.max_errors if self.max_errors is not None else 10**9

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DSPyOptimized:
    """An optimized DSPy program and what to record about it."""

    program: dspy.Module
    instruction: str
    demos: list[dict[str, Any]]
    wall_s: float
    coalescer: dict[str, Any]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DSPySession:
    """The LMs of one optimization run and the coalescers behind them."""

    task_lm: EngineDSPyLM
    prompt_lm: EngineDSPyLM
    coalescers: list[RequestCoalescer]

    def usage_by_role(self, names: tuple[str, str] = ("task", "prompt")) -> dict[str, Any]:
        """Each LM's own counts (``LMCounters``), keyed by ``names`` (task LM, prompt LM)."""
        return {names[0]: self.task_lm.counters.to_dict(), names[1]: self.prompt_lm.counters.to_dict()}

    def coalescer_stats(self) -> dict[str, Any]:
        """Engine calls made through the coalescers and their sizes (for results.json)."""
        out = {}
        for name, co in zip(("task", "prompt"), self.coalescers):
            s = co.stats
            out[name] = {
                "batches": s.batches,
                "requests": s.requests,
                "mean_batch": round(s.requests / s.batches, 2) if s.batches else 0.0,
                "max_batch": max(s.batch_sizes, default=0),
            }
        return out


@contextlib.contextmanager
def dspy_session(engine: Engine, prompt_engine: Engine | None, config: DSPyRunConfig) -> Iterator[DSPySession]:
    """DSPy LMs over ``engine`` (task) and ``prompt_engine`` (proposals), as DSPy's context.

    One coalescer per distinct engine; both are closed on exit (the engines
    are not). Inside the block ``dspy.settings`` has the task LM, a
    ``TolerantChatAdapter`` (DSPy's ChatAdapter; lenient only for the prompt
    LM's unparsable proposals), ``num_threads`` and the error budget of ``config``,
    and ``sys.stdout`` is redirected to stderr (process-wide, for the block only).
    """
    co = RequestCoalescer(engine, CoalescerConfig(window_s=config.window_s), name="mtg-dspy-task")
    coalescers = [co]
    if prompt_engine is None or prompt_engine is engine:
        pco = co
    else:
        pco = RequestCoalescer(prompt_engine, CoalescerConfig(window_s=config.window_s), name="mtg-dspy-prompt")
        coalescers.append(pco)
    task_lm = EngineDSPyLM(co, temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed)
    prompt_lm = EngineDSPyLM(
        pco, temperature=config.prompt_temperature, max_tokens=config.prompt_max_tokens, seed=config.seed
    )
    # Proposals of a weak prompt model must not abort the optimizer: see TolerantChatAdapter.
    prompt_lm.tolerate_unparsable = True
    adapter = TolerantChatAdapter(use_json_adapter_fallback=config.json_fallback)
    try:
        # DSPy prints LM histories to stdout (COPRO evaluates inspect_history() inside a
        # logger.debug f-string; MIPROv2's proposer in verbose mode); stdout is for our
        # JSON, so they go to stderr.
        with dspy.context(
            lm=task_lm, adapter=adapter, num_threads=config.num_threads, max_errors=config.error_budget
        ), contextlib.redirect_stdout(sys.stderr):
            yield DSPySession(task_lm, prompt_lm, coalescers)
    finally:
        for c in coalescers:
            c.close()
