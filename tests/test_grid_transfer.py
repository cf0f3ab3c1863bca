"""Learn-then-transfer grids (the grid's ``transfer:``), fake engine, no SLURM daemons.

* ``mtg grid`` starts a transfer cell only after its source is complete, records the source in
  its results.json, and records "not_run" with the reason when the source fails;
* multi-task train entries (``{tasks: [A, B]}``) become ``mtg train --task A,B --data-file B=FILE``;
* the runner's order: chains, sources outside the call, cycles;
* grid-file errors name the cell;
* ``mtg slurm submit --dry-run`` prints the SLURM dependencies (array: afterok on the source's
  array task; --shared: a later stage with afterany), and the grid template passes the stage on.

The same grids on the local SLURM cluster: tests/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from engines.errors import UserError
from mtg_local import cli
from mtg_local.grid import GridCell, run_cells
from mtg_local.grid.order import dependency_order
from mtg_local.grid.runner import CellRef
from mtg_local.runs.transfer import run_id
from mtg_local.slurm import GridError, load_grid, parse_grid, plan, plan_shared

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
BBH = FIXTURES / "tasks_bbh_word_sorting.jsonl"
MMLU = FIXTURES / "tasks_mmlu_machine_learning.jsonl"
WS = "synthetic_word_sorting"


def study(tmp_path: Path, **over) -> Path:
    """A learn-then-transfer grid on the fake engine: a loss prompt learned on each task (and on two
    tasks at once) and applied to the other tasks; the "broken" task's data file is missing."""
    (tmp_path / "protocol.json").write_text(json.dumps({"limit": 2, "steps": 1, "max_tokens": 32, "outer_steps": 1,
                                                        "minibatch": 1}))
    raw = {
        "name": "study", "runs_root": str(tmp_path / "runs"),
        "tasks": [WS, {"name": "word_sorting", "data_file": str(BBH), "label": "bbh"},
                  {"name": "mmlu_machine_learning", "data_file": str(MMLU), "label": "mmlu"},
                  {"name": "word_sorting", "data_file": str(tmp_path / "missing.jsonl"), "label": "broken"},
                  {"tasks": [WS, "bbh"]}],
        "methods": ["learned_loss"], "engines": ["fake"], "seeds": [0, 1],
        "args": {"all": ["--protocol", str(tmp_path / "protocol.json"), "--no-progress"]},
        "transfer": [{"from": "*/learned_loss/fake", "tasks": [WS, "bbh", "mmlu"]}],
        **over,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def results(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def test_grid_runs_transfer_cells_after_their_source_and_not_when_it_fails(tmp_path, capsys):
    g = study(tmp_path)
    grid = load_grid(g)
    runs = {r.name: r for r in grid.expand()}
    transfers = [r for r in runs.values() if r.after]
    # 5 train cells; each source applied to the listed tasks except where it was learned (its own test)
    assert len(runs) == 5 + 10 and len(transfers) == 10
    multi = runs["synthetic_word_sorting+bbh/learned_loss/fake"]
    assert multi.argv[:5] == ("train", "--task", f"{WS},word_sorting", "--data-file", f"word_sorting={BBH}")
    assert [r.name for r in transfers if r.after == (multi.name,)] == \
        ["mmlu/solution_opt@synthetic_word_sorting+bbh.learned_loss.fake/fake"]

    assert cli.main(["grid", str(g), "--max-concurrent", "16"]) == 3  # all at once, if not for the order
    captured = capsys.readouterr()
    summary = json.loads(Path(json.loads(captured.out.strip().splitlines()[-1])["summary"]).read_text())
    status = {c["name"]: c for c in summary["cells"]}
    assert summary["counts"] == {"complete": 11, "failed": 1, "not_run": 3}, summary["counts"]
    for t in transfers:
        (src,) = t.after
        if src.startswith("broken/"):
            cell = status[t.name]
            assert cell["status"] == "not_run" and not Path(t.run_dir).exists()
            assert cell["error"].startswith("source broken/learned_loss/fake ended failed (TaskDataError: ")
            continue
        assert status[t.name]["status"] == "complete", status[t.name]
        body, source = results(t.run_dir), results(runs[src].run_dir)
        assert body["source"]["run_dir"] == str(runs[src].run_dir) and body["source"]["run_id"] == run_id(source)
        assert body["started_at"] >= source["finished_at"]  # it waited for its source
    assert "did not run (a source is not complete)" in captured.err
    assert "[grid] not run mmlu/solution_opt@broken.learned_loss.fake/fake: source broken/learned_loss/fake" \
        in captured.err

    # Rerun: complete cells are skipped; the broken source fails again and its transfers again do not run.
    assert cli.main(["grid", str(g)]) == 3
    err = capsys.readouterr().err
    assert err.count("[grid] skip") == 11 and err.count("[grid] not run") == 3


def test_transfer_to_another_engine_waits_for_that_engines_grid(tmp_path, capsys):
    g = study(tmp_path, tasks=[WS], engines=[{"spec": "fake", "label": "a"}, {"spec": "fake", "label": "b"}],
              transfer=[{"from": f"{WS}/learned_loss/a", "engines": ["b"]}])
    name = f"{WS}/solution_opt@{WS}.learned_loss.a/b"
    # b first: its transfer cell's source (on a) has not run
    assert cli.main(["grid", str(g), "--engine", "b"]) == 3
    err = capsys.readouterr().err
    assert f"[grid] not run {name}: source {WS}/learned_loss/a is not complete (no results.json in " in err
    assert cli.main(["grid", str(g), "--engine", "a"]) == 0
    capsys.readouterr()
    assert cli.main(["grid", str(g), "--engine", "b", "--stage", "1"]) == 0  # only the transfer cell
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["counts"] == {"complete": 1}
    run = next(r for r in load_grid(g).expand() if r.name == name)
    assert results(run.run_dir)["source"]["engine"] == "fake" and results(run.run_dir)["status"] == "complete"
    assert (tmp_path / "runs" / "study" / "grid-b-stage1.json").exists()
    assert cli.main(["grid", str(g), "--engine", "b", "--stage", "2"]) == 2
    assert "--stage 2: the grid's cells have stages [0, 1]" in capsys.readouterr().err


def test_runner_chains_sources_and_refuses_cycles(tmp_path):
    from engines.fake_engine import FakeEngine

    ran: list[str] = []

    def cell(name: str, *after: str, fails: bool = False, outside: Path | None = None) -> GridCell:
        def execute(engine, stop):  # noqa: ANN001
            ran.append(name)
            if fails:
                raise RuntimeError("boom")
            (tmp_path / name / "results.json").write_text(json.dumps({"status": "complete"}))
            return {"status": "complete"}

        refs = tuple(CellRef(a, tmp_path / a) for a in after) + ((CellRef("ext", outside),) if outside else ())
        return GridCell(name, tmp_path / name, "eval", execute, after=refs)

    # listed dependents first: the order comes from `after`, not from the list
    cells = [cell("c", "b"), cell("b", "a"), cell("a"), cell("x", fails=True), cell("y", "x"), cell("z", "y"),
             cell("w", outside=tmp_path / "elsewhere")]
    lines: list[str] = []
    report = run_cells(cells, FakeEngine(), max_concurrent=4, log=lines.append)
    status = {c.name: (c.status, c.error) for c in report.cells}
    assert ran.index("a") < ran.index("b") < ran.index("c") and "y" not in ran and "z" not in ran
    assert status["y"] == ("not_run", "source x ended failed (RuntimeError: boom)")
    assert status["z"][0] == "not_run" and status["z"][1].startswith("source y ended not run (source x ended failed")
    assert status["w"] == ("not_run", f"source ext is not complete (no results.json in {tmp_path / 'elsewhere'})")
    assert [c.name for c in report.not_run] == ["y", "z", "w"]

    with pytest.raises(UserError, match=r"cells wait for each other in a cycle: p -> q -> p"):
        run_cells([cell("p", "q"), cell("q", "p")], FakeEngine())
    with pytest.raises(UserError, match="cell s waits for itself"):
        dependency_order({"s": ["s"]})
    with pytest.raises(UserError, match="cell t waits for nope, which is not a cell of the grid"):
        dependency_order({"t": ["nope"]})
    assert dependency_order({"1": [], "2": ["3"], "3": [], "4": []}) == ["1", "3", "2", "4"]


@pytest.mark.parametrize("change, match", [
    ({"transfer": [{"from": "nope/learned_loss/fake"}]},
     r"transfer\[0\]: source cell 'nope/learned_loss/fake' is not a cell of the grid \(cells are TASK/METHOD/ENGINE"),
    ({"methods": ["solution_opt", "learned_loss"], "transfer": [{"from": f"{WS}/solution_opt/fake"}]},
     rf"transfer\[0\]: source cell {WS}/solution_opt/fake is an eval cell \(solution_opt\), which learns no prompt"),
    ({"transfer": [{"from": "*/learned_loss/fake", "tasks": ["gpqa"]}]}, r"transfer\[0\]: task 'gpqa' is not in the grid"),
    ({"transfer": [{"from": "*/learned_loss/fake", "engines": ["big"]}]}, r"engine 'big' is not in the grid"),
    ({"transfer": [{"from": "*/learned_loss/fake", "tasks": ["synthetic_word_sorting+bbh"]}]},
     r"task 'synthetic_word_sorting\+bbh' holds several tasks; mtg eval applies a prompt to one task"),
    ({"transfer": [{"from": "*/learned_loss/fake", "methods": ["maml"]}]},
     r"method 'maml' cannot apply a learned prompt \(--from-run is an mtg eval option"),
    ({"transfer": [{"from": f"{WS}/learned_loss/fake"}, {"from": "*/learned_loss/fake"}]},
     r"transfer\[1\]: transfer cell bbh/solution_opt@synthetic_word_sorting.learned_loss.fake/fake is also made by "
     r"transfer\[0\]"),
    ({"transfer": [{"tasks": ["bbh"]}]}, r"transfer\[0\]: a transfer must be a mapping with 'from'"),
    ({"transfer": [{"from": "*/learned_loss/fake", "methods": ["dspy_program"]}]},
     r"transfer\[0\]: method dspy_program applies a copro, miprov2, gepa cell's DSPy program; source cell "
     rf"{WS}/learned_loss/fake is a learned_loss run"),
    ({"transfer": [{"from": "*/learned_loss/fake", "to": "bbh"}]}, r"transfer\[0\]: unknown keys \['to'\]"),
    ({"methods": ["solution_opt"], "transfer": []}, r"grid task 'synthetic_word_sorting\+bbh' holds several tasks: "
                                                    "only train methods run on it, and the grid has none"),
    ({"tasks": [WS, {"tasks": [WS]}]}, r"'tasks' needs two or more tasks"),
])
def test_grid_file_errors_name_the_cell(tmp_path, change, match):
    raw = yaml.safe_load(study(tmp_path).read_text())
    raw.update(change)
    with pytest.raises(GridError, match=match):
        parse_grid(raw, runs_root=str(tmp_path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_dspy_source_is_applied_as_its_program_or_refused(tmp_path, capsys):
    """A GEPA cell's transfers are ``mtg eval --method dspy_program`` cells (the default), skipping its own
    test; asking another method of it is a grid error naming the cell. The grid runs them on the fake engine."""
    raw = {"name": "d", "runs_root": str(tmp_path / "runs"), "engines": ["fake"], "methods": ["gepa"],
           "tasks": [WS, {"name": "word_sorting", "data_file": str(BBH), "label": "bbh"}],
           "args": {"all": ["--limit", "2", "--seeds", "0", "--max-tokens", "32"],
                    "gepa": ["--max-metric-calls", "3", "--num-threads", "2"]},
           "transfer": [{"from": "*/gepa/fake"}]}
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(raw))
    runs = {r.name: r for r in load_grid(path).expand()}
    transfers = sorted(n for n, r in runs.items() if r.after)
    assert transfers == ["bbh/dspy_program@synthetic_word_sorting.gepa.fake/fake",
                         f"{WS}/dspy_program@bbh.gepa.fake/fake"]  # not the sources' own tests
    assert runs[transfers[0]].argv[:5] == ("eval", "--task", "word_sorting", "--data-file", str(BBH))
    assert "--method" in runs[transfers[0]].argv and "dspy_program" in runs[transfers[0]].argv
    for methods in (["solution_opt"], ["zero_shot_cot", "dspy_program"]):
        with pytest.raises(GridError, match=rf"transfer\[0\]: source cell bbh/gepa/fake is a gepa run, whose prompt "
                                            rf"is a DSPy program \(instruction and demos\); method '{methods[0]}' "
                                            r"does not run it: use dspy_program"):
            parse_grid({**raw, "transfer": [{"from": "bbh/gepa/fake", "methods": methods}]}, runs_root=str(tmp_path))

    assert cli.main(["grid", str(path)]) == 0
    capsys.readouterr()
    for name in transfers:
        body, (src,) = results(runs[name].run_dir), runs[name].after
        assert body["status"] == "complete" and body["method"] == "dspy_program"
        assert body["source"]["method"] == "gepa" and body["source"]["run_dir"] == str(runs[src].run_dir)


def test_slurm_dry_runs_print_the_dependencies(tmp_path, capsys):
    g = study(tmp_path, slurm={"gpus": 0, "max_parallel": 2})
    jobs = plan(load_grid(g))
    # job 0: the 5 train cells; then one array per source, waiting for that source's array task only
    assert [len(j.runs) for j in jobs] == [5, 2, 2, 2, 3, 1] and not jobs[0].after
    task = {r.name: i for i, r in enumerate(jobs[0].runs)}
    for job in jobs[1:]:
        (src,) = {r.after for r in job.runs}
        assert job.after == ((0, task[src[0]]),)
        assert f"--dependency=afterok:${{JOB0}}_{task[src[0]]}" in job.sbatch and "--kill-on-invalid-dep=yes" in job.sbatch
    assert cli.main(["slurm", "submit", str(g), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# job 4 waits for array task 3 of job 0 (broken/learned_loss/fake): afterok" in out
    assert "'--dependency=afterok:${JOB0}_3' --kill-on-invalid-dep=yes" in out
    assert "# 15 runs in 6 array job(s)" in out and not (tmp_path / "runs").exists()

    # --shared, one engine: one job runs the grid in order (no SLURM dependency, no stage)
    (job,) = plan_shared(load_grid(g), g)
    assert len(job.runs) == 15 and job.stage is None and not any("dependency" in a or "STAGE" in a for a in job.sbatch)
    # --shared, a transfer to another engine: that engine's transfer cells are a later stage, after the source's job
    two = study(tmp_path, tasks=[WS, {"name": "word_sorting", "data_file": str(BBH), "label": "bbh"}],
                engines=[{"spec": "fake", "label": "a"}, {"spec": "fake", "label": "b"}],
                transfer=[{"from": "*/learned_loss/a", "engines": ["*"]}])
    jobs = plan_shared(load_grid(two), two)
    assert [(j.engine.label, j.stage, len(j.runs), j.after) for j in jobs] == [("a", 0, 4, ()), ("b", 0, 2, ()),
                                                                             ("b", 1, 4, (0,))]
    assert "--dependency=afterany:${JOB0}" in jobs[2].sbatch and "MTG_GRID_STAGE=1" in jobs[2].sbatch[-2]
    assert cli.main(["slurm", "submit", str(two), "--shared", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# job 2: 4 runs of fake in one job: mtg grid" in out and "--engine b --stage 1" in out
    assert "# job 2 starts after job(s) 0 end (afterany; each cell checks that its source is complete)" in out


def test_grid_template_passes_the_stage(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "mtg").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "mtg").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", MTG_CHECKOUT=str(REPO),
               MTG_VENV=str(tmp_path / "novenv"), MTG_DRY_RUN="1", MTG_GRID="/g.yaml", MTG_GRID_ENGINE="b",
               MTG_GRID_STAGE="1", MTG_GRID_BACKEND="fake")
    env.pop("SLURM_JOB_ID", None)
    r = subprocess.run(["bash", str(REPO / "slurm" / "mtg_grid.sbatch")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert any(line.endswith("mtg grid /g.yaml --max-concurrent 32 --engine b --stage 1") for line in
               r.stderr.splitlines()), r.stderr
