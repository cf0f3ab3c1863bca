"""A wrong task file stops every command in one stderr line naming the file and the key, exit 2,
before any engine starts (issue 28, point 6).

Each case edits the worked example ``sums.yaml`` (copied outside the repo). Engine creation
is replaced by a trap, so a command that got as far as starting an engine fails loudly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtg_local import cli
from tests.task_fakes import example_tasks


@pytest.fixture(autouse=True)
def no_engine(monkeypatch):
    """Any engine start is a test failure: the definition must be refused before it."""
    def trap(*args, **kwargs):
        raise AssertionError(f"an engine was started for {args!r}")

    import engines.registry
    import mtg_local.commands.common
    import mtg_local.grid.engine
    import mtg_local.meta.train_run

    # every module that binds create_engine is imported first, so none keeps the trap after the test
    for module in (engines.registry, mtg_local.commands.common, mtg_local.grid.engine, mtg_local.meta.train_run):
        monkeypatch.setattr(module, "create_engine", trap)


def write_task(tmp: Path, file_name: str, **changes) -> Path:
    """``sums.yaml`` with ``changes`` (a None value removes the key), as ``tmp/tasks/FILE_NAME.yaml``."""
    tasks = example_tasks(tmp)
    body = yaml.safe_load(tasks["sums"].read_text())
    for k, v in changes.items():
        body.pop(k, None) if v is None else body.__setitem__(k, v)
    path = tasks["sums"].parent / f"{file_name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


CASES = {
    "missing_key": (dict(answer=None), "key 'answer': missing (required)"),
    "field_the_data_lacks": (dict(question="questoin"), "key 'question': field 'questoin' is not in the data"),
    "unknown_answer_type": (dict(answer_type="numeric"), "key 'answer_type': unknown answer type 'numeric'"),
    "scorer_not_importable": (dict(answer_type="python", scorer="no_such_module:score"),
                              "key 'scorer': cannot import module 'no_such_module'"),
    "scorer_not_a_function": (dict(answer_type="python", scorer="json:no_such_function"),
                              "key 'scorer': module 'json' has no callable 'no_such_function'"),
    "empty_split": (dict(data=None, splits={"train": "sums.jsonl", "val": "sums.jsonl", "test": "empty.jsonl"}),
                    "key 'splits.test': the data has no rows"),
    "too_few_rows_for_the_seeded_split": (dict(data="three.jsonl"), "key 'data': 3 usable row(s) of 3"),
    "missing_split": (dict(data=None, splits={"train": "sums.jsonl", "test": "sums.jsonl"}),
                      "key 'splits.val': missing"),
    "key_of_another_type": (dict(tolerance=0.5, answer_type="exact"), "key 'tolerance': is read only by answer_type number"),
    "unknown_key": (dict(quesiton="question"), "key 'quesiton': unknown key"),
    "pattern_without_group": (dict(answer_type="regex", pattern="Answer: \\d+"), "key 'pattern': needs a group"),
    "choices_field_the_data_lacks": (dict(answer_type="choice", choices=["A", "B"]),
                                     "key 'choices': field 'A' is not in the data"),
    "missing_data_file": (dict(data="nowhere.jsonl"), "key 'data': data file"),
    "built_in_name": (dict(name="mmlu_machine_learning"), "key 'name': 'mmlu_machine_learning' is a built-in"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mtg_eval_refuses_a_bad_task_file_in_one_line(tmp_path, capsys, case):
    changes, needle = CASES[case]
    path = write_task(tmp_path, case, **changes)
    (path.parent / "empty.jsonl").write_text("")
    (path.parent / "three.jsonl").write_text("".join((path.parent / "sums.jsonl").read_text().splitlines(True)[:3]))
    line = one_line_error(capsys, ["eval", "--task", str(path), "--engine", "vllm:bundled", "--out",
                                   str(tmp_path / "run")])
    assert line.startswith(f"mtg eval: error: task file {path.resolve()}: ")
    assert needle in line


@pytest.mark.parametrize("command", [
    ["train", "--method", "learned_loss"],
    ["baseline", "--method", "prompt_opt"],
])
def test_train_and_baseline_refuse_it_too(tmp_path, capsys, command):
    path = write_task(tmp_path, "typo", question="questoin")
    line = one_line_error(capsys, [*command, "--task", str(path), "--engine", "vllm:bundled", "--out",
                                   str(tmp_path / "run")])
    assert f"task file {path.resolve()}: key 'question': field 'questoin'" in line
    assert not (tmp_path / "run" / "config.json").exists()


def test_multi_task_training_names_the_wrong_file(tmp_path, capsys):
    good = example_tasks(tmp_path)["capitals"]
    bad = write_task(tmp_path, "typo", answer_type="numeric")
    line = one_line_error(capsys, ["train", "--task", f"{good},{bad}", "--engine", "vllm:bundled", "--out",
                                   str(tmp_path / "run")])
    assert f"task file {bad.resolve()}: key 'answer_type'" in line


def test_a_grid_with_a_wrong_task_file_stops_before_its_engine_or_jobs(tmp_path, capsys):
    bad = write_task(tmp_path, "typo", question="questoin")
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "tasks": ["tasks/typo.yaml"], "methods": ["zero_shot_cot"],
                                    "engines": ["vllm:bundled"], "runs_root": str(tmp_path / "runs")}))
    for argv in (["grid", str(grid)], ["slurm", "submit", str(grid), "--dry-run"]):
        line = one_line_error(capsys, argv)
        assert f"task file {bad.resolve()}: key 'question'" in line  # relative to the grid file
    unknown = write_task(tmp_path, "bad_type", answer_type="numeric")
    grid.write_text(grid.read_text().replace("typo.yaml", "bad_type.yaml"))
    line = one_line_error(capsys, ["grid", str(grid), "--dry-run"])
    assert f"task file {unknown.resolve()}: key 'answer_type'" in line
