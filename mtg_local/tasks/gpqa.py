"""GPQA diamond (``Idavidrein/gpqa``, config ``gpqa_diamond``; gated).

Hub schema (the original CSV's columns, among many others): ``Question``,
``Correct Answer``, ``Incorrect Answer 1``, ``Incorrect Answer 2``,
``Incorrect Answer 3``. The Hub holds one split, ``train`` (198 rows). The
set is gated: the user needs a Hugging Face token (``HF_TOKEN`` or
``huggingface-cli login``) and must accept the terms on the dataset page;
otherwise loading stops with a message saying so. A local ``.csv`` (the
original ``gpqa_diamond.csv``), ``.jsonl``/``.json`` or ``.parquet`` with those
columns goes through the same ``datasets`` loader.

The four options are shuffled per question with ``random.Random(f"{seed}:{row}")``;
``Example.meta["permutation"]`` records, for each presented letter, which
original option it is (0 = the correct answer, 1-3 = incorrect answers 1-3).
Split train:test = 1:3 as for MMLU (``multiple_choice.SPLIT_RULE``).
"""

from __future__ import annotations

import random
from typing import Any

from mtg_local.tasks.loading import BadRow, DataSource, text_field
from mtg_local.tasks.multiple_choice import MultipleChoiceTask

DATASET = "Idavidrein/gpqa"
CONFIG = "gpqa_diamond"
HUB_SPLITS = ("train",)

QUESTION_FIELD = "Question"
#: option columns; index 0 is the correct one
OPTION_FIELDS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")

#: the paper's initial loss prompt for GPQA (appendix C, verbatim)
INITIAL_LOSS_PROMPT = (
    "Below is a multi-choice question and a prediction. You are an expert scientist. Your job is to "
    "investigate the prediction. Critically go through reasoning steps, and see if there is a reason "
    "why the prediction could be incorrect. Use the Janusian Process. Think about whether alternative "
    "answers could be true. Raise creative and critical objections to the solution, when needed."
)


def option_permutation(seed: int, row_number: int) -> list[int]:
    """The presented order of the 4 options of row ``row_number``: original indices, letter by letter."""
    perm = list(range(len(OPTION_FIELDS)))
    random.Random(f"{seed}:{row_number}").shuffle(perm)
    return perm


class GPQADiamondTask(MultipleChoiceTask):
    """GPQA diamond with seeded, recorded option shuffling."""

    name = "gpqa_diamond"
    initial_loss_prompt = INITIAL_LOSS_PROMPT
    required_columns = (QUESTION_FIELD, *OPTION_FIELDS)

    @classmethod
    def create(cls, *, data_file: str | None = None, seed: int = 0, strict: bool = False) -> GPQADiamondTask:
        """From the Hub (``data_file=None``; needs a token) or a local file with the Hub's columns."""
        source = DataSource(DATASET, CONFIG, HUB_SPLITS, data_file=data_file, gated=True)
        return cls(source, seed=seed, strict=strict)

    def parse_row(self, row_number: int, row: dict[str, Any]) -> tuple[str, tuple[str, ...], int, dict[str, Any]]:
        # as TextGrad's GPQA loader: the question unstripped, the options stripped
        question = text_field(row, QUESTION_FIELD, strip=False)
        options = [text_field(row, f) for f in OPTION_FIELDS]
        if len({" ".join(o.lower().split()) for o in options}) != len(options):
            raise BadRow("the four answers are not distinct (the correct one would be ambiguous)")
        perm = option_permutation(self.seed, row_number)
        choices = tuple(options[p] for p in perm)
        meta = {"permutation": perm, "record_id": row.get("Record ID")} if row.get("Record ID") else {"permutation": perm}
        return question, choices, perm.index(0), meta

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["option_order"] = 'shuffled per row with random.Random(f"{seed}:{row}"); meta["permutation"]'
        return d
