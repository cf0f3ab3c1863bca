"""Task registry and loaders: splits, seeds, bad rows, Hub errors (no network needed).

Local fixtures in each dataset's real schema go through the same
``datasets.load_dataset`` code path as the Hub; Hub failures are simulated with
the exception types ``datasets`` really raises.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtg_local.tasks import TaskDataError, get_task, task_names
from mtg_local.tasks.base import Splits
from mtg_local.tasks.word_sorting import WordSortingTask

FIX = Path(__file__).parent / "fixtures"
BBH = FIX / "tasks_bbh_word_sorting.json"
BBH_BAD = FIX / "tasks_bbh_word_sorting_bad.json"
MMLU = FIX / "tasks_mmlu_machine_learning.jsonl"
GPQA = FIX / "tasks_gpqa_diamond.csv"


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path_factory, monkeypatch):
    """Keep the datasets Arrow cache of these tests out of the user's HF_HOME."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf_datasets")


def sizes(s: Splits) -> tuple[int, int, int]:
    return len(s.train), len(s.val), len(s.test)


def ids_and_questions(s: Splits) -> list[tuple[str, str]]:
    return [(e.id, e.question) for e in s.train + s.val + s.test]


# ------------------------------------------------------------------ registry


def test_task_names_and_prompts():
    assert sorted(task_names()) == sorted([
        "word_sorting", "bbh_word_sorting", "mmlu_machine_learning", "gpqa_diamond", "synthetic_word_sorting",
        "arithmetic",
    ])
    ws = get_task("synthetic_word_sorting")
    mmlu = get_task("mmlu_machine_learning", data_file=MMLU)
    gpqa = get_task("gpqa_diamond", data_file=GPQA)
    assert ws.initial_loss_prompt.startswith("Below is a word sorting problem and an answer.")
    assert mmlu.initial_loss_prompt.startswith("Below is a multi-choice question and an answer.")
    assert "Use the Janusian Process." in gpqa.initial_loss_prompt
    assert gpqa.initial_loss_prompt.endswith("Raise creative and critical objections to the solution, when needed.")
    assert mmlu.format_instruction == (
        "The last line of your response should be of the following format: 'Answer: $LETTER' "
        "(without quotes) where LETTER is one of ABCD. Think step by step before answering."
    )


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"name": "nope"}, "unknown task 'nope'"),
        ({"name": "mmlu_machine_learning", "source": "builtin"}, "has no built-in data"),
        ({"name": "word_sorting", "source": "builtin"}, "are 'arithmetic', 'synthetic_word_sorting'"),
        ({"name": "synthetic_word_sorting", "source": "hub"}, "use 'word_sorting' for BBH"),
        ({"name": "synthetic_word_sorting", "data_file": "x.json"}, "reads no data"),
        ({"name": "word_sorting", "source": "web"}, "source must be one of"),
        ({"name": "word_sorting", "scoring": "loose"}, "scoring must be one of reference, lenient"),
        ({"name": "synthetic_word_sorting", "seed": "1"}, "seed must be an int"),
        ({"name": "gpqa_diamond", "data_file": "x.txt"}, "unsupported format '.txt'"),
    ],
)
def test_get_task_rejects_bad_arguments(kwargs, needle):
    with pytest.raises(TaskDataError, match=needle):
        get_task(kwargs.pop("name"), **kwargs)


def test_synthetic_word_sorting_is_offline_and_deterministic():
    a = get_task("synthetic_word_sorting")
    b, c = get_task("synthetic_word_sorting", seed=0), get_task("synthetic_word_sorting", seed=1)
    assert sizes(a.splits()) == (50, 100, 100)
    assert ids_and_questions(a.splits()) == ids_and_questions(b.splits())
    assert [e.question for e in a.splits().test] != [e.question for e in c.splits().test]
    assert a.name == a.describe()["name"] == "synthetic_word_sorting"
    assert a.describe()["source"] == "builtin(seed=0)"
    assert a.describe()["scoring"] == "reference"
    assert a.initial_loss_prompt.startswith("Below is a word sorting problem and an answer.")
    ex = a.splits().train[0]
    assert ex.answer == " ".join(sorted(ex.question.split("List: ")[1].split()))


def test_word_sorting_is_bbh_and_the_old_name_is_an_alias():
    """``word_sorting`` loads BBH (Hub or file), never the generated set; the alias resolves to it."""
    ws, alias = get_task("word_sorting"), get_task("bbh_word_sorting")
    assert isinstance(ws, WordSortingTask) and ws.data is not None and ws.source == "hub"
    assert alias.name == ws.name == "word_sorting" and alias.source == "hub"
    from_file = get_task("bbh_word_sorting", data_file=BBH, scoring="lenient")
    assert from_file.name == "word_sorting" and from_file.describe()["scoring"] == "lenient"


def test_missing_data_file_names_the_path(tmp_path):
    task = get_task("mmlu_machine_learning", data_file=tmp_path / "absent.jsonl")
    with pytest.raises(TaskDataError, match="absent.jsonl does not exist"):
        task.splits()


# ------------------------------------------------------------------ BBH word sorting


def test_bbh_file_splits_in_file_order_and_formats():
    task = get_task("word_sorting", data_file=BBH)
    s = task.splits()
    assert sizes(s) == (2, 4, 6)  # <= 150 rows: 1:2:2
    first = json.loads(BBH.read_text())["examples"][0]
    assert s.train[0].question == first["input"]
    assert s.train[0].answer == first["target"]
    assert [e.meta["row"] for e in s.train + s.val + s.test] == list(range(12))
    jsonl = get_task("bbh_word_sorting", data_file=FIX / "tasks_bbh_word_sorting.jsonl").splits()
    assert [e.answer for e in jsonl.train + jsonl.val + jsonl.test] == [
        e.answer for e in (s.train + s.val + s.test)[:10]
    ]
    d = task.describe()
    assert (d["dataset"], d["config"], d["origin"], d["skipped"]) == ("lukaemon/bbh", "word_sorting", "file", 0)
    assert d["data_file"] == str(BBH)


def _bigbench_file(path: Path, n: int, *, mixed: bool) -> list[str]:
    """A BIG-bench task.json-style file: targets as lists (some plain strings if ``mixed``)."""
    import random

    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    examples, answers = [], []
    for i in range(n):
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(rng.randint(2, 6))]
        target = " ".join(sorted(words))
        answers.append(target)
        examples.append({"input": "List: " + " ".join(words), "target": target if (mixed and i % 3 == 0) else [target]})
    path.write_text(json.dumps({"name": "word_sorting", "task_prefix": "Sort:\n", "examples": examples}))
    return answers


@pytest.mark.parametrize("mixed", [False, True])
def test_bigbench_1900_keeps_50_100_100_of_first_250(tmp_path, mixed):
    answers = _bigbench_file(tmp_path / "task.json", 1900, mixed=mixed)
    task = get_task("word_sorting", data_file=tmp_path / "task.json")
    s = task.splits()
    assert sizes(s) == (50, 100, 100)
    assert [e.answer for e in s.train + s.val + s.test] == answers[:250]
    assert s.test[-1].meta["row"] == 249
    assert s.train[0].question.startswith("Sort the following words alphabetically: List: ")
    d = task.describe()
    assert (d["rows"], d["unused"], d["skipped"]) == (1900, 1650, 0)
    bigger = WordSortingTask.load(data_file=str(tmp_path / "task.json"), sizes=(50, 100, None)).splits()
    assert sizes(bigger) == (50, 100, 1750)


def test_bbh_split_with_fewer_than_250_rows(tmp_path):
    _bigbench_file(tmp_path / "t.json", 200, mixed=False)
    assert sizes(get_task("word_sorting", data_file=tmp_path / "t.json").splits()) == (50, 100, 50)


BBH_BAD_ROWS = [
    {"row": 2, "reason": "missing field 'target'"},
    {"row": 4, "reason": "empty field 'input'"},
    {"row": 6, "reason": "field 'target' does not hold exactly the words listed in 'input'"},
    {"row": 8, "reason": "missing field 'input'"},
]


def test_bbh_bad_rows_skipped_and_counted(caplog):
    task = get_task("word_sorting", data_file=BBH_BAD)
    with caplog.at_level("WARNING"):
        s = task.splits()
    assert list(s.skipped) == BBH_BAD_ROWS
    assert sizes(s) == (1, 3, 4)
    assert "skipped 4 bad row(s)" in caplog.text and "row 6" in caplog.text
    assert task.describe()["skipped"] == 4


def test_bbh_bad_rows_strict_stops_at_first():
    with pytest.raises(TaskDataError, match=r"tasks_bbh_word_sorting_bad\.json.*row 2: missing field 'target'"):
        get_task("word_sorting", data_file=BBH_BAD, strict=True).splits()


def test_json_object_without_examples(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(TaskDataError, match="expected a JSON object with a list under 'examples'"):
        get_task("word_sorting", data_file=tmp_path / "x.json").splits()


def test_unreadable_file_is_a_task_data_error(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"question": "q", "choices": ["a","b","c","d"], "answer": 1}\n{not json\n')
    with pytest.raises(TaskDataError, match="cannot be read as json"):
        get_task("mmlu_machine_learning", data_file=tmp_path / "x.jsonl").splits()
