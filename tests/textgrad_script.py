"""Helpers to run real TextGrad and this project side by side on one scripted engine.

Both sides talk to a ``FakeEngine`` whose responder (``script``) answers from
the request's text alone, so the same prompt gets the same answer on either
side and the two runs stay in step: TextGrad through ``TextGradEngine`` (our
adapter, which records every call TextGrad makes on the fake engine's
``.batches``), this project directly. ``sent`` turns the recorded requests into
comparable records and ``compare`` lists every difference.

``run_test_time_training`` is the per-item loop of TextGrad's
``evaluation/solution_optimization.py`` with real ``textgrad`` objects. Other
TextGrad scripts (prompt optimization) get their re-expression here too.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from engines.base import GenRequest
from engines.coalescer import CoalescerConfig
from engines.fake_engine import FakeEngine
from mtg_local.prompts import textgrad_prompts as P

#: Words of a scripted answer: more than 20, so TextGrad's short value elides the middle.
_FILLER = ("we read the question and check each option against what we know about the topic before "
           "we write the final line").split()  # fmt: skip


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def script(req: GenRequest) -> str:
    """A phase-aware answer determined by the request's messages alone (not ids, seeds or sampling).

    Loss, backward and update calls are told apart by their system prompts
    (TextGrad's); anything else is a forward call. An update answers with a
    well-formed ``<IMPROVED_VARIABLE>`` body (without the start tag when it was
    prefilled), a forward call with a long answer ending in an ``Answer:`` line
    that depends on the question alone: the forward system prompt is a protocol
    setting on which the two sides may differ, and the answers should not.
    """
    assert req.messages is not None
    system = req.messages[0].content if req.messages[0].role == "system" else None
    tag = _tag("\x00".join(m.content for m in req.messages))
    if system == P.LOSS_SYSTEM_PROMPT:
        return f"Evaluation {tag}: the second step does not follow from the first; check it again."
    if system == P.BACKWARD_SYSTEM_PROMPT:
        return f"Feedback {tag}: justify the second step and keep the final line in the asked format."
    if system == P.OPTIMIZER_SYSTEM_PROMPT:
        body = f"Improved {tag}: " + " ".join(_FILLER) + "\nAnswer: B"
        start = "" if req.response_prefix.endswith(P.IMPROVED_VARIABLE_START) else P.IMPROVED_VARIABLE_START
        return f"{start}{body}{P.IMPROVED_VARIABLE_END}"
    return f"Answer {_tag(req.messages[-1].content)}: " + " ".join(_FILLER) + "\nAnswer: C"


class ScriptedEngine(FakeEngine):
    """A fake engine playing ``script``; ``.sent`` records every request as callers sent it.

    (``.batches`` holds what reached the backend: identical greedy requests of
    one call, e.g. two seeds of one question, are generated once, ``engines.dedup``.)
    """

    def __init__(self) -> None:
        super().__init__(script, name="textgrad-script")
        self.sent: list[GenRequest] = []

    def generate(self, requests: Any, /, **kwargs: Any) -> Any:
        self.sent.extend(requests)
        return super().generate(requests, **kwargs)


def scripted_engine() -> ScriptedEngine:
    """A ``ScriptedEngine``."""
    return ScriptedEngine()


def textgrad_engine(fake: FakeEngine) -> Any:
    """TextGrad's engine over ``fake``, sampling as TextGrad's ``ChatOpenAI`` does by default.

    ``ChatOpenAI._generate_from_single_prompt(..., temperature=0, max_tokens=2000,
    top_p=0.99)``: the values every call of TextGrad's scripts uses.
    """
    from engines.adapters.textgrad_engine import TextGradEngine

    return TextGradEngine(fake, temperature=0.0, max_tokens=2000, top_p=0.99,
                          coalescer_config=CoalescerConfig(window_s=0.0))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sent:
    """One request as the model receives it (ids and seeds aside)."""

    system: str | None
    user: str
    response_prefix: str
    temperature: float
    top_p: float
    max_tokens: int


def sent(req: GenRequest) -> Sent:
    """The comparable record of a two-message request."""
    assert req.messages is not None
    roles = [m.role for m in req.messages]
    assert roles in (["system", "user"], ["user"]), roles
    system = req.messages[0].content if roles[0] == "system" else None
    s = req.sampling
    return Sent(system, req.messages[-1].content, req.response_prefix, s.temperature, s.top_p, s.max_tokens)


@dataclasses.dataclass(frozen=True)
class Full:
    """Everything of a request the model's output depends on, but the seed.

    Every message with its role (no system message is no entry, not an empty one),
    the response prefix, and the sampling. The seed is left out: each side derives
    its own (TextGrad's OpenAI calls carry none), and where it matters (temperature
    > 0) the tests check ours against the protocol separately.
    """

    messages: tuple[tuple[str, str], ...]
    response_prefix: str
    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]


def full(req: GenRequest) -> Full:
    """The ``Full`` record of a chat request."""
    assert req.messages is not None
    s = req.sampling
    return Full(tuple((m.role, m.content) for m in req.messages), req.response_prefix, s.temperature, s.top_p,
                s.max_tokens, tuple(s.stop or ()))  # fmt: skip


def assert_same_requests(ours: Sequence[GenRequest], theirs: Sequence[GenRequest], where: str) -> None:
    """The two sides sent the same full requests, each as many times (a multiset; order aside)."""
    a, b = Counter(map(full, ours)), Counter(map(full, theirs))
    if a == b:
        return
    only_ours, only_theirs = list((a - b).elements()), list((b - a).elements())
    lines = [f"{where}: ours sent {sum(a.values())} requests, TextGrad {sum(b.values())}; "
             f"{len(only_ours)} of ours and {len(only_theirs)} of TextGrad's have no match"]  # fmt: skip
    if only_ours and only_theirs:
        x, y = only_ours[0], only_theirs[0]
        for name in ("response_prefix", "temperature", "top_p", "max_tokens", "stop"):
            if getattr(x, name) != getattr(y, name):
                lines.append(f"{name}: ours {getattr(x, name)!r}, TextGrad {getattr(y, name)!r}")
        if x.messages != y.messages:
            lines.append(f"roles: ours {[r for r, _ in x.messages]}, TextGrad {[r for r, _ in y.messages]}")
            ours_text = "\n".join(f"[{r}] {c}" for r, c in x.messages).splitlines()
            their_text = "\n".join(f"[{r}] {c}" for r, c in y.messages).splitlines()
            lines += itertools.islice(difflib.unified_diff(their_text, ours_text, "textgrad", "ours", n=1,
                                                           lineterm=""), 40)  # fmt: skip
    raise AssertionError("\n".join(lines))


def requests(fake: ScriptedEngine) -> list[GenRequest]:
    """Every request sent to ``fake``, in the order they were sent."""
    return list(fake.sent)


def compare(ours: dict[Any, Sent], theirs: dict[Any, Sent], *, fields: Iterable[str] | None = None) -> list[str]:
    """Every difference between two keyed request sets, as readable lines (empty: identical).

    Args:
        ours / theirs: key (e.g. ``("loss", step, item)``) -> request.
        fields: the ``Sent`` fields to compare (default: all).
    """
    names = list(fields) if fields is not None else [f.name for f in dataclasses.fields(Sent)]
    out = []
    for key in sorted(set(ours) | set(theirs), key=_call_order):
        if key not in ours or key not in theirs:
            out.append(f"{key}: only {'ours' if key in ours else 'TextGrad'} sent it")
            continue
        for name in names:
            a, b = getattr(ours[key], name), getattr(theirs[key], name)
            if a != b:
                out.append(f"{key} {name} differs:\n  ours:     {_excerpt(a, b)}\n  TextGrad: {_excerpt(b, a)}")
    return out


_PHASE_ORDER = {"forward": 0, "loss": 1, "backward": 2, "update": 3}


def _call_order(key: Any) -> tuple:
    """(phase, step, item) keys in the order the calls happen; other keys by their text."""
    if isinstance(key, tuple) and len(key) == 3 and key[0] in _PHASE_ORDER:
        return (0, key[1], _PHASE_ORDER[key[0]], key[2], "")
    return (1, 0, 0, 0, str(key))


def assert_same(ours: dict[Any, Sent], theirs: dict[Any, Sent], *, fields: Iterable[str] | None = None) -> None:
    """Fails with the first differences (in call order) if ``compare`` finds any."""
    diffs = compare(ours, theirs, fields=fields)
    assert not diffs, f"{len(diffs)} differences; the first:\n" + "\n".join(diffs[:3])


def _excerpt(a: Any, b: Any, width: int = 120) -> str:
    """``a`` around its first difference from ``b``."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return repr(a)
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, i - width // 2)
    return f"...{a[lo:lo + width]!r}... (first difference at character {i})"


def run_test_time_training(
    question: str,
    test_time_objective: Callable[[Any], Any],
    *,
    engine: Any,
    steps: int,
    role: str,
    constraint: str,
    system_prompt: str | None,
    answer_start: str = "",
) -> list[str]:
    """``run_test_time_training`` of TextGrad's ``evaluation/solution_optimization.py`` with real textgrad.

    The zero-shot answer of ``get_zeroshot_answer`` (``BlackboxLLM`` under
    ``system_prompt``), then ``steps`` times zero_grad, the test-time loss,
    ``backward`` and a ``TextualGradientDescent`` step with ``constraint``. The
    script sets a global backward engine; here ``backward`` gets ``engine``
    (same calls, no global state). ``answer_start`` is prepended to the
    zero-shot answer, as the paper's template starts ours (TextGrad cannot
    prefill). The role descriptions of the fixed system prompt and question
    never reach a request.

    Returns:
        The predictions: the zero-shot answer and the answer after each step.
    """
    from engines.adapters.common import import_textgrad

    tg = import_textgrad()
    system = None if system_prompt is None else tg.Variable(system_prompt, requires_grad=False,
                                                            role_description="system prompt")  # fmt: skip
    model = tg.BlackboxLLM(engine, system)
    zero_shot = model(tg.Variable(question, requires_grad=False, role_description="question"))
    instance = tg.Variable(answer_start + zero_shot.value, requires_grad=True, role_description=role)
    optimizer = tg.TextualGradientDescent(engine=engine, parameters=[instance], constraints=[constraint])
    predictions = [instance.value]
    for _ in range(steps):
        optimizer.zero_grad()
        loss = test_time_objective(instance)
        loss.backward(engine)
        optimizer.step()
        predictions.append(instance.value)
    return predictions
