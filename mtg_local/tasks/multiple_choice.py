"""Shared behaviour of the four-option multiple-choice tasks (MMLU, GPQA).

A subclass says where its rows come from (``DataSource``) and how one row
becomes ``(question, choices, correct_index, meta)``; this class loads,
validates, splits 1:3 with a seed, renders the options as ``A) ...`` and
parses/scores letters. The question the model reads is TextGrad's (and
simple-evals') ``QUERY_TEMPLATE_MULTICHOICE``, imported from ``textgrad.tasks.mmlu``
(``textgrad.tasks.gpqa`` holds the same template); the TGD constraint and the
answer's role are those of TextGrad's ``evaluation/solution_optimization.py``.
"""

from __future__ import annotations

import abc
from typing import Any

from mtg_local.prompts import textgrad_prompts as P
from mtg_local.tasks.answer_parsing import extract_choice_letter, reference_choice_letter
from mtg_local.tasks.base import Example, Splits, Task
from mtg_local.tasks.errors import TaskDataError
from mtg_local.tasks.loading import DataSource, check_columns, load_rows, one_to_three_split, parse_rows

LETTERS = "ABCD"


#: how the 1:3 split is made (recorded in describe())
SPLIT_RULE = (
    "rows shuffled with random.Random(seed); first (n+2)//4 valid rows = train part "
    "(train = its first ceil half, val = the rest), remaining rows = test"
)


def render_choices(question: str, choices: tuple[str, ...]) -> str:
    """``question`` followed by a blank line and one ``A) option`` line per choice (as the template has them)."""
    options = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question}\n\n{options}"


def format_instruction() -> str:
    """The answer-format sentences of TextGrad's multiple-choice template (after its first sentence).

    The template opens with "Answer the following multiple choice question."
    and the format instruction, then the question and the options.
    """
    head = P.QUERY_TEMPLATE_MULTICHOICE.split("\n\n", 1)[0]
    return head.split(". ", 1)[1]


class MultipleChoiceTask(Task):
    """A four-option task: 1:3 seeded split, letter answers, exact-letter scoring.

    Args:
        source: where the rows come from (Hub or a local file).
        seed: the data seed: split shuffle (and, for GPQA, option order). Keep
            it fixed across runs that are compared; it is not a sampling seed.
        strict: stop at the first bad row instead of skipping it.
    """

    answer_role = P.MULTIPLE_CHOICE_ROLE
    #: columns every row must have (checked once, before rows are parsed)
    required_columns: tuple[str, ...] = ()

    def __init__(self, source: DataSource, *, seed: int = 0, strict: bool = False) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.source = source
        self.seed = seed
        self.strict = strict
        self._splits: Splits | None = None
        self._n_rows = 0

    @abc.abstractmethod
    def parse_row(self, row_number: int, row: dict[str, Any]) -> tuple[str, tuple[str, ...], int, dict[str, Any]]:
        """``(question, choices, correct_index, meta)`` for one row.

        Raises:
            BadRow: the row is unusable (message = reason).
        """

    def splits(self) -> Splits:
        """Loads the rows once, drops/records bad ones and splits 1:3 (see ``SPLIT_RULE``)."""
        if self._splits is None:
            self._splits = self._load()
        return self._splits

    def _load(self) -> Splits:
        rows, origins = load_rows(self.source)
        check_columns(rows, self.required_columns, self.source.label)
        parsed, skipped = parse_rows(rows, self.parse_row, label=self.source.label, strict=self.strict)
        self._n_rows = len(rows)
        by_row = dict(parsed)
        train, val, test = one_to_three_split(list(by_row), len(rows), self.seed)
        if not (train and val and test):
            raise TaskDataError(
                f"{self.source.label}: {len(parsed)} usable row(s) of {len(rows)} "
                f"({len(skipped)} skipped) is too few for train/val/test; need at least 6"
            )

        def examples(split: str, row_numbers: list[int]) -> tuple[Example, ...]:
            out = []
            for i, r in enumerate(row_numbers):
                question, choices, correct, meta = by_row[r]
                meta = {"row": r, "source_split": origins[r], **meta}
                out.append(
                    Example(
                        id=f"{split}-{i}",
                        question=render_choices(question, choices),
                        answer=LETTERS[correct],
                        choices=choices,
                        meta=meta,
                    )
                )
            return tuple(out)

        return Splits(examples("train", train), examples("val", val), examples("test", test), tuple(skipped))

    @property
    def format_instruction(self) -> str:  # type: ignore[override]
        """The answer format the question asks for (from TextGrad's template)."""
        return format_instruction()

    @property
    def tgd_constraint(self) -> str:
        """TextGrad's solution-optimization constraint: the answer-line format alone."""
        return P.MULTIPLE_CHOICE_CONSTRAINT

    def format_question(self, example: Example) -> str:
        """``QUERY_TEMPLATE_MULTICHOICE`` formatted with the question and its four options.

        ``example.question`` is the question with its options rendered after it
        (``render_choices``); the template is given the question and the options.
        """
        choices = example.choices or ()
        options = "\n\n" + "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))
        if len(choices) != len(LETTERS) or not example.question.endswith(options):
            raise ValueError(f"example {example.id!r} is not a four-option question rendered by render_choices")
        stem = example.question[: -len(options)]
        return P.QUERY_TEMPLATE_MULTICHOICE.format(Question=stem, **dict(zip(LETTERS, choices)))

    def extract_answer(self, response: str, example: Example | None = None) -> str | None:
        """The answer letter: reference = first ``Answer: X`` (TextGrad); lenient = ``extract_choice_letter``."""
        if self.scoring == "reference":
            return reference_choice_letter(response)
        return extract_choice_letter(response, example.choices if example is not None else None, letters=LETTERS)

    def describe(self) -> dict[str, Any]:
        """Provenance for results.json: source, seed, split rule, sizes, skipped rows."""
        s = self.splits()
        return {
            "name": self.name,
            "scoring": self.scoring,
            **self.source.describe(),
            "seed": self.seed,
            "strict": self.strict,
            "split_rule": SPLIT_RULE,
            "rows": self._n_rows,
            "sizes": {"train": len(s.train), "val": len(s.val), "test": len(s.test)},
            "skipped": len(s.skipped),
            "skipped_rows": [dict(x) for x in s.skipped[:50]],
        }
