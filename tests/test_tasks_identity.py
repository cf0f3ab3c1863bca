"""Task identity (issue 28, point 4): results.json records it, the protocol hash covers it, and
``mtg report`` gives one column per identity: two datasets never share a cell, one dataset is one
cell however its path was written. Runs are real ``mtg eval`` runs on a scripted model.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from mtg_local import cli, evaluate
from mtg_local.protocol import DEFAULT_PROTOCOL, protocol_hash, task_hash_part
from mtg_local.report.paper_reference import PAPER_LABEL
from mtg_local.tasks import get_task
from tests.task_fakes import TaskModel, example_tasks

FIX = Path(__file__).parent / "fixtures"
SMALL = dict(limit=2, seeds=[0], steps=1, max_tokens=64, optimizer_max_tokens=64, no_progress=True,
             method="zero_shot_cot")


def _report(tmp: Path, runs: Path) -> tuple[str, list[dict]]:
    out = tmp / "report"
    assert cli.main(["report", str(runs), "--out", str(out), "--no-plots"]) == 0
    return (out / "report.md").read_text(), list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))


def _cells(rows: list[dict]) -> dict[str, tuple[str, int]]:
    """Column -> (mean %, how many runs the cell merged)."""
    return {r["task"]: (r["mean_pct"], len(r["run_dirs"].split(";"))) for r in rows}


def test_same_named_data_in_two_folders_two_cells_one_file_named_two_ways_one_cell(tmp_path, monkeypatch):
    """The issue's case: /data/v1/x (100 %) and /data/v2/x (0 %) were one cell showing 0.0 (n=1)."""
    tasks = example_tasks(tmp_path)
    for version in ("v1", "v2"):
        folder = tmp_path / "data" / version
        folder.mkdir(parents=True)
        shutil.copy(tasks["sums"], folder / "sums.yaml")
        rows = [json.loads(line) for line in (tasks["sums"].parent / "sums.jsonl").read_text().splitlines()]
        if version == "v2":  # same questions, other answers: the scripted model is wrong on all of them
            rows = [{**r, "answer": r["answer"] + 1} for r in rows]
        (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    evaluate(task="data/v1/sums.yaml", out=runs / "v1-relative", engine=TaskModel(), **SMALL)
    evaluate(task=str(tmp_path / "data/v1/sums.yaml"), out=runs / "v1-absolute", engine=TaskModel(), **SMALL)
    evaluate(task="data/v2/sums.yaml", out=runs / "v2", engine=TaskModel(), **SMALL)
    md, rows = _report(tmp_path, runs)
    assert _cells(rows) == {"sums [v1/sums]": ("100.00", 2),  # relative + absolute: one cell of both runs
                            "sums [v2/sums]": ("0.00", 1)}
    assert "sums [v1/sums]" in md and "sums [v2/sums]" in md
    assert f": {PAPER_LABEL}" not in md  # a user's task never sits beside the paper's column


def test_built_in_task_on_two_data_files_of_one_name(tmp_path, monkeypatch):
    """A paper task on local copies: one column per file content; the paper's column beside each."""
    monkeypatch.chdir(tmp_path)
    lines = (FIX / "tasks_mmlu_machine_learning.jsonl").read_text().splitlines(True)
    for version, body in (("v1", lines), ("v2", lines[::-1])):
        (tmp_path / version).mkdir()
        (tmp_path / version / "mmlu.jsonl").write_text("".join(body))
    runs = tmp_path / "runs"
    common = ["eval", "--task", "mmlu_machine_learning", "--engine", "fake", "--limit", "2", "--steps", "1",
              "--method", "zero_shot_cot", "--no-progress"]
    assert cli.main([*common, "--data-file", "v1/mmlu.jsonl", "--seeds", "0", "--out", str(runs / "a")]) == 0
    assert cli.main([*common, "--data-file", str(tmp_path / "v1/mmlu.jsonl"), "--seeds", "0",
                     "--out", str(runs / "b")]) == 0
    assert cli.main([*common, "--data-file", "v2/mmlu.jsonl", "--seeds", "0", "--out", str(runs / "c")]) == 0
    md, rows = _report(tmp_path, runs)
    cells = _cells(rows)
    assert set(cells) == {"mmlu_machine_learning [v1/mmlu]", "mmlu_machine_learning [v2/mmlu]"}
    assert cells["mmlu_machine_learning [v1/mmlu]"][1] == 2
    assert {r["paper_gpt4omini_pct"] for r in rows} == {"74.4"}  # the paper's task: its zero-shot number
    assert f"MMLU Machine Learning [v1/mmlu]: {PAPER_LABEL}" in md


def test_results_record_the_definition_and_the_data_hash(tmp_path):
    tasks = example_tasks(tmp_path)
    res = evaluate(task=tasks["capitals"], out=tmp_path / "run", engine=TaskModel(), **SMALL)
    info = res["task_info"]
    data = (tasks["capitals"].parent / "capitals.csv").read_bytes()
    assert info["identity"]["data"] == {"data": {"file_sha256": hashlib.sha256(data).hexdigest()}}
    assert info["task_file"] == str(tasks["capitals"]) and info["answer_type"] == "choice"
    assert info["definition"]["choices"] == ["A", "B", "C", "D"] and info["definition"]["data"]["origin"] == "file"
    assert res["task_id"] == info["identity"]["id"]
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["task_id"] == res["task_id"] and stored["protocol_hash"] == res["protocol_hash"]


def test_protocol_hash_covers_user_tasks_and_leaves_built_in_defaults_alone(tmp_path):
    tasks = example_tasks(tmp_path)
    synthetic = get_task("synthetic_word_sorting").identity()
    assert task_hash_part(synthetic) is None  # a built-in on its own data: the hash every earlier run has
    assert protocol_hash(DEFAULT_PROTOCOL, task=synthetic) == protocol_hash(DEFAULT_PROTOCOL)
    bbh_file = get_task("word_sorting", data_file=FIX / "tasks_bbh_word_sorting.json").identity()
    assert protocol_hash(DEFAULT_PROTOCOL, task=bbh_file) != protocol_hash(DEFAULT_PROTOCOL)

    sums = get_task(str(tasks["sums"])).identity()
    moved = tmp_path / "elsewhere"
    shutil.copytree(tasks["sums"].parent, moved)
    same = get_task(str(moved / "sums.yaml")).identity()
    assert same["id"] == sums["id"] and same["source"] != sums["source"]  # content, not the path
    assert protocol_hash(DEFAULT_PROTOCOL, task=same) == protocol_hash(DEFAULT_PROTOCOL, task=sums)
    (moved / "sums.yaml").write_text((moved / "sums.yaml").read_text() + "tolerance: 0.5\n")
    edited = get_task(str(moved / "sums.yaml")).identity()
    assert edited["data_hash"] == sums["data_hash"] and edited["definition_hash"] != sums["definition_hash"]
    assert protocol_hash(DEFAULT_PROTOCOL, task=edited) != protocol_hash(DEFAULT_PROTOCOL, task=sums)


def test_hub_data_identity_is_its_revision(monkeypatch, tmp_path):
    """A Hub dataset is identified by the revision asked for and the commit ``datasets`` resolved."""
    import datasets

    rows = [{"q": f"What is {i} + 1?", "a": i + 1} for i in range(8)]
    calls = []

    class Loaded(datasets.Dataset):
        @property
        def cache_files(self):  # where datasets keeps a Hub dataset: .../<config>/<version>/<commit>/
            return [{"filename": str(tmp_path / "org___sums/default/0.0.0/0123456789abcdef/sums-train.arrow")}]

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        ds = datasets.Dataset.from_list(rows)
        ds.__class__ = Loaded
        return datasets.DatasetDict({"train": ds})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (tmp_path / "hub.yaml").write_text("name: hub_sums\ndata: {path: org/sums, split: train, revision: v2.0}\n"
                                       "question: q\nanswer: a\nanswer_type: number\n")
    task = get_task(str(tmp_path / "hub.yaml"))
    assert len(task.splits().test) == 6 and calls == [("org/sums", None, {"revision": "v2.0"})]
    ident = task.identity()
    assert ident["data"] == {"data": {"hub": "org/sums", "config": None, "splits": ["train"], "revision": "v2.0",
                                      "resolved": "0123456789abcdef"}}
    assert task.describe()["origin"] == "hub" and task.describe()["revision"] == "v2.0"


def test_resume_refuses_a_task_file_that_changed(tmp_path):
    from mtg_local import train

    tasks = example_tasks(tmp_path)
    out = tmp_path / "run"
    common = dict(task=tasks["sums"], method="learned_loss", engine=TaskModel(), outer_steps=1, minibatch=2,
                  **{k: v for k, v in SMALL.items() if k != "method"})
    train(out=out, **common)
    (out / "results.json").unlink()
    data = tasks["sums"].parent / "sums.jsonl"
    data.write_text(data.read_text().replace('"answer": 5}', '"answer": 6}'))
    from engines.errors import UserError

    with pytest.raises(UserError, match="the task's definition or data changed since the run started"):
        train(resume=out, engine=TaskModel(), no_progress=True)
    assert os.path.exists(out / "checkpoint.json")
