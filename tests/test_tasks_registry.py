"""One way tasks exist (issue 28, points 2 and 3): task files, ``register_task``, the ``mtg_local.tasks``
entry points, built-ins as files, and the Python API over the commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.errors import UserError
from mtg_local import Example, Splits, Task, TaskDefinition, evaluate, register_task
from mtg_local.api import command_argv
from mtg_local.tasks import TaskDataError, TaskDefinitionError, get_task, task_names
from mtg_local.tasks.registry import REGISTRY, Registry, build_task
from tests.task_fakes import EXAMPLES, TaskModel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_registry():
    """Tasks registered by a test are forgotten after it."""
    before = dict(REGISTRY._registered)
    yield
    REGISTRY._registered.clear()
    REGISTRY._registered.update(before)
    REGISTRY.refresh_entry_points()


class Doubling(Task):
    """A Python task: its own examples and answer rule."""

    name = "doubling"

    def __init__(self, seed: int = 0) -> None:
        ex = [Example(id=f"x-{i}", question=f"What is twice {i + seed}?", answer=str(2 * (i + seed))) for i in range(6)]
        self._splits = Splits(tuple(ex[:2]), tuple(ex[2:4]), tuple(ex[4:]))

    def splits(self) -> Splits:
        return self._splits

    def extract_answer(self, response: str, example: Example | None = None) -> str | None:
        return response.strip().split()[-1] if response.strip() else None


def test_register_task_forms_and_reserved_names(tmp_path):
    register_task(Doubling)
    assert "doubling" in task_names() and get_task("doubling", seed=2).splits().test[0].answer == "12"
    assert get_task("doubling").identity()["kind"] == "python"
    register_task(TaskDefinition.define(name="tiny", rows=[{"q": f"q{i}", "a": i} for i in range(8)], question="q",
                                        answer="a", answer_type="number"), aliases=("tiny2",))
    assert get_task("tiny2").name == "tiny" and len(get_task("tiny").splits().test) == 6
    register_task(str(EXAMPLES / "sums.yaml"))
    assert get_task("sums").identity()["kind"] == "file"
    register_task(lambda seed=0: Doubling(seed), name="doubling_factory")
    assert get_task("doubling_factory", seed=1).splits().train[0].answer == "2"

    with pytest.raises(TaskDefinitionError, match="'mmlu_machine_learning' is a built-in task's name"):
        register_task(Doubling, name="mmlu_machine_learning")
    with pytest.raises(TaskDefinitionError, match="'doubling' is already registered"):
        register_task(lambda: Doubling(), name="doubling")
    register_task(lambda: Doubling(), name="doubling", replace=True)
    with pytest.raises(TaskDataError, match="reads no data file"):
        get_task("doubling", data_file=tmp_path / "x.jsonl")


def test_a_generated_built_in_is_one_python_file(tmp_path):
    """What a new built-in such as generated arithmetic needs: one file in the built-in folder."""
    (tmp_path / "adding.py").write_text(
        "from mtg_local.tasks.base import Example, Splits, Task\n"
        "GENERATED = True\n"
        "class Adding(Task):\n"
        "    name = 'adding'\n"
        "    def __init__(self, seed=0):\n"
        "        ex = tuple(Example(id=f'a-{i}', question=f'{i}+{seed}?', answer=str(i + seed)) for i in range(6))\n"
        "        self._s = Splits(ex[:2], ex[2:4], ex[4:])\n"
        "    def splits(self):\n        return self._s\n"
        "    def extract_answer(self, response, example=None):\n        return response.strip() or None\n"
        "TASK = Adding\n")
    registry = Registry(builtin_dir=tmp_path)
    task = build_task("adding", data_file=None, seed=5, strict=False, registry=registry)
    assert task.splits().test[0].answer == "9" and task.identity()["kind"] == "builtin"
    assert registry.lookup("adding").generated
    with pytest.raises(Exception, match="generated offline and reads no data"):
        build_task("adding", data_file="x.jsonl", seed=0, strict=False, registry=registry)


def _dist_info(site: Path, value: str) -> None:
    """A distribution that declares one task in the mtg_local.tasks group (what `pip install` leaves)."""
    info = site / "mtg_user_tasks-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mtg-user-tasks\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[mtg_local.tasks]\n{value}\n")


def test_an_entry_point_makes_a_task_known_to_the_cli(tmp_path):
    site = tmp_path / "site"
    (site / "user_tasks").mkdir(parents=True)
    (site / "user_tasks" / "__init__.py").write_text(f"SUMS = {str(EXAMPLES / 'sums.yaml')!r}\n")
    _dist_info(site, "plugin_sums = user_tasks:SUMS")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mtg_local.cli", "eval", "--task", "plugin_sums", "--engine", "fake",
                           "--method", "zero_shot_cot", "--limit", "2", "--seeds", "0", "--no-progress",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "plugin_sums" and res["task_info"]["identity"]["source"] == str(EXAMPLES / "sums.yaml")
    sys.path.insert(0, str(site))
    try:
        REGISTRY.refresh_entry_points()
        assert "plugin_sums" in task_names()
    finally:
        sys.path.remove(str(site))


def test_settings_become_the_commands_arguments():
    argv = command_argv("train", {"task": "t.yaml", "outer_steps": 1, "seeds": [0, 1], "no_cache": True,
                                  "keep_answer_format": False, "inference_template": False,
                                  "engine_opt": ["a=1", "b=2"], "limit": None})
    assert argv == ["train", "--task", "t.yaml", "--outer-steps", "1", "--seeds", "0,1", "--no-cache",
                    "--no-keep-format", "--inference-template", "false", "--engine-opt", "a=1", "--engine-opt", "b=2"]
    with pytest.raises(UserError, match="unknown setting 'outer_stpes' for mtg train"):
        command_argv("train", {"outer_stpes": 1})


def test_evaluate_a_python_task_object(tmp_path):
    model = TaskModel()
    res = evaluate(task=Doubling, out=tmp_path / "run", engine=model, method="zero_shot_cot", seeds=[0],
                   no_progress=True)
    assert res["status"] == "complete" and res["task"] == "doubling" and res["n_questions"] == 2
    assert res["task_info"]["identity"]["kind"] == "python"
    assert any("What is twice 4?" in s for s in model.seen)


def test_a_grid_runs_task_files_and_the_report_tables_them_by_name(tmp_path, capsys):
    import yaml

    from mtg_local import cli
    from mtg_local.slurm import load_grid
    from tests.task_fakes import example_tasks

    example_tasks(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "mine", "runs_root": str(tmp_path / "runs"), "engines": ["fake"], "methods": ["zero_shot_cot"],
        "tasks": ["tasks/sums.yaml", {"name": "tasks/capitals.yaml", "label": "caps"}],
        "args": {"all": ["--limit", "2", "--seeds", "0", "--no-progress"]}}))
    g = load_grid(grid)
    assert [t.label for t in g.tasks] == ["sums", "caps"]
    assert g.expand()[0].argv[:3] == ("eval", "--task", str((tmp_path / "tasks" / "sums.yaml").resolve()))
    assert cli.main(["slurm", "submit", str(grid), "--dry-run"]) == 0  # the array manifest names the file absolutely
    assert f"--task {(tmp_path / 'tasks' / 'capitals.yaml').resolve()}" in capsys.readouterr().out
    assert cli.main(["grid", str(grid)]) == 0
    assert cli.main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--no-plots"]) == 0
    header = next(ln for ln in (tmp_path / "report" / "report.md").read_text().splitlines() if ln.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", "capitals", "sums"]
