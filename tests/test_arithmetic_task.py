"""The generated ``arithmetic`` task (seeded, sizes, levels) and how it reads its number."""

from __future__ import annotations

import pytest

from mtg_local.tasks import TaskDataError, get_task, task_names
from mtg_local.tasks.arithmetic import DEFAULT_LEVEL, LEVELS, ArithmeticTask, generate_examples


def test_registered_with_documented_sizes_and_provenance():
    assert "arithmetic" in task_names()
    task = get_task("arithmetic", seed=3)
    s = task.splits()
    assert DEFAULT_LEVEL == 1 and (len(s.train), len(s.val), len(s.test)) == LEVELS[1].sizes == (20, 40, 40)
    all_q = [e.question for e in s.train + s.val + s.test]
    assert len(set(all_q)) == len(all_q)  # no question in two splits
    d = task.describe()
    assert d["name"] == "arithmetic" and d["seed"] == 3 and d["level"] == DEFAULT_LEVEL
    assert d["source"] == "builtin(seed=3, level=1)" and d["sizes"] == {"train": 20, "val": 40, "test": 40}
    assert sorted(e.question for e in s.train + s.val + s.test) == \
        sorted(f"What is {a} + {b}?" for a in range(10) for b in range(10))  # all 100 one-digit sums
    assert ArithmeticTask(level=3).describe()["sizes"] == {"train": 50, "val": 100, "test": 100}
    assert task.format_question(s.val[0]).startswith(s.val[0].question + "\n\nThe last line of your response")
    assert "Answer: $NUMBER" in task.format_instruction and task.initial_loss_prompt


def test_generation_is_a_pure_function_of_seed_and_level():
    a, b = generate_examples(40, seed=7, level=2), generate_examples(40, seed=7, level=2)
    assert [(e.id, e.question, e.answer) for e in a] == [(e.id, e.question, e.answer) for e in b]
    assert [e.question for e in generate_examples(40, seed=8, level=2)] != [e.question for e in a]
    assert [e.question for e in get_task("arithmetic", seed=1).splits().test] == \
        [e.question for e in get_task("arithmetic", seed=1).splits().test]


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_levels_draw_their_operators_and_ranges_and_answers_are_right(level):
    lv = LEVELS[level]
    examples = generate_examples(sum(LEVELS[level].sizes), seed=0, level=level)
    ops = set()
    for e in examples:
        a, op, b = e.meta["a"], e.meta["op"], e.meta["b"]
        ops.add(op)
        assert e.question == f"What is {a} {op} {b}?"
        assert e.answer == str({"+": a + b, "-": a - b, "*": a * b}[op]) and int(e.answer) >= 0
        lo, hi = sorted((a, b)) if op == "-" else (b, a)  # a subtraction puts the larger operand first
        ranges = {lv.a, lv.b}
        assert any(r[0] <= hi <= r[1] for r in ranges) and any(r[0] <= lo <= r[1] for r in ranges)
        if op != "-":
            assert lv.a[0] <= a <= lv.a[1] and lv.b[0] <= b <= lv.b[1]
    assert ops == set(lv.ops)


def test_harder_levels_have_larger_answers():
    mean = {lv: sum(int(e.answer) for e in generate_examples(100, 0, lv)) / 100 for lv in (1, 2, 3, 4, 5)}
    assert mean[1] < mean[2] < mean[3] < mean[4] < mean[5]


def test_bad_levels_sizes_and_sources():
    with pytest.raises(ValueError, match="level must be one of"):
        generate_examples(10, 0, level=99)
    assert len({e.question for e in generate_examples(100, 0, level=1)}) == 100
    with pytest.raises(ValueError, match="asks 100 distinct questions, not 101"):
        generate_examples(101, 0, level=1)
    assert LEVELS[5].space() == 2 * 900 * 900 - 900 * 899 // 2  # 810,000 sums, 405,450 differences
    with pytest.raises(ValueError, match="sizes"):
        ArithmeticTask(sizes=(0, 1, 1))
    with pytest.raises(TaskDataError, match="generated offline"):
        get_task("arithmetic", data_file="x.json")
    with pytest.raises(TaskDataError, match="generated offline"):
        get_task("arithmetic", source="hub")


@pytest.mark.parametrize("text, reference, lenient", [
    ("7 + 5 = 12.", "12", "12"),                      # no answer line: the last number, what the model ends on
    ("Let's add. 40 + 7 = 47\nAnswer: 47", "47", "47"),
    ("Answer: 12. Check: 12 - 5 = 7", "12", "12"),    # an answer line wins over later numbers
    ("Answer: 7\nNo, wait.\nAnswer: 8", "7", "8"),    # reference: the first answer line; lenient: the last
    ("8 - 3 = 5", "5", "5"),                          # a binary minus is not a sign
    ("the 3rd item, 2x faster", None, None),          # numbers glued to letters are not read
])
def test_the_task_reads_the_one_number_rule(text, reference, lenient):
    # extract_number's own cases: tests/test_tasks_files.py::test_extract_number
    assert get_task("arithmetic").extract_answer(text) == reference
    assert get_task("arithmetic", scoring="lenient").extract_answer(text) == lenient


def test_score_compares_canonical_numbers_under_both_rules():
    for scoring in ("reference", "lenient"):
        task = get_task("arithmetic", scoring=scoring)
        ex = task.splits().val[0]
        assert task.score(f"The sum is {ex.answer}.", ex) == 1.0
        assert task.score(f"Answer: {ex.answer}.0", ex) == 1.0
        assert task.score(f"Answer: {int(ex.answer) + 1}", ex) == 0.0
        assert task.score("I do not know.", ex) == 0.0 and task.extract_answer("I do not know.") is None
