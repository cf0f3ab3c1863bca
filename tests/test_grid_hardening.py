"""``mtg grid``: secrets on its command line, a per-cell optimizer engine, a cell whose every request fails.

Scripted engines (tests/grid_fakes.py), in process. Stops: tests/test_grid_stops.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from grid_fakes import CountingEngine, register_holding
from mtg_local import cli
from mtg_local.tasks import task_names

TASK = "synthetic_word_sorting" if "synthetic_word_sorting" in task_names() else "word_sorting"


def grid_file(tmp_path: Path, *, engine: str, methods: list[str], args: dict | None = None) -> Path:
    protocol = tmp_path / "protocol.json"
    protocol.write_text(json.dumps({"steps": 1, "limit": 3, "max_tokens": 64, "optimizer_max_tokens": 64,
                                    "meta_max_tokens": 64, "outer_steps": 1, "minibatch": 2}))
    raw = {"name": "g", "runs_root": str(tmp_path / "runs"), "tasks": [TASK], "methods": methods,
           "engines": [engine], "seeds": [0, 1],
           "args": {"all": ["--protocol", str(protocol)], **(args or {})}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def results(tmp_path: Path, method: str, label: str) -> dict:
    return json.loads((tmp_path / "runs" / "g" / TASK / method / label / "results.json").read_text())


def test_secret_engine_option_on_the_command_line_is_refused_like_in_a_grid_file(tmp_path, capsys):
    register_holding()
    g = grid_file(tmp_path, engine="holding:good=2", methods=["zero_shot_cot"])
    for extra in (["--dry-run"], []):
        assert cli.main(["grid", str(g), "--engine-opt", "api_key=sk-canary-4242", *extra]) == 2
        out, err = capsys.readouterr()
        assert "sk-canary-4242" not in out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "'api_key' looks like a secret" in lines[0] and "api_key_env=" in lines[0]
    assert not (tmp_path / "runs").exists()
    # the variable's name is not a secret
    assert cli.main(["grid", str(g), "--engine-opt", "api_key_env=MY_KEY_VAR", "--dry-run"]) == 0
    assert "api_key_env=MY_KEY_VAR" in capsys.readouterr().out


def test_cells_with_another_optimizer_engine_share_one_per_spec(tmp_path, capsys):
    register_holding()
    CountingEngine.built.clear()
    methods = ["zero_shot_cot", "solution_opt", "learned_loss", "prompt_opt"]
    g = grid_file(tmp_path, engine="holding:good=2", methods=methods,
                  args={"eval": ["--optimizer-engine", "counting:good=2"],
                        "train": ["--optimizer-engine", "counting:good=2"],
                        "baseline": ["--optimizer-engine", "counting:good=2", "--max-steps", "1"]})
    assert cli.main(["grid", str(g), "--dry-run"]) == 0
    assert "optimizer engine counting:good=2 (shared by 4 cells)" in capsys.readouterr().out
    assert CountingEngine.built == []  # a dry run starts nothing
    assert cli.main(["grid", str(g)]) == 0
    assert len(CountingEngine.built) == 1  # one for the grid, not one per cell (main: 4)
    for m in methods:
        r = results(tmp_path, m, "holding_good_2")
        assert r["status"] == "complete" and r["optimizer_engine"] == "counting:good=2", m
    # the cells' optimizer phases went to it: their usage counts them (solution_opt's loss/backward/update)
    assert results(tmp_path, "solution_opt", "holding_good_2")["engine_usage"]["requests"] > \
        results(tmp_path, "zero_shot_cot", "holding_good_2")["engine_usage"]["requests"]


def test_cell_whose_every_request_fails_is_failed_and_the_others_complete(tmp_path, capsys):
    register_holding()
    g = grid_file(tmp_path, engine="holding:good=2;fail=FAILME", methods=["zero_shot_cot", "solution_opt", "learned_loss"],
                  args={"zero_shot_cot": ["--system-prompt", "FAILME"]})
    assert cli.main(["grid", str(g)]) == 3  # as the cell alone would exit (runs.health)
    out, err = capsys.readouterr()
    label = "holding_good_2_fail_FAILME"
    bad = results(tmp_path, "zero_shot_cot", label)
    assert bad["status"] == "failed" and bad["engine_usage"]["errors"] == bad["engine_usage"]["requests"] == 6
    for m in ("solution_opt", "learned_loss"):
        assert results(tmp_path, m, label)["status"] == "complete", m
    assert json.loads(out.strip().splitlines()[-1])["counts"] == {"complete": 2, "failed": 1}
    last = err.strip().splitlines()[-1]
    assert last.startswith("mtg grid: 1 of 3 cells failed; first: ") and "zero_shot_cot" in last
    assert "every request failed (6 of 6)" in last and "scripted failure (FAILME)" in last


def test_engine_starts_are_counted_from_the_runs_own_events(tmp_path):
    # What mtg bench grid reports as engine_starts (it was a constant: len(cells) / 1).
    from mtg_local.runs.engine_events import engine_starts
    from mtg_local.slurm import load_grid

    register_holding()
    methods = ["zero_shot_cot", "solution_opt", "learned_loss"]
    opt = ["--optimizer-engine", "counting:good=2"]
    g = grid_file(tmp_path, engine="holding:good=2", methods=methods, args={"eval": opt, "train": opt})
    assert cli.main(["grid", str(g)]) == 0
    grid_cells = [r.run_dir for r in load_grid(g).expand()]
    counted = engine_starts(grid_cells)
    assert counted["starts"] == 2 and counted["by_spec"] == {"holding:good=2": 1, "counting:good=2": 1}
    # the same cells run alone: each run starts its own forward and optimizer engines
    alone = []
    for run in load_grid(g, runs_root=str(tmp_path / "alone")).expand():
        assert cli.main([*run.argv, "--no-progress"]) == 0
        alone.append(run.run_dir)
    assert engine_starts(alone)["starts"] == 6
    assert engine_starts([*grid_cells, *alone])["starts"] == 8
    # a resumed run starts its engines again
    train = next(d for d in alone if d.parent.name == "learned_loss")
    (train / "results.json").unlink()
    assert cli.main(["train", "--resume", str(train), "--no-progress"]) == 0
    assert engine_starts([train])["starts"] == 4
