"""Stopping ``mtg grid`` while cells have requests in flight (scripted engine, subprocess).

The engine (tests/grid_fakes.py) holds the calls of the solution-optimization (eval), prompt
optimization (baseline) and learned-loss (train) cells in flight until a signal, so the signal
always lands mid-phase; the zero-shot cell has finished by then. Every case must end with exit 99
(130 for SIGINT) within seconds, the complete cell still complete, every cell that was in flight
"interrupted" in its results.json (not "failed"), and a rerun must finish them from their caches
with results equal to an uninterrupted grid. The same on the real engine: tests/test_grid_vllm.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from grid_fakes import register_holding
from mtg_local import cli
from mtg_local.tasks import task_names

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent
TASK = "synthetic_word_sorting" if "synthetic_word_sorting" in task_names() else "word_sorting"
HELD = ("solution_opt", "prompt_opt", "learned_loss")
COMPARED = ("learned", "artifacts", "test_accuracy", "history", "initial_val_accuracy", "best_val_accuracy",
            "best_step", "n_questions", "accuracy", "method")
LAUNCHER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from grid_fakes import register_holding
    register_holding()
    from mtg_local import cli
    sys.exit(cli.main(["grid", *sys.argv[1:]]))
    """
)


def grid_file(tmp_path: Path, name: str) -> Path:
    protocol = tmp_path / "protocol.json"
    protocol.write_text(json.dumps({"steps": 1, "limit": 3, "max_tokens": 64, "optimizer_max_tokens": 64,
                                    "meta_max_tokens": 64, "outer_steps": 2, "minibatch": 2}))
    raw = {"name": name, "runs_root": str(tmp_path / "runs"), "tasks": [TASK],
           "methods": ["zero_shot_cot", *HELD], "engines": ["holding:good=2"], "seeds": [0, 1],
           "args": {"all": ["--protocol", str(protocol)], "prompt_opt": ["--max-steps", "2"]}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cell(tmp_path: Path, grid: str, method: str) -> Path:
    return tmp_path / "runs" / grid / TASK / method / "holding_good_2"


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def launch(tmp_path: Path, grid: Path, **env: str) -> subprocess.Popen:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(tests=str(TESTS_DIR)))
    full = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env)
    return subprocess.Popen([sys.executable, str(launcher), str(grid)], cwd=REPO, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """The uninterrupted grid (nothing held), run in this process."""
    register_holding()
    tmp = tmp_path_factory.mktemp("ref")
    assert cli.main(["grid", str(grid_file(tmp, "g"))]) == 0
    return {m: results(cell(tmp, "g", m)) for m in ("zero_shot_cot", *HELD)}


@pytest.mark.parametrize("how,sig", [
    ("core-first", signal.SIGTERM),  # the engine core dies first, the grid's own signal comes 0.5 s later
    ("group", signal.SIGTERM),       # scancel / preemption: the whole process group
    ("pid", signal.SIGUSR1),         # SLURM's warning, forwarded by the batch shell to mtg only
    ("pid", signal.SIGINT),          # Ctrl-C
], ids=["core-first-TERM", "group-TERM", "pid-USR1", "pid-INT"])
def test_signal_with_eval_baseline_and_train_requests_in_flight(tmp_path, reference, how, sig, capsys):
    g = grid_file(tmp_path, "g")
    status = tmp_path / "status"
    proc = launch(tmp_path, g, MTG_TEST_HOLD=",".join(HELD), MTG_TEST_STATUS=str(status))
    try:
        deadline = time.time() + 60
        while not (all((status / f"held-{m}").exists() for m in HELD)
                   and (cell(tmp_path, "g", "zero_shot_cot") / "results.json").exists()):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.02)
        core = [c.pid for c in psutil.Process(proc.pid).children() if c.name() == "sleep"]
        assert len(core) == 1
        sent = time.time()
        if how == "core-first":
            os.kill(core[0], signal.SIGTERM)
            time.sleep(0.5)
            os.kill(proc.pid, sig)
        elif how == "group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=30)
        waited = time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == (130 if sig == signal.SIGINT else 99), err[-3000:]
    assert waited < 10, f"the grid took {waited:.1f} s to stop"
    assert results(cell(tmp_path, "g", "zero_shot_cot"))["status"] == "complete"
    for m in HELD:
        res = results(cell(tmp_path, "g", m))
        assert res["status"] == "interrupted" and res["signal"] == sig.name, (m, res.get("error"), res.get("message"))
    summary = json.loads((tmp_path / "runs" / "g" / "grid-holding_good_2.json").read_text())
    assert summary["counts"] == {"complete": 1, "interrupted": 3}, summary["counts"]

    # The rerun skips the complete cell and finishes the others; what they generated before is cached.
    assert cli.main(["grid", str(g)]) == 0
    err = capsys.readouterr().err
    assert err.count("[grid] skip") == 1 and err.count("[grid] start ") == 3
    for m in ("zero_shot_cot", *HELD):
        res = results(cell(tmp_path, "g", m))
        assert res["status"] == "complete"
        assert {k: res.get(k) for k in COMPARED} == {k: reference[m].get(k) for k in COMPARED}, m
        if m != "zero_shot_cot":
            assert res["engine_usage"]["cache_hits"] > 0, m  # the first call's answers, not generated again
