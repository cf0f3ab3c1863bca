"""MMLU machine learning (``cais/mmlu``, config ``machine_learning``).

Hub schema: ``question`` (str), ``subject`` (str), ``choices`` (list of 4 str),
``answer`` (int 0-3). All questions are used: the Hub splits ``dev``,
``validation``, ``test`` are concatenated in that order (5 + 11 + 112 = 128
rows), then split train:test = 1:3 with the data seed (val = half of the
train part; see ``multiple_choice.SPLIT_RULE``). Options keep their order.
A local file (``.jsonl``/``.json``/``.parquet``) with the same columns goes
through the same ``datasets`` loader.
"""

from __future__ import annotations

from typing import Any

from mtg_local.tasks.loading import BadRow, DataSource, text_field
from mtg_local.tasks.multiple_choice import LETTERS, MultipleChoiceTask

DATASET = "cais/mmlu"
CONFIG = "machine_learning"
#: Hub splits read, concatenated in this order
HUB_SPLITS = ("dev", "validation", "test")

#: the paper's initial loss prompt for MMLU (appendix C, verbatim)
INITIAL_LOSS_PROMPT = (
    "Below is a multi-choice question and an answer. You are an expert scientist. Your job is to "
    "investigate the answer. Critically go through reasoning steps, consider your knowledge, and "
    "see if the answer is correct or if there are any critical mistakes."
)


def parse_answer_index(value: Any, n_choices: int) -> int:
    """The 0-based correct index from ``answer``: an int 0-3, a digit string or a letter A-D.

    Raises:
        BadRow: missing, or not one of the choices.
    """
    if value is None:
        raise BadRow("missing field 'answer'")
    if isinstance(value, str):
        v = value.strip()
        if v.isdigit():
            value = int(v)
        elif len(v) == 1 and v.upper() in LETTERS[:n_choices]:
            return LETTERS.index(v.upper())
        else:
            raise BadRow(f"field 'answer' {value!r} is not an index 0-{n_choices - 1} or a letter")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRow(f"field 'answer' must be an int 0-{n_choices - 1}, got {type(value).__name__}")
    if not 0 <= value < n_choices:
        raise BadRow(f"field 'answer' {value} is outside the {n_choices} choices (0-{n_choices - 1})")
    return value


class MMLUMachineLearningTask(MultipleChoiceTask):
    """MMLU machine learning, four options in the dataset's order."""

    name = "mmlu_machine_learning"
    initial_loss_prompt = INITIAL_LOSS_PROMPT
    required_columns = ("question", "choices", "answer")

    @classmethod
    def create(cls, *, data_file: str | None = None, seed: int = 0, strict: bool = False) -> MMLUMachineLearningTask:
        """From the Hub (``data_file=None``) or a local file in the Hub schema."""
        source = DataSource(DATASET, CONFIG, HUB_SPLITS, data_file=data_file)
        return cls(source, seed=seed, strict=strict)

    def parse_row(self, row_number: int, row: dict[str, Any]) -> tuple[str, tuple[str, ...], int, dict[str, Any]]:
        # as TextGrad's MMLUInstanceDataset formats them: question and options unstripped
        question = text_field(row, "question", strip=False)
        choices = row.get("choices")
        if choices is None:
            raise BadRow("missing field 'choices'")
        if isinstance(choices, str) or not isinstance(choices, (list, tuple)):
            raise BadRow(f"field 'choices' must be a list of 4 options, got {type(choices).__name__}")
        if len(choices) != len(LETTERS):
            raise BadRow(f"field 'choices' has {len(choices)} options, expected {len(LETTERS)}")
        texts = []
        for i, c in enumerate(choices):
            if c is None or isinstance(c, bool) or not isinstance(c, (str, int, float)) or not str(c).strip():
                raise BadRow(f"choice {LETTERS[i]} is empty or not text ({c!r})")
            texts.append(str(c))
        correct = parse_answer_index(row.get("answer"), len(LETTERS))
        subject = row.get("subject")
        return question, tuple(texts), correct, {"subject": subject} if subject else {}
