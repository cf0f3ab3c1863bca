"""Several tasks seen as one, for meta-training one loss prompt / template across tasks.

``MultiTask([word_sorting, mmlu])`` re-ids every example ``"<task>/<id>"`` (ids
such as ``test-3`` repeat across tasks, and the meta step groups trajectories by
id) and sends every per-example call -- question formatting, answer extraction,
scoring, the update's answer-format constraint, the answer's role -- to the example's own task. So
one inner loop (one engine call per phase) can hold items of every task, and
each item's requests are exactly the ones its own task would make.

The learned loss prompt is ONE prompt for all tasks: it starts from the FIRST
task's initial loss prompt (the paper's appendix C text for that task), not a
new wording of ours; ``--loss-prompt`` sets another start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from mtg_local.tasks.base import Example, ScoreResult, Splits, Task, short_hash
from mtg_local.tasks.errors import TaskDataError

#: Separates task names in a multi-task run's name ("word_sorting,mmlu_machine_learning").
TASK_SEPARATOR = ","


def split_task_names(text: str) -> list[str]:
    """ "a,b" -> ["a", "b"] (blanks dropped)."""
    return [t.strip() for t in str(text).split(TASK_SEPARATOR) if t.strip()]


class MultiTask(Task):
    """Tasks side by side; examples carry their task in the id (see the module docstring).

    Args:
        tasks: two or more tasks with distinct names, in the user's order.
        limit: first N questions of every split of every task (None: whole splits).

    Raises:
        TaskDataError: fewer than two tasks, or two with one name (two task files may name
            their tasks alike).
    """

    def __init__(self, tasks: Sequence[Task], *, limit: int | None = None) -> None:
        names = [t.name for t in tasks]
        if len(names) < 2:
            raise TaskDataError(f"a multi-task run needs at least two tasks, got {names}")
        if len(set(names)) != len(names):
            raise TaskDataError(f"tasks of a multi-task run must have distinct names, got {names}")
        self.tasks: dict[str, Task] = dict(zip(names, tasks))
        self.limit = limit
        self.name = TASK_SEPARATOR.join(names)
        self.initial_loss_prompt = tasks[0].initial_loss_prompt
        self.inference_template = tasks[0].inference_template
        self.format_instruction = ""  # per example: update_constraints
        self.scoring = tasks[0].scoring
        self._parts: dict[str, Splits] | None = None

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    def task_splits(self) -> dict[str, Splits]:
        """Each task's splits (limited, examples re-id'd), in task order."""
        if self._parts is None:
            parts = {}
            for name, task in self.tasks.items():
                s = task.splits().limited(self.limit)
                tag = lambda exs, n=name: tuple(dataclasses.replace(e, id=f"{n}/{e.id}") for e in exs)  # noqa: E731
                parts[name] = Splits(tag(s.train), tag(s.val), tag(s.test), s.skipped)
            self._parts = parts
        return self._parts

    def splits(self) -> Splits:
        """All tasks' splits concatenated in task order (already limited per task: do not limit again)."""
        parts = list(self.task_splits().values())
        return Splits(*(sum((p.get(x) for p in parts), ()) for x in ("train", "val", "test")),
                      sum((p.skipped for p in parts), ()))

    def task_name_of(self, example: Example) -> str:
        """The name of the task ``example`` belongs to (from its id)."""
        name = example.id.split("/", 1)[0]
        if name not in self.tasks or "/" not in example.id:
            raise ValueError(f"example id {example.id!r} names none of the tasks {self.names}")
        return name

    def task_of(self, example: Example) -> Task:
        return self.tasks[self.task_name_of(example)]

    def format_question(self, example: Example) -> str:
        return self.task_of(example).format_question(example)

    def extract_answer(self, response: str, example: Example | None = None) -> str | None:
        if example is None:
            raise ValueError("a multi-task run extracts answers per example; pass the example")
        return self.task_of(example).extract_answer(response, example)

    def score(self, response: str, example: Example) -> float:
        return self.task_of(example).score(response, example)

    def score_item(self, response: str, example: Example) -> ScoreResult:
        return self.task_of(example).score_item(response, example)

    def update_constraints(self, example: Example) -> list[str]:
        return self.task_of(example).update_constraints(example)

    def answer_role_for(self, example: Example) -> str:
        return self.task_of(example).answer_role_for(example)

    def identity(self) -> dict[str, Any]:
        """Each task's identity, in task order, and an ``id`` over theirs."""
        parts = [t.identity() for t in self.tasks.values()]
        return {"name": self.name, "kind": "multi", "tasks": parts, "id": short_hash([p["id"] for p in parts])}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "scoring": self.scoring, "tasks": {n: t.describe() for n, t in self.tasks.items()},
                "identity": self.identity()}
