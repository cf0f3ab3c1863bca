"""TextGrad's ``evaluation/prompt_optimization.py`` loop with real textgrad objects, and recording helpers.

``textgrad_prompt_optimization`` is the script's training loop (``--run_validation``;
zou-group/textgrad at 75e912e), run on TextGrad engines over our ``FakeEngine``
(``engines.adapters.textgrad_engine.TextGradEngine``), which records every request.
Left out, because they do not touch the trained prompt: the larger model's reference
run and the test-set scoring after every step (for the script's plots). Re-expressed:

* ``eval_dataset`` runs its questions one after another instead of in a thread pool
  (the same requests; only their order differs, and the test compares each phase as
  a multiset);
* ``total_loss.backward(engine=...)`` instead of ``tg.set_backward_engine`` (the same
  engine; no process-wide singleton left behind for other tests);
* two of TextGrad's sets get a fixed iteration order (``Ordered``): the summed loss's
  predecessors and the system prompt's gradients. TextGrad hashes ``Variable`` objects
  by identity, so the order of its B backward calls and of the B feedbacks in the TGD
  prompt follows memory addresses and changes from run to run; with ``Ordered`` both
  are the minibatch order, the order ours uses.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engines.adapters.common import import_textgrad

import_textgrad()  # the project's one way in: TextGrad's log never lands in the working directory

import textgrad as tg  # noqa: E402
from textgrad.defaults import VARIABLE_INPUT_DEFAULT_ROLE  # noqa: E402

from engines.base import GenRequest  # noqa: E402


class Ordered(set):
    """A set that iterates in insertion order (pins the order of TextGrad's sets of Variables)."""

    def __init__(self, items: Sequence[Any] = ()) -> None:
        super().__init__()
        self._order: list[Any] = []
        for x in items:
            self.add(x)

    def add(self, x: Any) -> None:
        if x not in self:
            self._order.append(x)
        super().add(x)

    def __iter__(self):  # noqa: ANN204
        return iter(list(self._order))


def textgrad_prompt_optimization(
    train: Sequence[tuple[str, str]],
    val: Sequence[tuple[str, str]],
    eval_fn: Any,
    *,
    test_engine: Any,
    eval_engine: Any,
    starting_prompt: str,
    role: str,
    gold_role: str,
    batch_size: int = 3,
    max_epochs: int = 3,
    seed: int = 42,
) -> dict[str, list]:
    """The training loop of TextGrad's ``evaluation/prompt_optimization.py`` with ``--run_validation``.

    Args:
        train / val: ``(x, y)`` pairs (question text, ground truth), as TextGrad's datasets give them.
        eval_fn: the loss, e.g. a ``StringBasedFunction`` (called as ``eval_fn(inputs=...)``).
        test_engine: the optimized model (forward and validation answers).
        eval_engine: backward and TGD engine.
        starting_prompt: ``STARTING_SYSTEM_PROMPT``.
        role / gold_role: the script's role descriptions of the system prompt and of ``y``.

    Returns:
        The script's ``results`` without test accuracies: ``prompt`` and ``validation_acc`` per step.
    """
    np.random.seed(seed)
    random.seed(seed)
    train_loader = tg.tasks.DataLoader(list(train), batch_size=batch_size, shuffle=True)
    system_prompt = tg.Variable(starting_prompt, requires_grad=True, role_description=role)
    model = tg.BlackboxLLM(test_engine, system_prompt)
    optimizer = tg.TextualGradientDescent(engine=eval_engine, parameters=[system_prompt])

    def eval_sample(item: tuple[str, str]) -> int:
        x, y = item
        x = tg.Variable(x, requires_grad=False, role_description=VARIABLE_INPUT_DEFAULT_ROLE)
        y = tg.Variable(y, requires_grad=False, role_description=gold_role)
        response = model(x)
        return int(eval_fn(inputs=dict(prediction=response, ground_truth_answer=y)).value)

    def run_validation_revert() -> None:
        val_performance = np.mean([eval_sample(item) for item in val])
        previous_performance = np.mean(results["validation_acc"][-1])
        previous_prompt = results["prompt"][-1]
        if val_performance < previous_performance:
            system_prompt.set_value(previous_prompt)
            val_performance = previous_performance
        results["validation_acc"].append(val_performance)

    results: dict[str, list] = {"prompt": [], "validation_acc": []}
    results["validation_acc"].append([eval_sample(item) for item in val])
    results["prompt"].append(system_prompt.get_value())
    for _epoch in range(max_epochs):
        for steps, (batch_x, batch_y) in enumerate(train_loader):
            optimizer.zero_grad()
            system_prompt.gradients = Ordered()
            losses = []
            for x, y in zip(batch_x, batch_y):
                x = tg.Variable(x, requires_grad=False, role_description=VARIABLE_INPUT_DEFAULT_ROLE)
                y = tg.Variable(y, requires_grad=False, role_description=gold_role)
                response = model(x)
                losses.append(eval_fn(inputs=dict(prediction=response, ground_truth_answer=y)))
            total_loss = tg.sum(losses)
            # Reversed: the backward walks a depth-first order backwards, so this visits losses[0] first.
            total_loss.predecessors = Ordered(list(reversed(losses)))
            total_loss.backward(engine=eval_engine)
            optimizer.step()
            run_validation_revert()
            results["prompt"].append(system_prompt.get_value())
            if steps == 3:
                break
    return results


# -- recording ---------------------------------------------------------------------
def pairs(requests: Sequence[GenRequest]) -> list[tuple[str, str]]:
    """(system, user) of each request ("" when it has no system message)."""
    out = []
    for r in requests:
        roles = [m.role for m in r.messages]
        assert roles in (["user"], ["system", "user"]), roles
        out.append(("" if len(roles) == 1 else r.messages[0].content, r.messages[-1].content))
    return out


def flat(batches: Sequence[Sequence[GenRequest]]) -> list[GenRequest]:
    """Every request of a recording engine's batches, in the order they were sent."""
    return [r for b in batches for r in b]


def continuing(full: Callable[[GenRequest], str]) -> Callable[[GenRequest], str]:
    """A responder that writes ``full(request)`` and continues it after a response prefix.

    A request with a prefilled start (our inference template, the ``<IMPROVED_VARIABLE>``
    tag) gets the rest of the same text, so both sides see one model's identical output.
    """

    def respond(req: GenRequest) -> str:
        text = full(req)
        if req.response_prefix:
            assert text.startswith(req.response_prefix), (req.response_prefix, text)
            return text[len(req.response_prefix):]
        return text

    return respond


def words_in(user: str) -> list[str]:
    """The word list of a word-sorting question."""
    m = re.findall(r"List: ([a-z' -]+)", user)
    return m[-1].split() if m else []
