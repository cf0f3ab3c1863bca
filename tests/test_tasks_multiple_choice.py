"""MMLU machine learning and GPQA diamond: 1:3 splits, option shuffling, bad rows, Hub errors.

Fixtures are JSONL/CSV (and a Parquet written here) in the Hub schemas, read
through ``datasets.load_dataset``; Hub failures use the real exception types.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtg_local.tasks import TaskDataError, get_task
from mtg_local.tasks.base import Splits
OPTION_FIELDS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")

FIX = Path(__file__).parent / "fixtures"
MMLU = FIX / "tasks_mmlu_machine_learning.jsonl"
MMLU_BAD = FIX / "tasks_mmlu_machine_learning_bad.jsonl"
GPQA = FIX / "tasks_gpqa_diamond.csv"
GPQA_BAD = FIX / "tasks_gpqa_diamond_bad.csv"
GATED_HINT = "set HF_TOKEN / huggingface-cli login and accept the dataset terms at https://huggingface.co/datasets/Idavidrein/gpqa"


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path_factory, monkeypatch):
    """Keep the datasets Arrow cache of these tests out of the user's HF_HOME."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf_datasets")


def all_examples(s: Splits):
    return s.train + s.val + s.test


def sizes(s: Splits) -> tuple[int, int, int]:
    return len(s.train), len(s.val), len(s.test)


# ------------------------------------------------------------------ MMLU


def test_mmlu_split_is_one_to_three_with_val_from_train():
    s = get_task("mmlu_machine_learning", data_file=MMLU).splits()
    assert sizes(s) == (2, 1, 9)  # 12 rows: train part (12+2)//4 = 3 -> 2 train + 1 val; 9 test
    rows = [json.loads(line) for line in MMLU.read_text().splitlines()]
    assert sorted(e.meta["row"] for e in all_examples(s)) == list(range(12))
    for e in all_examples(s):
        src = rows[e.meta["row"]]
        assert e.choices == tuple(src["choices"])  # MMLU keeps the option order
        assert e.answer == "ABCD"[src["answer"]]
        assert e.question == src["question"] + "\n\n" + "\n".join(f"{L}) {c}" for L, c in zip("ABCD", src["choices"]))
        assert e.meta["subject"] == "machine_learning"


def test_mmlu_split_determinism():
    a = get_task("mmlu_machine_learning", data_file=MMLU, seed=0).splits()
    b = get_task("mmlu_machine_learning", data_file=MMLU, seed=0).splits()
    c = get_task("mmlu_machine_learning", data_file=MMLU, seed=1).splits()
    rows = lambda s: [e.meta["row"] for e in all_examples(s)]  # noqa: E731
    assert rows(a) == rows(b)
    assert rows(a) != rows(c)
    assert sizes(a) == sizes(c)


def test_mmlu_format_question_is_textgrad_template():
    task = get_task("mmlu_machine_learning", data_file=MMLU)
    ex = task.splits().test[0]
    text = task.format_question(ex)
    assert text.startswith("Answer the following multiple choice question. The last line of your response")
    assert text.endswith(ex.question) and "\nA) " in text and "\nD) " in text


def test_mmlu_parquet_same_as_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in MMLU.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ml.parquet")
    a = get_task("mmlu_machine_learning", data_file=MMLU).splits()
    b = get_task("mmlu_machine_learning", data_file=tmp_path / "ml.parquet").splits()
    assert [(e.question, e.answer) for e in all_examples(a)] == [(e.question, e.answer) for e in all_examples(b)]


def test_mmlu_hub_splits_concatenated_dev_validation_test(monkeypatch):
    """The Hub path: ``load_dataset("cais/mmlu", "machine_learning")`` and the documented concatenation."""
    import datasets

    rows = [json.loads(line) for line in MMLU.read_text().splitlines()]
    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        return datasets.DatasetDict(
            {
                "test": datasets.Dataset.from_list(rows[4:]),
                "validation": datasets.Dataset.from_list(rows[1:4]),
                "dev": datasets.Dataset.from_list(rows[:1]),
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = get_task("mmlu_machine_learning", seed=3)
    s = task.splits()
    assert calls == [("cais/mmlu", "machine_learning", {})]
    origin = {e.meta["row"]: e.meta["source_split"] for e in all_examples(s)}
    assert [origin[r] for r in range(12)] == ["dev"] + ["validation"] * 3 + ["test"] * 8
    d = task.describe()
    assert d["origin"] == "hub" and d["hub_splits"] == ["dev", "validation", "test"] and d["seed"] == 3
    assert d["sizes"] == {"train": 2, "val": 1, "test": 9} and d["data_file"] is None


MMLU_BAD_ROWS = [
    {"row": 1, "reason": "missing field 'question'"},
    {"row": 2, "reason": "empty field 'question'"},
    {"row": 4, "reason": "field 'choices' has 3 options, expected 4"},
    {"row": 5, "reason": "field 'answer' 4 is outside the 4 choices (0-3)"},
    {"row": 6, "reason": "missing field 'answer'"},
    {"row": 8, "reason": "choice B is empty or not text ('')"},
    {"row": 9, "reason": "missing field 'choices'"},
]


def test_mmlu_bad_rows_skipped_with_row_numbers(caplog):
    task = get_task("mmlu_machine_learning", data_file=MMLU_BAD)
    with caplog.at_level("WARNING"):
        s = task.splits()
    assert list(s.skipped) == MMLU_BAD_ROWS
    assert sorted(e.meta["row"] for e in all_examples(s)) == [0, 3, 7, 10, 11, 12, 13]
    assert "skipped 7 bad row(s)" in caplog.text
    assert task.describe()["skipped"] == 7


def test_mmlu_bad_rows_strict():
    with pytest.raises(TaskDataError, match=r"row 1: missing field 'question'"):
        get_task("mmlu_machine_learning", data_file=MMLU_BAD, strict=True).splits()


def test_too_few_usable_rows(tmp_path):
    lines = MMLU.read_text().splitlines()[:3]
    (tmp_path / "few.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskDataError, match="3 usable row"):
        get_task("mmlu_machine_learning", data_file=tmp_path / "few.jsonl").splits()


# ------------------------------------------------------------------ GPQA


def _gpqa_rows() -> list[dict]:
    with GPQA.open(newline="") as f:
        return list(csv.DictReader(f))


def test_gpqa_split_and_recorded_permutation():
    task = get_task("gpqa_diamond", data_file=GPQA)
    s = task.splits()
    assert sizes(s) == (2, 1, 9)
    rows = _gpqa_rows()
    for e in all_examples(s):
        src = rows[e.meta["row"]]
        perm = e.meta["permutation"]
        assert sorted(perm) == [0, 1, 2, 3]
        assert e.choices == tuple(src[OPTION_FIELDS[p]].strip() for p in perm)
        assert e.choices["ABCD".index(e.answer)] == src["Correct Answer"].strip()  # ground truth is right
        assert e.meta["Record ID"] == src["Record ID"]  # the task file's meta_fields
    assert "\n" in next(e.question for e in all_examples(s) if e.meta["row"] == 11)  # multi-line CSV cell
    assert len({e.answer for e in all_examples(s)}) > 1  # shuffled: not always "A"


def test_gpqa_permutation_determinism():
    def perms(seed):
        s = get_task("gpqa_diamond", data_file=GPQA, seed=seed).splits()
        return {e.meta["row"]: tuple(e.meta["permutation"]) for e in all_examples(s)}

    assert perms(0) == perms(0)
    assert perms(0) != perms(1)


GPQA_BAD_ROWS = [
    {"row": 1, "reason": "missing field 'Question'"},
    {"row": 4, "reason": "missing field 'Incorrect Answer 3'"},
    {"row": 6, "reason": "the 4 options are not distinct (the correct one would be ambiguous)"},
]


def test_gpqa_bad_rows():
    s = get_task("gpqa_diamond", data_file=GPQA_BAD).splits()
    assert list(s.skipped) == GPQA_BAD_ROWS
    assert sizes(s) == (1, 1, 5)
    with pytest.raises(TaskDataError, match="row 1: missing field 'Question'"):
        get_task("gpqa_diamond", data_file=GPQA_BAD, strict=True).splits()


def test_gpqa_missing_column_is_a_schema_error():
    with pytest.raises(TaskDataError, match=r"gpqa_diamond.yaml: key 'choices': field 'Incorrect Answer 3' is not in "
                                             r"the data \(data\); it has: .*Incorrect Answer 2"):
        get_task("gpqa_diamond", data_file=FIX / "tasks_gpqa_diamond_missing_column.csv").splits()


def _gated_error():
    """What ``datasets.load_dataset`` raises for a gated repo without a token (its real types)."""
    import httpx2
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import GatedRepoError

    url = "https://huggingface.co/datasets/Idavidrein/gpqa/resolve/main/README.md"
    cause = GatedRepoError("401 Client Error", response=httpx2.Response(401, request=httpx2.Request("GET", url)))
    err = DatasetNotFoundError(
        "Dataset 'Idavidrein/gpqa' is a gated dataset on the Hub. You must be authenticated to access it."
    )
    err.__cause__ = cause
    return err


def test_gpqa_gated_without_token_says_how(monkeypatch):
    import datasets

    def fake_load_dataset(*a, **k):
        raise _gated_error()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(TaskDataError) as info:
        get_task("gpqa_diamond").splits()
    msg = str(info.value)
    assert GATED_HINT in msg and "'gpqa_diamond'" in msg and "--data-file" in msg


def test_gpqa_gated_through_real_datasets_code(monkeypatch):
    """The Hub's 401 surfaces through datasets' own translation (hf_hub_download patched, no network)."""
    import datasets
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(self, *a, **k):
        resp = httpx2.Response(401, request=httpx2.Request("GET", "https://huggingface.co/datasets/Idavidrein/gpqa"))
        raise GatedRepoError("401 Client Error: gated", response=resp)

    monkeypatch.setattr(huggingface_hub.HfApi, "hf_hub_download", gated)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with pytest.raises(TaskDataError, match="is gated and could not be accessed") as info:
        get_task("gpqa_diamond").splits()
    assert GATED_HINT in str(info.value)


def test_offline_missing_dataset_message(tmp_path):
    """HF_DATASETS_OFFLINE with an empty HF_HOME: one message naming dataset, config and --data-file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    code = (
        "from mtg_local.tasks import get_task, TaskDataError\n"
        "for name in ('mmlu_machine_learning', 'gpqa_diamond', 'bbh_word_sorting'):\n"
        "    try:\n        get_task(name).splits()\n"
        "    except TaskDataError as e:\n        print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("ERR")]
    assert len(lines) == 3, out.stdout + out.stderr
    for line, (ds, cfg) in zip(
        lines, [("cais/mmlu", "machine_learning"), ("Idavidrein/gpqa", "gpqa_diamond"), ("lukaemon/bbh", "word_sorting")]
    ):
        assert f"dataset '{ds}' config '{cfg}'" in line
        assert "--data-file FILE" in line and "HF_DATASETS_OFFLINE" in line
    assert GATED_HINT in lines[1]
