"""Task files: keys, answer types and their defaults, splits, paths (issue 28, points 1 and 3).

No engine: these check what a task builds from its file (questions, gold answers, the
answer rule, the texts it starts from) against the data written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtg_local.prompts import task_prompts as TP
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.tasks import TaskDataError, TaskDefinition, TaskDefinitionError, get_task, task_names
from mtg_local.tasks.answer_parsing import extract_number, numbers_equal, parse_number
from mtg_local.tasks.base import Example
from mtg_local.tasks.defined_task import DefinedTask
from mtg_local.tasks.registry import BUILTIN_DIR
from tests.task_fakes import example_tasks


def task_file(folder: Path, rows: list[dict] | None = None, **keys) -> Path:
    """A task file ``t.yaml`` in ``folder`` (with ``rows`` as ``rows.jsonl`` when given)."""
    folder.mkdir(parents=True, exist_ok=True)
    if rows is not None:
        (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        keys.setdefault("data", "rows.jsonl")
    path = folder / "t.yaml"
    path.write_text(yaml.safe_dump({"name": "t", **keys}))
    return path


def _ex(answer: str, choices=None) -> Example:
    return Example(id="test-0", question="Q", answer=answer, choices=choices)


# -- the worked examples ---------------------------------------------------------------------


def test_worked_examples_load_with_relative_paths_from_anywhere(tmp_path, monkeypatch):
    tasks = example_tasks(tmp_path)
    monkeypatch.chdir("/")
    sums, capitals = get_task(str(tasks["sums"])), get_task(str(tasks["capitals"]))
    s = sums.splits()
    assert (len(s.train), len(s.val), len(s.test)) == (3, 3, 18)  # 24 rows, the seeded 1:3 split
    assert all(e.answer.isdigit() for e in s.test)
    ex = capitals.splits().test[0]
    assert ex.choices and len(ex.choices) == 4 and ex.answer in "ABCD"
    # simple-evals' / TextGrad's multiple-choice question, byte for byte, for four options
    stem = ex.question.split("\n\nA) ")[0]
    assert capitals.format_question(ex) == P.QUERY_TEMPLATE_MULTICHOICE.format(
        Question=stem, **dict(zip("ABCD", ex.choices)))
    assert ex.choices["ABCD".index(ex.answer)] == ex.meta["fields"][ex.answer]


# -- defaults per answer type -------------------------------------------------------------------


@pytest.mark.parametrize("answer_type, extra, fmt, role, loss", [
    ("exact", {}, TP.ANSWER_LINE_INSTRUCTION, TP.GENERIC_ROLE, TP.GENERIC_LOSS_PROMPT),
    ("number", {}, TP.NUMBER_LINE_INSTRUCTION, TP.GENERIC_ROLE, TP.GENERIC_LOSS_PROMPT),
    ("regex", {"pattern": "Answer: (\\w+)"}, "", TP.GENERIC_ROLE, TP.GENERIC_LOSS_PROMPT),
    ("python", {"scorer": "json:dumps"}, TP.ANSWER_LINE_INSTRUCTION, TP.GENERIC_ROLE, TP.GENERIC_LOSS_PROMPT),
    ("choice", {"choices": "options"}, None, P.MULTIPLE_CHOICE_ROLE, TP.MULTIPLE_CHOICE_LOSS_PROMPT),
])
def test_defaults_per_answer_type(answer_type, extra, fmt, role, loss):
    d = TaskDefinition.define(name="t", rows=[{"q": "Q", "a": "1", "options": ["x", "y"]}], question="q", answer="a",
                              answer_type=answer_type, **extra)
    task = DefinedTask(d)
    assert task.answer_role == role and task.initial_loss_prompt == loss and task.inference_template is None
    if fmt is not None:
        assert task.format_instruction == fmt and task.tgd_constraint == fmt
    assert TP.MULTIPLE_CHOICE_LOSS_PROMPT == get_task("mmlu_machine_learning").initial_loss_prompt  # the paper's


def test_texts_set_in_the_task_file_replace_the_defaults(tmp_path):
    path = task_file(tmp_path, [{"q": f"q{i}", "a": str(i)} for i in range(8)], question="q", answer="a",
                     answer_type="exact", format_instruction="End with ANSWER=x.", role="a terse answer",
                     initial_loss_prompt="Check it.", inference_template="Step one: ")
    task = get_task(str(path))
    ex = task.splits().test[0]
    assert task.format_question(ex) == f"{ex.question}\n\nEnd with ANSWER=x."
    assert (task.answer_role, task.initial_loss_prompt, task.inference_template) == (
        "a terse answer", "Check it.", "Step one: ")
    assert task.update_constraints(ex) == ["End with ANSWER=x."]


# -- answer rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("response, first, last", [
    ("Answer: 42", "42", "42"),
    ("3 + 4 = 7, so", "7", "7"),  # no answer line: the last number (a model that ignores the format)
    ("Answer: **1,234.50** dollars", "1234.5", "1234.5"),
    ("The answer is: -3.", "-3", "-3"),
    ("Answer: seven", None, None),  # an answer line without a number: nothing, no guessing elsewhere
    ("Answer: 7\nwait.\nAnswer: 8", "7", "8"),
    ("$\\boxed{12}$", "12", "12"),
    ("", None, None),
])
def test_extract_number(response, first, last):
    assert extract_number(response) == first and extract_number(response, last_answer=True) == last


def test_number_equality_and_tolerances():
    assert parse_number("1,234.50") == "1234.5" and parse_number("1e3") == "1000" and parse_number("12,34") is None
    assert numbers_equal("0.3", "0.30") and not numbers_equal("0.3", "0.31")
    assert numbers_equal("1.04", "1", tolerance=0.05) and not numbers_equal("1.06", "1", tolerance=0.05)
    assert numbers_equal("101", "100", relative_tolerance=0.01)
    d = TaskDefinition.define(name="t", rows=[{"q": "Q", "a": "1,000"}], question="q", answer="a",
                              answer_type="number", tolerance=0.5)
    task = DefinedTask(d)
    assert task.splits  # the gold answer is canonical
    assert task.score("Answer: 1000.4", _ex("1000")) == 1.0 and task.score("Answer: 1001", _ex("1000")) == 0.0
    task.scoring = "lenient"
    assert task.score("Answer: 3\nNo, Answer: 1000", _ex("1000")) == 1.0


def test_exact_and_regex_rules():
    exact = DefinedTask(TaskDefinition.define(name="t", rows=[{"q": "Q", "a": "x"}], question="q", answer="a",
                                              answer_type="exact"))
    assert exact.score("Thinking.\nAnswer: **Paris.**", _ex("paris")) == 1.0
    assert exact.score("Answer: Paris, France", _ex("paris")) == 0.0
    assert exact.score("Paris", _ex("paris")) == 0.0  # no answer line
    cased = DefinedTask(TaskDefinition.define(name="t", rows=[{"q": "Q", "a": "x"}], question="q", answer="a",
                                              answer_type="exact", case_sensitive=True))
    assert cased.score("Answer: paris", _ex("Paris")) == 0.0
    regex = DefinedTask(TaskDefinition.define(name="t", rows=[{"q": "Q", "a": "x"}], question="q", answer="a",
                                              answer_type="regex", pattern=r"\[\[(.+?)\]\]"))
    assert regex.extract_answer("[[a]] then [[b]]", _ex("a")) == "a"  # reference: the first match
    assert regex.score("[[ A ]] then [[b]]", _ex("a")) == 1.0
    regex.scoring = "lenient"
    assert regex.extract_answer("[[a]] then [[b]]", _ex("a")) == "b"  # lenient: the last


def test_choice_answers_as_letter_index_or_text_and_any_number_of_options(tmp_path):
    rows = [{"q": "Pick the fruit", "o1": "stone", "o2": "apple", "o3": "car", "gold": g} for g in ("B", 1, "apple")]
    rows += [{"q": "x", "o1": "a", "o2": "b", "o3": "c", "gold": "c"}] * 5
    path = task_file(tmp_path, rows, question="q", choices=["o1", "o2", "o3"], answer="gold", answer_type="choice")
    task = get_task(str(path))
    s = task.splits()
    by_row = {e.meta["row"]: e for e in s.train + s.val + s.test}
    assert [by_row[r].answer for r in range(3)] == ["B", "B", "B"]
    ex = by_row[0]
    text = task.format_question(ex)
    assert "where LETTER is one of ABC. Think step by step" in text and text.endswith("A) stone\nB) apple\nC) car")
    assert task.update_constraints(ex) == [P.MULTIPLE_CHOICE_CONSTRAINT.replace("ABCD", "ABC")]
    assert task.score("Answer: B", ex) == 1.0 and task.score("Answer: D", ex) == 0.0
    task.scoring = "lenient"
    assert task.score("I think... **Answer: (b)**", ex) == 1.0


def test_shuffled_choices_record_their_permutation(tmp_path):
    rows = [{"q": f"q{i}", "right": f"r{i}", "w1": f"w{i}a", "w2": f"w{i}b", "w3": f"w{i}c"} for i in range(12)]
    path = task_file(tmp_path, rows, question="q", choices=["right", "w1", "w2", "w3"], answer="right",
                     answer_type="choice", shuffle_choices=True)
    s = get_task(str(path), seed=3).splits()
    letters = set()
    for e in s.train + s.val + s.test:
        assert e.choices["ABCD".index(e.answer)] == f"r{e.meta['row']}"
        assert [e.choices[i] for i in range(4)] == [rows[e.meta["row"]][c] for c in
                                                   (["right", "w1", "w2", "w3"][p] for p in e.meta["permutation"])]
        letters.add(e.answer)
    assert len(letters) > 1


def test_python_scorer_beside_the_task_file_with_feedback_and_errors(tmp_path):
    (tmp_path / "my_scoring.py").write_text(
        "def score(response, example):\n"
        "    if 'boom' in response:\n        raise ValueError('boom')\n"
        "    if 'big' in response:\n        return 2.0\n"
        "    return (1.0, 'nice') if example.meta['fields']['a'] in response else 0.0\n")
    path = task_file(tmp_path, [{"q": f"q{i}", "a": f"w{i}"} for i in range(8)], question="{q}?", answer="a",
                     answer_type="python", scorer="my_scoring:score")
    task = get_task(str(path))
    ex = task.splits().test[0]
    assert ex.question.endswith("?")  # a template over the fields
    ok = task.score_item(f"Answer: {ex.answer}", ex)
    assert (ok.score, ok.feedback, ok.error) == (1.0, "nice", None)
    assert task.score_item("nothing", ex).score == 0.0
    boom, big = task.score_item("boom", ex), task.score_item("big", ex)
    assert boom.score == big.score == 0.0
    assert boom.error == "scorer my_scoring:score raised ValueError: boom"
    assert "returned 2.0; a score must be a number in [0, 1]" in big.error
    assert task.describe()["scorer_errors"] == {"count": 2, "first": boom.error}
    assert task.extract_answer(f"Reasoning\nAnswer: {ex.answer}", ex) == ex.answer  # for the vote: the answer line


def test_splits_from_their_own_files_in_file_order(tmp_path):
    for split, n in (("train", 2), ("val", 3), ("test", 4)):
        (tmp_path / f"{split}.csv").write_text("q,a\n" + "".join(f"{split} {i},{i}\n" for i in range(n)))
    path = task_file(tmp_path, question="q", answer="a", answer_type="number",
                     splits={"train": "train.csv", "val": "val.csv", "test": "test.csv"})
    task = get_task(str(path))
    s = task.splits()
    assert [e.question for e in s.test] == [f"test {i}" for i in range(4)] and len(s.train) == 2 and len(s.val) == 3
    d = task.describe()
    assert d["origin"] == "splits" and d["split_rule"].startswith("splits as given")
    assert set(d["identity"]["data"]) == {"splits.train", "splits.val", "splits.test"}


def test_data_file_replaces_a_task_files_data(tmp_path):
    path = task_file(tmp_path, [{"q": f"q{i}", "a": i} for i in range(8)], question="q", answer="a",
                     answer_type="number")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"q": f"other {i}", "a": i}) + "\n" for i in range(8)))
    s = get_task(str(path), data_file=other).splits()
    assert all(e.question.startswith("other") for e in s.train + s.val + s.test)


def test_bad_rows_are_skipped_and_counted(tmp_path):
    rows = [{"q": "q", "a": "x"}, {"q": "", "a": 1}] + [{"q": f"q{i}", "a": i} for i in range(8)]
    path = task_file(tmp_path, rows, question="q", answer="a", answer_type="number")
    task = get_task(str(path))
    assert list(task.splits().skipped) == [{"row": 0, "reason": "field 'a' 'x' is not a number"},
                                           {"row": 1, "reason": "empty field 'q'"}]
    with pytest.raises(TaskDataError, match="row 0: field 'a' 'x' is not a number"):
        get_task(str(path), strict=True).splits()


@pytest.mark.parametrize("keys, needle", [
    (dict(name="has space"), "key 'name'"),
    (dict(question="{question"), "key 'question': is not a valid template"),
    (dict(choices="options"), "key 'choices': is read only by answer_type choice"),
    (dict(splits={"train": "a.jsonl", "val": "a.jsonl", "tets": "a.jsonl"}), "key 'splits.tets': unknown split"),
    (dict(data={"path": "org/x", "file": "a.jsonl"}), "key 'data': give either 'file'"),
    (dict(data="rows.txt"), "key 'data': rows.txt: unsupported format '.txt'"),
    (dict(answer_type="regex", pattern="("), "key 'pattern': is not a valid regular expression"),
    (dict(python="json:nope"), "key 'python': module 'json' has no callable 'nope'"),
])
def test_definition_errors_name_the_key(tmp_path, keys, needle):
    body = {"name": "t", "data": "rows.jsonl", "question": "q", "answer": "a", "answer_type": "number", **keys}
    if "python" in keys:
        body = {"name": "t", "python": keys["python"]}
    (tmp_path / "rows.jsonl").write_text('{"q": "x", "a": 1}\n')
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(TaskDefinitionError, match=needle) as e:
        TaskDefinition.load(tmp_path / "t.yaml")
    assert str(e.value).startswith(f"task file {(tmp_path / 't.yaml').resolve()}: ")


# -- built-ins are task files ------------------------------------------------------------------------


def test_built_ins_are_the_files_of_the_builtin_folder():
    files = {p.stem for p in BUILTIN_DIR.iterdir() if p.suffix in (".yaml", ".py") and not p.name.startswith("_")}
    assert files == {"word_sorting", "synthetic_word_sorting", "mmlu_machine_learning", "gpqa_diamond", "arithmetic"}
    assert set(task_names()) >= files | {"bbh_word_sorting"}
    gpqa = TaskDefinition.load(BUILTIN_DIR / "gpqa_diamond.yaml")
    assert gpqa.answer_type == "choice" and gpqa.shuffle_choices and gpqa.data.gated
    assert gpqa.initial_loss_prompt.startswith("Below is a multi-choice question and a prediction.")
    assert get_task("synthetic_word_sorting").identity()["kind"] == "builtin"
