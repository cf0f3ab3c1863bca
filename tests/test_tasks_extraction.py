"""Answer extraction and scoring on realistic model outputs (letters and sorted words)."""

from __future__ import annotations

import pytest

from mtg_local.tasks import get_task
from mtg_local.tasks.answer_parsing import (
    extract_choice_letter,
    extract_sorted_words,
    reference_choice_letter,
    reference_sorted_words,
)
from mtg_local.tasks.base import Example
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.tasks.defined_task import DefinedTask
from mtg_local.tasks.task_file import TaskDefinition
from mtg_local.tasks.word_sorting import WordSortingTask, make_question

CHOICES = ("True, True", "False, False", "A decision tree", "False, True")

LETTER_CASES = [
    ("Statement 1 is false, statement 2 is true.\n\nAnswer: D", "D"),
    ("**Answer: (B)**", "B"),
    ("Answer: B.", "B"),
    ("The answer is C", "C"),
    ("so the final choice follows.\nanswer: b)", "B"),
    ("Answer: c.", "C"),
    ("ANSWER: [A]", "A"),
    ("Final Answer: D) False, True", "D"),
    ("**Answer:** B", "B"),
    ("Answer: **C**", "C"),
    ("Answer: $\\boxed{D}$", "D"),
    ("Therefore the answer would be: (A)", "A"),
    ("Answer: Option C", "C"),
    ("The correct option is B.", "B"),
    ("The answer is therefore D.", "D"),
    ("Answer: A\n\nWait, re-checking statement 2... The answer is B", "B"),
    ("Answer: I think the answer is B", "B"),
    ("### Answer\nC", "C"),
    ("Answer:\n\n(D)", "D"),
    ("After eliminating options, I pick\n(C)", "C"),
    ("Reasoning...\nB", "B"),
    ("Answer: A decision tree", "C"),  # the option's text, not the article "A"
    ("Answer: false, true", "D"),  # option text, any case
    ("the answer is a linear model, nothing else", None),
    ("Answer: Decision trees overfit", None),
    ("Answer: $LETTER", None),
    ("Answer: E", None),
    ("I am not sure which one is right.", None),
    ("", None),
]


@pytest.mark.parametrize("response, expected", LETTER_CASES)
def test_extract_choice_letter(response, expected):
    assert extract_choice_letter(response, CHOICES) == expected


def test_choice_text_is_only_used_when_choices_are_given():
    assert extract_choice_letter("Answer: A decision tree") == "A"
    assert extract_choice_letter("Answer: false, true") is None


def _mc() -> DefinedTask:
    """A four-option ``choice`` task (what MMLU's and GPQA's task files are), not loaded."""
    rows = [{"q": "Q", "options": list(CHOICES), "gold": 3}]
    return DefinedTask(TaskDefinition.define(name="mc_test", rows=rows, question="q", choices="options",
                                             answer="gold", answer_type="choice", num_choices=4))


def test_multiple_choice_task_scores_letters_lenient():
    task = _mc()
    task.scoring = "lenient"
    ex = Example(id="t-0", question="Q", answer="D", choices=CHOICES)
    # the format sentences of TextGrad's template; its TGD constraint is the first of them
    assert f"Answer the following multiple choice question. {task.format_instruction}\n\n" in (
        P.QUERY_TEMPLATE_MULTICHOICE)
    assert task.format_instruction.startswith(task.tgd_constraint + " ") and task.tgd_constraint.endswith("ABCD.")
    assert task.score("Thinking...\n**Answer: D**", ex) == 1.0
    assert task.score("Answer: false, true", ex) == 1.0
    assert task.score("Answer: B", ex) == 0.0
    assert task.score("no idea", ex) == 0.0


REFERENCE_LETTER_CASES = [
    ("Answer: B ... is the answer C?", "B"),  # first match wins (lenient: C)
    ("Reasoning...\nAnswer: D", "D"),
    ("ANSWER : c", "c"),  # kept as written: TextGrad compares it to "C" and scores 0
    ("**Answer: (B)**", None),  # the pattern allows no bracket
    ("Answer: Decision trees", "D"),  # TextGrad's pattern reads the D of "Decision"
    ("The answer is C", None),  # no colon
    ("answer:A then Answer: B", "A"),
    ("", None),
]


@pytest.mark.parametrize("response, expected", REFERENCE_LETTER_CASES)
def test_reference_choice_letter_is_textgrads_first_match(response, expected):
    assert reference_choice_letter(response) == expected


def test_multiple_choice_task_reference_scoring_is_the_default():
    task = _mc()
    ex = Example(id="t-0", question="Q", answer="B", choices=CHOICES)
    assert task.scoring == "reference"
    assert task.extract_answer("Answer: B ... is the answer C?", ex) == "B"
    assert task.score("Answer: B ... is the answer C?", ex) == 1.0
    assert task.score("answer: b", ex) == 0.0  # as in TextGrad's eval_string_based
    task.scoring = "lenient"
    assert task.extract_answer("Answer: B ... is the answer C?", ex) == "C"


def test_scoring_is_recorded_in_describe(tmp_path):
    import json

    rows = [
        {"question": f"q{i}", "choices": ["w", "x", "y", "z"], "answer": i % 4, "subject": "machine_learning"}
        for i in range(8)
    ]
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert get_task("mmlu_machine_learning", data_file=path).describe()["scoring"] == "reference"
    assert get_task("mmlu_machine_learning", data_file=path, scoring="lenient").describe()["scoring"] == "lenient"


WORDS = ["oven", "costume", "counterpart", "o'clock", "x-ray"]
SORTED = "costume counterpart o'clock oven x-ray"

WORD_CASES = [
    ("Answer: costume counterpart o'clock oven x-ray", SORTED),
    ("Answer: Costume Counterpart O'Clock Oven X-Ray", SORTED),
    ("Answer: costume, counterpart, o'clock, oven, x-ray.", SORTED),
    ("**Answer:** costume counterpart o'clock oven x-ray", SORTED),
    ("Answer: *costume* *counterpart* *o'clock* *oven* *x-ray*", SORTED),
    ("Answer: `costume counterpart o'clock oven x-ray`", SORTED),
    ("Answer:\n1. costume\n2. counterpart\n3. o'clock\n4. oven\n5. x-ray\n\nAll sorted.", SORTED),
    ("Answer:\n\n- costume\n- counterpart\n- o'clock\n- oven\n- x-ray", SORTED),
    ("Answer:\n* costume\n* counterpart\n* o'clock\n* oven\n* x-ray\nThat is the order.", SORTED),
    ("Answer: 1. costume\n2. counterpart\n3. o'clock\n4. oven\n5. x-ray", SORTED),
    ("Answer:\n1) costume\n2) counterpart\n3) o'clock\n4) oven\n5) x-ray", SORTED),
    ("Answer: costume, counterpart, o'clock, oven, and x-ray", SORTED),
    ("Answer: costume counterpart o'clock oven x-ray (sorted alphabetically)", SORTED),
    ("The answer is: costume counterpart o'clock oven x-ray", SORTED),
    ("Answer - costume counterpart o'clock oven x-ray", SORTED),
    ("Let me sort.\nc < o < x.\nAnswer: costume counterpart o'clock oven x-ray\n", SORTED),
    ("Answer: oven costume\nHmm, wrong. Answer: costume counterpart o'clock oven x-ray", SORTED),
    ("answer: costume counterpart o'clock oven x-ray", SORTED),
    ("Answer:   costume   counterpart o'clock oven   x-ray  ", SORTED),
    ("Answer: costume counterpart oven o'clock x-ray", "costume counterpart oven o'clock x-ray"),  # wrong order kept
    ("Answer: costume counterpart oven", "costume counterpart oven"),  # missing words kept
    ("The sorted list is costume counterpart o'clock oven x-ray", None),  # no Answer phrase
    ("Answer:", None),
    ("Answer: $WORDS", "words"),
    ("", None),
]


@pytest.mark.parametrize("response, expected", WORD_CASES)
def test_extract_sorted_words(response, expected):
    assert extract_sorted_words(response, WORDS) == expected


def test_and_is_kept_when_it_is_one_of_the_words():
    assert extract_sorted_words("Answer: and, band, cat", ["cat", "band", "and"]) == "and band cat"
    assert extract_sorted_words("Answer: band, cat, and dog", ["cat", "band", "dog"]) == "band cat dog"


REFERENCE_WORD_CASES = [
    ("Answer: costume counterpart o'clock oven x-ray", SORTED),
    ("Answer: Costume, counterpart, o'clock, oven, x-ray.", SORTED),  # same words, same order
    ("Answer: oven costume\nHmm, wrong. Answer: costume counterpart o'clock oven x-ray", "oven costume"),  # first
    ("Answer:\n1. costume\n2. counterpart", None),  # nothing on the answer line
    ("**Answer:** costume counterpart o'clock oven x-ray", SORTED),  # markup is not a word
    ("The answer is: costume counterpart o'clock oven x-ray", None),  # no colon right after "answer"
    ("costume counterpart o'clock oven x-ray", None),
]


@pytest.mark.parametrize("response, expected", REFERENCE_WORD_CASES)
def test_reference_sorted_words(response, expected):
    assert reference_sorted_words(response) == expected


def test_word_sorting_task_reference_scoring():
    task = WordSortingTask.builtin(seed=0)
    ex = Example(id="t-0", question=make_question(WORDS), answer=SORTED)
    assert task.scoring == "reference"
    assert task.score("Sorting...\nAnswer: Costume, counterpart, o'clock, oven, x-ray.", ex) == 1.0
    assert task.score("Answer:\n1. costume\n2. counterpart\n3. o'clock\n4. oven\n5. x-ray", ex) == 0.0
    assert task.score("Answer: oven\nAnswer: costume counterpart o'clock oven x-ray", ex) == 0.0


def test_word_sorting_task_scores_against_normalised_ground_truth_lenient():
    task = WordSortingTask.builtin(seed=0)
    task.scoring = "lenient"
    ex = Example(id="t-0", question=make_question(WORDS), answer=SORTED)
    assert task.score("Sorting...\n**Answer:** Costume, counterpart, o'clock, oven, x-ray.", ex) == 1.0
    assert task.score("Answer:\n1. costume\n2. counterpart\n3. o'clock\n4. oven\n5. x-ray", ex) == 1.0
    assert task.score("Answer: costume counterpart oven o'clock x-ray", ex) == 0.0
    assert task.score("costume counterpart o'clock oven x-ray", ex) == 0.0
    assert task.extract_answer("Answer: Oven", ex) == "oven"
