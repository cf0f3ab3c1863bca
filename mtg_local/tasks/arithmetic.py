"""Generated arithmetic: "What is 4 + 7?", scored on the number (not a paper task).

``get_task("arithmetic")`` builds it offline, deterministically from the data
seed (the protocol's ``task_seed``), at a difficulty level (``LEVELS``; the
registered task uses ``DEFAULT_LEVEL``). It exists so that the bundled 135M
model, which scores about 0 on the paper's tasks, gets a task it partly
solves: a meta-training run on the CPU then sees answers that change,
validation accuracy that moves, and outer steps that are accepted or reverted.
Its numbers never go beside the paper's.

Splits: each level's ``sizes``, in generation order, all questions distinct
(none appears in two splits): level 1 (one-digit addition, the default) has
100 questions in all, split 20 train / 40 validation / 40 test; the others
50 / 100 / 100.

Scoring: ``extract_number`` (``mtg_local.tasks.answer_parsing``), the one rule
of every number-scored task (task files' ``answer_type: number`` too): the
number on the response's ``Answer:`` line (the first such line; ``scoring=
"lenient"``: the last), and without one the response's last number -- the
format instruction asks for ``Answer: N`` on the last line, and a model that
ignores it and ends on the result (the bundled model usually does) is read
by its last number. docs/tasks.md says why.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from mtg_local.tasks.answer_parsing import extract_number, numbers_equal
from mtg_local.tasks.base import Example, Splits, Task

__all__ = ["ArithmeticTask", "Level", "LEVELS", "DEFAULT_LEVEL", "generate_examples"]

@dataclasses.dataclass(frozen=True)
class Level:
    """One difficulty: the operators drawn from, the operand ranges (inclusive), the split sizes.

    A subtraction puts the larger operand first, so no result is negative.
    """

    description: str
    ops: str
    a: tuple[int, int]
    b: tuple[int, int]
    #: (train, val, test) question counts; all distinct, so at most ``space()`` in all
    sizes: tuple[int, int, int] = (50, 100, 100)

    def space(self) -> int:
        """How many distinct questions the level can ask."""
        n_a, n_b = self.a[1] - self.a[0] + 1, self.b[1] - self.b[0] + 1
        total = 0
        for op in self.ops:
            if op != "-":
                total += n_a * n_b
            elif self.a == self.b:  # larger operand first: the unordered pairs
                total += n_a * (n_a + 1) // 2
            else:
                A, B = range(self.a[0], self.a[1] + 1), range(self.b[0], self.b[1] + 1)
                total += len({(max(x, y), min(x, y)) for x in A for y in B})
        return total


#: Difficulty levels, easiest first. Zero-shot accuracy of the bundled SmolLM2-135M on each
#: (protocol sampling, 128 tokens) is in docs/tasks.md.
LEVELS: dict[int, Level] = {
    1: Level("one-digit addition", "+", (0, 9), (0, 9), sizes=(20, 40, 40)),
    2: Level("two-digit plus one-digit addition", "+", (10, 99), (0, 9)),
    3: Level("two-digit addition", "+", (10, 99), (10, 99)),
    4: Level("two-digit by one-digit multiplication", "*", (10, 99), (2, 9)),
    5: Level("three-digit addition and subtraction", "+-", (100, 999), (100, 999)),
}
#: The level of ``get_task("arithmetic")``: the one at which the bundled model's zero-shot
#: accuracy on the validation split lies between 20 % and 70 % (docs/tasks.md).
DEFAULT_LEVEL = 1

#: ours: in the manner of the paper's initial loss prompts (appendix C), for this task
INITIAL_LOSS_PROMPT = (
    "Below is an arithmetic problem and an answer. You are an expert mathematician. Your job is to "
    "investigate the answer. Critically go through the calculation step by step, and see if the answer "
    "is correct or if there are any critical mistakes."
)
#: ours: the answer line the scoring reads last
FORMAT_INSTRUCTION = (
    "The last line of your response should be of the following format: "
    "'Answer: $NUMBER' (without quotes) where NUMBER is the result as a number."
)
#: ours: the multiple-choice role of TextGrad's solution-optimization script, for this kind of question
ANSWER_ROLE = "creative and precise solution and the prediction for the arithmetic question"

_RESULT = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def generate_examples(n: int, seed: int, level: int = DEFAULT_LEVEL) -> list[Example]:
    """``n`` distinct questions of ``level``, a pure function of (seed, level).

    Raises:
        ValueError: an unknown level, or more questions than the level can ask.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    lv = LEVELS[level]
    if n > lv.space():
        raise ValueError(f"level {level} ({lv.description}) asks {lv.space()} distinct questions, not {n}")
    rng = random.Random(f"arithmetic:{level}:{seed}")  # str seeds are stable across processes
    if n > lv.space() // 2:  # a small level: shuffle all its questions rather than draw until distinct
        pool = [(a, op, b) for op in lv.ops for a in range(lv.a[0], lv.a[1] + 1)
                for b in range(lv.b[0], lv.b[1] + 1) if op != "-" or a >= b]
        drawn = rng.sample(pool, n)
    else:
        seen: set[tuple[int, str, int]] = set()
        drawn = []
        while len(drawn) < n:
            op = rng.choice(lv.ops)
            a, b = rng.randint(*lv.a), rng.randint(*lv.b)
            if op == "-" and b > a:
                a, b = b, a
            if (a, op, b) not in seen:
                seen.add((a, op, b))
                drawn.append((a, op, b))
    return [Example(id=f"arith-{level}-{seed}-{i}", question=f"What is {a} {op} {b}?",
                    answer=str(_RESULT[op](a, b)), meta={"a": a, "op": op, "b": b})
            for i, (a, op, b) in enumerate(drawn)]


class ArithmeticTask(Task):
    """Generated arithmetic at one level; answers scored on their last number.

    Args:
        seed: the data seed (``get_task``'s ``seed``, the protocol's ``task_seed``).
        level: a key of ``LEVELS``.
        sizes: (train, val, test) question counts (default: the level's).
    """

    name = "arithmetic"
    initial_loss_prompt = INITIAL_LOSS_PROMPT
    format_instruction = FORMAT_INSTRUCTION
    answer_role = ANSWER_ROLE

    def __init__(self, *, seed: int = 0, level: int = DEFAULT_LEVEL, sizes: tuple[int, int, int] | None = None) -> None:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
        sizes = LEVELS[level].sizes if sizes is None else sizes
        if len(sizes) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"sizes must be three integers >= 1 (train, val, test), got {sizes!r}")
        self.seed = seed
        self.level = level
        self.sizes = tuple(sizes)
        n_train, n_val, n_test = sizes
        ex = generate_examples(n_train + n_val + n_test, seed, level)
        self._splits = Splits(tuple(ex[:n_train]), tuple(ex[n_train : n_train + n_val]), tuple(ex[n_train + n_val :]))

    def splits(self) -> Splits:
        return self._splits

    def extract_answer(self, response: str, example: Example | None = None) -> str | None:
        """The number the response answers with (``extract_number``; lenient: its last answer line)."""
        return extract_number(response, last_answer=self.scoring == "lenient")

    def score(self, response: str, example: Example) -> float:
        return float(numbers_equal(self.extract_answer(response, example), example.answer))

    def describe(self) -> dict[str, Any]:
        s = self._splits
        return {
            "name": self.name, "scoring": self.scoring, "source": f"builtin(seed={self.seed}, level={self.level})",
            "seed": self.seed, "level": self.level, "level_description": LEVELS[self.level].description,
            "answer_rule": "the Answer: line's number, else the last number (extract_number)",
            "split_rule": f"generated; {'/'.join(map(str, self.sizes))} distinct questions in generation order",
            "sizes": {"train": len(s.train), "val": len(s.val), "test": len(s.test)}, "skipped": 0,
        }
