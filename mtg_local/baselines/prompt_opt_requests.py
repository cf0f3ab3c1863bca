"""TextGrad's own requests for prompt optimization, built by the installed ``textgrad`` code.

``mtg_local.baselines.prompt_optimization`` runs the training step of TextGrad's
``evaluation/prompt_optimization.py`` one phase at a time, each phase one engine
call. The messages of those phases are not written here. Each minibatch step
builds TextGrad's computation graph from real ``textgrad`` objects -- the
system prompt ``Variable``, one ``BlackboxLLM`` forward per question (replaying
the answer our batched forward call produced), one ``StringBasedFunction`` loss
per answer and ``tg.sum`` over them -- and then calls TextGrad's own backward
functions and ``TextualGradientDescent`` prompt builder with a *deferred* engine
that records each request instead of answering it. A phase sends the recorded
requests as one batch; the answers are written into the gradient variables
TextGrad made, and the next phase reads them from there. So every text, role,
short-value rule, gradient context and the choice between TextGrad's "base" and
"chain" backward prompts is the package's.

Where TextGrad leaves something open we choose, and say so:

* the B feedbacks on the system prompt reach the TGD step in minibatch order;
  TextGrad keeps a variable's gradients in a ``set`` of ``Variable`` objects
  hashed by identity, so its order follows memory addresses and varies from run
  to run;
* two texts exist only as local strings inside ``textgrad`` functions (no
  constant to import): the string function's purpose (``fn_purpose`` in
  ``textgrad.tasks.load_task``) and the starting system prompt (the task
  description ``BigBenchHard.__init__`` assigns). They are read from the
  installed package's source at run time (``_assigned_string``), so our tree
  holds no copy and a textgrad that drops them fails loudly here.

Importing this module imports textgrad (a few seconds, for LiteLLM);
``import_textgrad`` keeps its log file out of the working directory.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from engines.adapters.common import import_textgrad

import_textgrad()  # the project's one way in: TextGrad's log never lands in the working directory

import textgrad as tg  # noqa: E402
from textgrad.autograd.string_based_ops import StringBasedFunction  # noqa: E402
from textgrad.defaults import VARIABLE_INPUT_DEFAULT_ROLE  # noqa: E402

from mtg_local.prompts import baseline_prompts as P  # noqa: E402

#: (system prompt, user message) of one request.
Messages = tuple[str, str]


def _assigned_string(func: Callable[..., Any], target: str) -> str:
    """The string literal ``func`` assigns to ``target`` (a name or ``self.attr``) in its source.

    Raises:
        RuntimeError: the installed textgrad has no such assignment, or several different ones.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    found = {
        node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str) and any(ast.unparse(t) == target for t in node.targets)
    }
    if len(found) != 1:
        raise RuntimeError(
            f"textgrad {tg.__version__}: {func.__module__}.{func.__qualname__} assigns {len(found)} distinct "
            f"strings to {target} (expected 1); prompt optimization reads TextGrad's text from there"
        )
    return found.pop()


@functools.cache
def string_function_purpose() -> str:
    """The ``function_purpose`` TextGrad's ``load_task`` gives its ``StringBasedFunction`` losses."""
    from textgrad.tasks import load_task

    return _assigned_string(load_task, "fn_purpose")


@functools.cache
def initial_system_prompt() -> str:
    """TextGrad's starting system prompt for BBH (``train_set.get_task_description()``) less its last sentence.

    The last sentence is the answer format ("... a numerical value", object counting's);
    our tasks put their own answer format into the user message, as every method sees it.
    """
    from textgrad.tasks.big_bench_hard import BigBenchHard

    description = _assigned_string(BigBenchHard.__init__, "self._task_description")
    head, sep, _ = description.rpartition(". ")
    if not sep:
        raise RuntimeError(f"textgrad {tg.__version__}: BigBenchHard's task description has one sentence only")
    return head + "."


class _Replay:
    """A TextGrad engine that answers with a text we already have (our batched forward's answer)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
        return self.text


class _Deferred:
    """A TextGrad engine that records the one request it is given and returns a placeholder answer."""

    def __init__(self) -> None:
        self.request: Messages | None = None

    def __call__(self, prompt: Any, system_prompt: str | None = None, **kwargs: Any) -> str:
        if self.request is not None or not isinstance(prompt, str):
            raise RuntimeError("a TextGrad backward function made an unexpected engine call")
        self.request = (system_prompt or "", prompt)
        return ""


class PromptOptStep:
    """One minibatch step of TextGrad prompt optimization as TextGrad's graph; phase by phase.

    Use: ``loss_backward()`` -> send -> ``set_loss_feedback(texts)`` ->
    ``prompt_backward()`` -> send -> ``set_prompt_feedback(texts)`` -> ``update()``.
    An example whose request failed (text None) drops out of the later phases
    (TextGrad itself would stop with the exception).

    Args:
        system_prompt: the current value of the trained variable.
        examples: per answered question ``(question, answer, gold, score)``: the user
            message the forward call sent, the full answer, the ground truth and the
            task's score of the answer (0 or 1), the loss's value.
    """

    def __init__(self, system_prompt: str, examples: Sequence[tuple[str, str, str, int]]) -> None:
        self.variable = tg.Variable(system_prompt, requires_grad=True, role_description=P.PROMPT_OPT_SYSTEM_ROLE)
        purpose = string_function_purpose()
        self.responses: list[Any] = []
        self.losses: list[Any] = []
        for question, answer, gold, score in examples:
            x = tg.Variable(question, requires_grad=False, role_description=VARIABLE_INPUT_DEFAULT_ROLE)
            y = tg.Variable(gold, requires_grad=False, role_description=P.PROMPT_OPT_GOLD_ROLE)
            response = tg.BlackboxLLM(_Replay(answer), self.variable)(x)
            loss_fn = StringBasedFunction(lambda prediction, ground_truth_answer, s=int(score): s, purpose)
            self.responses.append(response)
            self.losses.append(loss_fn(inputs=dict(prediction=response, ground_truth_answer=y)))
        total = tg.sum(self.losses)
        total.grad_fn(backward_engine=_Deferred())  # TextGrad's sum: passes empty feedback down, no call
        self.alive = [True] * len(examples)
        self._pending: list[tuple[int, Any]] = []  # (example, gradient Variable awaiting its text)
        self._prompt_gradients: dict[int, Any] = {}

    def _run(self, backward: Callable[[int], None], target: Callable[[int], Any]) -> list[Messages]:
        """Runs ``backward(k)`` for every live example with a deferred engine; its request and gradient."""
        messages, self._pending = [], []
        for k in range(len(self.alive)):
            if not self.alive[k]:
                continue
            before = set(map(id, target(k).gradients))
            engine = _Deferred()
            backward(k)(backward_engine=engine)
            (new,) = [g for g in target(k).gradients if id(g) not in before]
            if engine.request is None:
                raise RuntimeError("a TextGrad backward function made no engine call")
            messages.append(engine.request)
            self._pending.append((k, new))
        return messages

    def _set(self, texts: Sequence[str | None]) -> list[tuple[int, Any]]:
        if len(texts) != len(self._pending):
            raise ValueError(f"expected {len(self._pending)} texts (one per request), got {len(texts)}")
        done = []
        for (k, gradient), text in zip(self._pending, texts):
            if text is None:
                self.alive[k] = False
            else:
                gradient.value = text
                done.append((k, gradient))
        self._pending = []
        return done

    def loss_backward(self) -> list[Messages]:
        """Backward through each loss to its answer (TextGrad's string-function backward), live examples in order."""
        return self._run(lambda k: self.losses[k].grad_fn, lambda k: self.responses[k])

    def set_loss_feedback(self, texts: Sequence[str | None]) -> None:
        """The answers of ``loss_backward()``'s requests (None: failed)."""
        self._set(texts)

    def prompt_backward(self) -> list[Messages]:
        """Backward through each forward call to the system prompt (TextGrad's LLM backward)."""
        return self._run(lambda k: self.responses[k].grad_fn, lambda k: self.variable)

    def set_prompt_feedback(self, texts: Sequence[str | None]) -> None:
        """The answers of ``prompt_backward()``'s requests (None: failed)."""
        self._prompt_gradients.update(self._set(texts))

    @property
    def prompt_feedback(self) -> list[str]:
        """The feedbacks on the system prompt, in minibatch order."""
        return [self._prompt_gradients[k].value for k in sorted(self._prompt_gradients)]

    def update(self) -> tuple[Messages, tuple[str, str]] | None:
        """TextGrad's TGD request with every feedback (no constraint), and its tags; None without feedback.

        Returns:
            ``((system, user), (start_tag, end_tag))``.
        """
        if not self._prompt_gradients:
            return None
        # A list in minibatch order where TextGrad iterates a set (see the module docstring).
        self.variable.gradients = [self._prompt_gradients[k] for k in sorted(self._prompt_gradients)]
        optimizer = tg.TextualGradientDescent(parameters=[self.variable], engine=_Deferred())
        user = optimizer._update_prompt(self.variable)
        if not isinstance(user, str):
            raise RuntimeError("TextGrad built a multimodal TGD prompt for a text variable")
        start, end = optimizer.new_variable_tags
        return (optimizer.optimizer_system_prompt, user), (start, end)
