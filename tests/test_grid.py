"""``mtg grid``: cells of one engine, concurrently, on one shared engine (fake/scripted engines).

The real-engine concurrency test (vLLM's async engine) is in tests/test_vllm_async.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from engines.base import GenRequest
from engines.fake_engine import FakeEngine
from engines.shared import CoalescedEngine, EngineView, shareable
from meta_fakes import register_scripted
from mtg_local import cli
from mtg_local.tasks import task_names

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent
# The offline generated word-sorting task (renamed synthetic_word_sorting by the task-name contract).
TASK = "synthetic_word_sorting" if "synthetic_word_sorting" in task_names() else "word_sorting"
COMPARED = ("learned", "artifacts", "test_accuracy", "history", "initial_val_accuracy", "best_val_accuracy",
            "best_step", "n_questions", "accuracy", "method", "engine")
METHODS = ["zero_shot_cot", "solution_opt", "learned_loss", "reptile"]


def grid_file(tmp_path: Path, name: str, *, engine: str = "scripted:good=2", tasks=None, methods=METHODS) -> Path:
    # One protocol for the grid (train-only fields included): a --protocol file under args.all.
    protocol = tmp_path / "protocol.json"
    protocol.write_text(json.dumps({"steps": 1, "limit": 3, "max_tokens": 64, "optimizer_max_tokens": 64,
                                    "meta_max_tokens": 64, "outer_steps": 2, "minibatch": 2}))
    raw = {
        "name": name,
        "runs_root": str(tmp_path / "runs"),
        "tasks": tasks or [TASK],
        "methods": methods,
        "engines": [engine],
        "seeds": [0, 1],
        "args": {"all": ["--protocol", str(protocol)]},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def compared(r: dict) -> dict:
    return {k: r.get(k) for k in COMPARED}


def cell_dirs(tmp_path: Path, name: str) -> dict[str, Path]:
    root = tmp_path / "runs" / name
    return {str(p.parent.relative_to(root)): p.parent for p in sorted(root.glob("*/*/*/config.json"))}


# --------------------------------------------------------------------------- shared engine pieces


def test_engine_views_count_only_their_own_requests_under_concurrency():
    shared = FakeEngine()
    views = [EngineView(shared, tag=f"cell{i}") for i in range(4)]
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()
        for k in range(5):
            reqs = [GenRequest.chat(f"c{i} k{k} r{j}", id=f"{j}") for j in range(i + 1)]
            out = views[i].generate(reqs)
            assert [r.text for r in out] == [f"c{i} k{k} r{j}" for j in range(i + 1)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, v in enumerate(views):
        assert v.usage.requests == 5 * (i + 1) and v.usage.calls == 5
    assert shared.usage.requests == 5 * (1 + 2 + 3 + 4)
    assert views[0].spec == "fake" and EngineView(shared, spec="vllm:x").spec == "vllm:x"


def test_view_before_call_refuses_and_attributes_come_from_the_shared_engine():
    shared = FakeEngine()
    shared.max_model_len = 123
    calls = []

    def refuse():
        calls.append(1)
        raise RuntimeError("stop")

    v = EngineView(shared, tag="a", before_call=refuse)
    assert v.max_model_len == 123
    with pytest.raises(RuntimeError, match="stop"):
        v.generate([GenRequest.chat("x")])
    assert calls == [1] and shared.usage.requests == 0


class _OneAtATime(FakeEngine):
    """Fails if two threads are inside generate at once (like vllm.LLM); counts batches."""

    serves_concurrent_calls = False

    def __init__(self):
        super().__init__()
        self._inside = threading.Lock()

    def _generate(self, requests, **kw):
        assert self._inside.acquire(blocking=False), "called concurrently"
        try:
            time.sleep(0.05)
            return super()._generate(requests, **kw)
        finally:
            self._inside.release()


def test_coalesced_engine_merges_concurrent_calls_into_fewer_backend_calls():
    inner = _OneAtATime()
    shared = shareable(inner)
    assert isinstance(shared, CoalescedEngine) and shareable(FakeEngine()).__class__ is FakeEngine
    outs: dict[int, list[str]] = {}

    def work(i: int) -> None:
        outs[i] = [r.text for r in shared.generate([GenRequest.chat(f"t{i} {j}", id=str(j)) for j in range(3)])]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    assert outs == {i: [f"t{i} {j}" for j in range(3)] for i in range(6)}
    assert len(inner.batches) < 6  # merged: fewer backend calls than callers
    assert sum(len(b) for b in inner.batches) == 18


def test_openai_engine_shares_one_concurrency_limit_across_concurrent_callers():
    from engines.registry import create_engine
    from tests.fault_server import FaultServer

    class Counting(FaultServer):
        in_flight = 0
        peak = 0

        async def _complete(self, request):
            import asyncio

            Counting.in_flight += 1
            Counting.peak = max(Counting.peak, Counting.in_flight)
            try:
                await asyncio.sleep(0.05)
                return await super()._complete(request)
            finally:
                Counting.in_flight -= 1

    with Counting(fault_rate=0.0) as srv:
        eng = create_engine("openai:m", base_url=srv.base_url, max_concurrency=3, prefill=False)
        outs: dict[int, list] = {}

        def work(i: int) -> None:
            outs[i] = eng.generate([GenRequest.chat(f"q{i}-{j}", id=str(j)) for j in range(8)])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        eng.close()
    assert all(r.ok for rs in outs.values() for r in rs)
    assert Counting.peak == 3  # one limit for all three callers (per-call limits would allow 9)


# --------------------------------------------------------------------------- the runner and command


def test_grid_cells_equal_cells_run_alone_and_complete_cells_are_skipped(tmp_path, capsys):
    register_scripted()
    g = grid_file(tmp_path, "g")
    assert cli.main(["grid", str(g), "--max-concurrent", "4"]) == 0
    out = capsys.readouterr()
    line = json.loads(out.out.strip().splitlines()[-1])
    assert line["counts"] == {"complete": 4} and not line["stopped"]
    assert out.err.count("[grid] start ") == 4 and out.err.count("[grid] done") == 4
    summary = json.loads(Path(line["summary"]).read_text())
    # every request the shared engine served is in exactly one cell's usage (cache hits and copies of an
    # identical request of the same batch never reach it)
    assert summary["engine"]["requests"] == sum(c["usage"]["requests"] - c["usage"]["cache_hits"]
                                                - c["usage"].get("deduplicated", 0) for c in summary["cells"])
    cells = cell_dirs(tmp_path, "g")
    assert len(cells) == 4
    for d in cells.values():
        assert (d / "trajectories.jsonl").exists() and any(
            json.loads(x)["event"] == "grid_cell" for x in (d / "events.jsonl").read_text().splitlines())

    # Each cell alone, same arguments and seeds, own process-less engine: identical results.
    from mtg_local.slurm import load_grid

    for run in load_grid(g).expand():
        alone = tmp_path / "alone" / run.method
        argv = [*run.argv[: run.argv.index("--out")], "--out", str(alone)]
        assert cli.main([*argv, *(["--no-progress"] if argv[0] != "baseline" else [])]) == 0
        a, b = results(run.run_dir), results(alone)
        assert compared(a) == compared(b), run.method
        assert a["engine_usage"]["requests"] == b["engine_usage"]["requests"]  # per-run usage, not the grid's
        for f in ("learned_loss_prompt.txt", "learned_template.txt"):
            assert (run.run_dir / f).exists() == (alone / f).exists()
            if (alone / f).exists():
                assert (run.run_dir / f).read_text() == (alone / f).read_text()

    assert cli.main(["grid", str(g)]) == 0
    err = capsys.readouterr().err
    assert err.count("[grid] skip") == 4 and "[grid] start " not in err


def test_failing_cell_leaves_the_others_complete_and_exits_3(tmp_path, capsys):
    register_scripted()
    g = grid_file(tmp_path, "f", methods=["zero_shot_cot", "learned_loss"],
                  tasks=[TASK, {"name": TASK, "data_file": str(tmp_path / "missing.json"), "label": "broken"}])
    assert cli.main(["grid", str(g)]) == 3
    err = capsys.readouterr().err
    assert "2 of 4 cells failed" in err
    root = tmp_path / "runs" / "f"
    assert results(root / TASK / "zero_shot_cot" / "scripted_good_2")["status"] == "complete"
    assert results(root / TASK / "learned_loss" / "scripted_good_2")["status"] == "complete"
    assert not (root / "broken" / "learned_loss" / "scripted_good_2" / "results.json").exists() or \
        results(root / "broken" / "learned_loss" / "scripted_good_2")["status"] != "complete"


def test_grid_dry_run_on_example_and_engine_choice(tmp_path, capsys):
    example = REPO / "slurm" / "grid_example.yaml"
    assert cli.main(["grid", str(example), "--dry-run"]) == 2  # two engines, none chosen
    assert "choose one with --engine" in capsys.readouterr().err
    assert cli.main(["grid", str(example), "--engine", "vllm:Qwen/Qwen2.5-7B-Instruct", "--dry-run",
                     "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "18 cells" in out[0] and "vllm-async:Qwen/Qwen2.5-7B-Instruct" in out[0]
    assert len([x for x in out[1:] if x.startswith("new")]) == 18
    assert not any(tmp_path.iterdir())  # nothing written


LAUNCHER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from meta_fakes import register_scripted
    register_scripted()
    from mtg_local import cli
    sys.exit(cli.main(["grid", *sys.argv[1:]]))
    """
)


def launch(tmp_path: Path, *argv: str) -> subprocess.Popen:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(tests=str(TESTS_DIR)))
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen([sys.executable, str(launcher), *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, root: Path, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        for ck in root.glob("*/*/*/checkpoint.json"):
            try:
                if json.loads(ck.read_text())["completed_step"] >= 0:
                    return
            except (ValueError, KeyError):
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_stopped_or_killed_grid_resumes_every_cell_to_the_uninterrupted_results(tmp_path, how, capsys):
    register_scripted()
    full = grid_file(tmp_path, "full")
    assert cli.main(["grid", str(full)]) == 0
    capsys.readouterr()
    slow = grid_file(tmp_path, "cut", engine="scripted:good=2;delay=0.1")
    proc = launch(tmp_path, str(slow))
    wait_for_checkpoint(proc, tmp_path / "runs" / "cut")
    if how == "sigkill":
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    else:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 99, err
        assert "stopped on signal" in err
        stopped = [c for c in cell_dirs(tmp_path, "cut").values() if (c / "checkpoint.json").exists()]
        assert stopped and all(not (c / "results.json").exists() or results(c)["status"] != "complete"
                               for c in stopped if c.parent.name in ("learned_loss", "reptile"))
    again = launch(tmp_path, str(slow))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    a, b = cell_dirs(tmp_path, "full"), cell_dirs(tmp_path, "cut")
    assert set(a) == {k.replace("scripted_good_2_delay_0.1", "scripted_good_2") for k in b}
    for key, d in b.items():
        fd = a[key.replace("scripted_good_2_delay_0.1", "scripted_good_2")]
        ra, rb = results(fd), results(d)
        assert {k: v for k, v in compared(ra).items() if k != "engine"} == \
            {k: v for k, v in compared(rb).items() if k != "engine"}, key
    resumed = [d for d in b.values() if any(json.loads(x)["event"] == "resume"
                                            for x in (d / "events.jsonl").read_text().splitlines())]
    assert resumed  # at least one train cell continued from its checkpoint


# --------------------------------------------------------------------------- SLURM --shared (no SLURM needed)


def test_slurm_submit_shared_dry_run_one_job_per_engine(tmp_path, capsys):
    example = REPO / "slurm" / "grid_example.yaml"
    assert cli.main(["slurm", "submit", str(example), "--shared", "--dry-run", "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    sbatch = [x for x in out.splitlines() if x.startswith("sbatch ")]
    assert len(sbatch) == 2 and all("--array" not in x and x.endswith("slurm/mtg_grid.sbatch") for x in sbatch)
    assert "MTG_GRID_ENGINE=vllm_Qwen_Qwen2.5-7B-Instruct" in sbatch[0]
    assert f"MTG_GRID_RUNS_ROOT={tmp_path}" in sbatch[0] and "MTG_GRID_BACKEND=vllm" in sbatch[0]
    assert "# 36 runs in 2 shared job(s)" in out
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("env,expect", [
    ({"SLURM_GPUS_ON_NODE": "8"}, ["--engine-opt data_parallel_size=8"]),
    ({"SLURM_GPUS_ON_NODE": "8", "MTG_GRID_TP": "4"},
     ["--engine-opt tensor_parallel_size=4 --engine-opt data_parallel_size=2"]),
    ({"SLURM_GPUS_ON_NODE": "1"}, []),
    ({"SLURM_GPUS_ON_NODE": "4", "MTG_GRID_BACKEND": "openai"}, []),
])
def test_grid_template_gpu_layout_dry_run(tmp_path, env, expect):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "mtg").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "mtg").chmod(0o755)
    full = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", MTG_CHECKOUT=str(REPO),
                MTG_VENV=str(tmp_path / "novenv"), MTG_DRY_RUN="1", MTG_GRID="/g.yaml", MTG_GRID_ENGINE="e",
                MTG_GRID_RUNS_ROOT=str(tmp_path / "runs"), **env)
    for k in ("MTG_TP", "MTG_DP", "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        full.pop(k, None)
    r = subprocess.run(["bash", str(REPO / "slurm" / "mtg_grid.sbatch")], env=full, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stderr.splitlines() if "mtg grid /g.yaml" in x)
    assert f"--engine e --runs-root {tmp_path / 'runs'}" in line
    for e in expect:
        assert line.endswith(e), line
    if not expect:
        assert "parallel_size" not in line


# --------------------------------------------------------------------------- mtg bench grid (fake engine)


def test_bench_grid_on_the_fake_engine_prints_one_json_line_with_ratios(tmp_path, capsys):
    assert cli.main(["bench", "grid", "--engine", "fake", "--out", str(tmp_path / "b"), "--max-concurrent", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert set(rec["variants"]) == {"array", "sequential", "grid"}
    for name, v in rec["variants"].items():
        for key in ("wall_s", "gen_tok_per_s", "mean_running_batch", "mean_batch_submitted", "engine_starts",
                    "peak_rss_gib", "cells"):
            assert key in v, (name, key)
        assert v["cells"] == 4 and v["wall_s"] > 0 and v["peak_rss_gib"] > 0
    assert rec["variants"]["array"]["engine_starts"] == 4 and rec["variants"]["grid"]["engine_starts"] == 1
    # same work in every variant (fresh run dirs, deterministic engine)
    assert len({v["completion_tokens"] for v in rec["variants"].values()}) == 1
    w = {k: v["wall_s"] for k, v in rec["variants"].items()}
    assert rec["speedup_vs_array"] == round(w["array"] / w["grid"], 3)
    assert rec["speedup_vs_sequential"] == round(w["sequential"] / w["grid"], 3)
    assert cli.main(["bench", "grid", "--engine", "fake", "--out", str(tmp_path / "b")]) == 2  # not empty


def test_runner_stop_abandons_every_cells_call_in_flight_and_starts_no_new_cell(tmp_path):
    from mtg_local.grid import GridCell, run_cells
    from mtg_local.meta.outer_loop import StopFlag

    class Slow(FakeEngine):
        accepts_caller_tag = True

        def __init__(self):
            super().__init__()
            self.cancelled = []

        def _generate(self, requests, **kw):
            if kw.pop("tag", "") == "t":
                time.sleep(30)  # a long phase: the stop must not wait for it
            return super()._generate(requests, **kw)

        def cancel(self, tag):
            self.cancelled.append(tag)

    stop = StopFlag()
    phases: dict[str, int] = {}

    def eval_cell(engine, flag):
        assert flag is stop  # the grid's flag reaches every cell
        for k in range(3):
            engine.generate([GenRequest.chat(f"a {k}")])
            phases["a"] = k + 1
            if k == 0:
                time.sleep(0.3)  # t's call is in flight
                stop.set(signal.SIGTERM)
        return {"status": "complete"}

    def train_cell(engine, flag):
        engine.generate([GenRequest.chat("t's long stage")])
        phases["t"] = 1
        return {"status": "complete"}

    cells = [GridCell("a", tmp_path / "a", "eval", eval_cell),
             GridCell("t", tmp_path / "t", "train", train_cell, checkpoints=True),
             GridCell("late", tmp_path / "late", "eval", lambda e, f: {"status": "complete"})]
    lines: list[str] = []
    engine = Slow()
    t0 = time.monotonic()
    report = run_cells(cells, engine, max_concurrent=2, stop=stop, log=lines.append)
    assert time.monotonic() - t0 < 5
    status = {c.name: c.status for c in report.cells}
    assert status == {"a": "interrupted", "t": "interrupted", "late": "not_started"} and report.stopped
    assert phases == {"a": 1} and engine.cancelled == ["t"]
    assert "stopped by SIGTERM" in report.cells[1].error
    assert any(x.startswith("[grid] interrupted t") for x in lines)
