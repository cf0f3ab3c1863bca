"""Stop signals end as a clean interruption (mtg_local.runs.interrupt), scripted engine.

The real-engine versions (vLLM's engine core in the same process group) are in
tests/test_lifecycle_vllm.py.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from engines.errors import EngineError, UserError
from meta_fakes import ScriptedMetaEngine, meta_config
from mtg_local.meta import run_train
from mtg_local.runs.interrupt import (
    EXIT_REQUEUE,
    EXIT_SIGINT,
    Interrupted,
    StopFlag,
    interruption,
    stop_on_signals,
)

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent
COMPARED = ("learned", "artifacts", "test_accuracy", "history", "initial_val_accuracy", "best_val_accuracy",
            "best_step", "n_questions")

# `mtg ...` with the scripted engine registered (subprocess: signals, exit codes).
LAUNCHER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from meta_fakes import register_scripted
    register_scripted()
    from mtg_local.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)
DELAY = 0.6  # seconds per scripted engine call
TRAIN = ["--engine", f"scripted:good=2;delay={DELAY}", "--seeds", "0,1", "--outer-steps", "2", "--minibatch", "2",
         "--limit", "3", "--steps", "1", "--max-tokens", "64", "--optimizer-max-tokens", "64",
         "--meta-max-tokens", "64", "--answer-selection", "last", "--keep-format", "--no-progress"]


def events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def cache_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def mtg(tmp_path: Path, *argv: str) -> subprocess.Popen:
    launcher = tmp_path / "mtg_launch.py"
    launcher.write_text(LAUNCHER.format(tests=str(TESTS_DIR)))
    return subprocess.Popen([sys.executable, str(launcher), *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


# -- the pieces ------------------------------------------------------------------------------

def test_sigterm_aborts_at_once_and_sigusr1_only_sets_the_flag():
    stop = StopFlag()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert stop.signal == signal.SIGUSR1  # no exception: waits for a boundary
    stop = StopFlag()
    with pytest.raises(Interrupted) as info:
        with stop_on_signals(stop):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert info.value.exit_code == EXIT_REQUEUE and stop.signal == signal.SIGTERM
    with pytest.raises(Interrupted) as info:
        with stop_on_signals(StopFlag()):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert info.value.exit_code == EXIT_SIGINT
    stop = StopFlag()
    with pytest.raises(Interrupted) as info:
        with stop_on_signals(stop):
            os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's early warning, then the time limit's SIGTERM
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert info.value.signum == signal.SIGTERM
    with stop_on_signals(StopFlag()):  # only the first abort raises: cleanup is not interrupted again
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_engine_error_before_the_handler_ran_is_the_interruption():
    """The engine core died of the group signal first; this process's signal comes a bit later."""
    stop = StopFlag()
    with stop_on_signals(stop):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        intr = interruption(EngineError("vLLM generate failed: EngineCore encountered an issue"), stop)
    assert isinstance(intr, Interrupted) and intr.signum == signal.SIGTERM and intr.exit_code == 99
    assert "EngineCore encountered an issue" in str(intr)


def test_engine_error_without_a_signal_stays_a_failure():
    stop = StopFlag()
    t0 = time.monotonic()
    with stop_on_signals(stop):
        assert interruption(EngineError("boom"), stop, grace_s=0.3) is None
    assert time.monotonic() - t0 >= 0.3
    assert interruption(UserError("bad flag"), StopFlag(), grace_s=30) is None  # no wait for user errors
    wrapped = EngineError("vLLM generate failed")
    wrapped.__cause__ = Interrupted("stopped by SIGINT", signal.SIGINT)
    assert interruption(wrapped, StopFlag(), grace_s=0).exit_code == 130


# -- mtg train / mtg eval under a signal to the whole process group ----------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run the resumed ones must equal (same settings as TRAIN, no delay)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    config = meta_config(out=str(out), method="learned_loss", engine="scripted:good=2", seeds=(0, 1), outer_steps=2,
                         minibatch=2, steps=1, limit=3, max_tokens=64, optimizer_max_tokens=64, meta_max_tokens=64,
                         answer_selection="last", keep_answer_format=True, progress=False)
    return run_train(config, engine=ScriptedMetaEngine({(2, "loss_prompt")}))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_group_signal_mid_phase_interrupts_then_resume_equals_uninterrupted(tmp_path, reference, sig):
    run = tmp_path / "run"
    proc = mtg(tmp_path, "train", *TRAIN, "--out", str(run))
    ckpt = run / "checkpoint.json"
    deadline = time.time() + 120
    while not (ckpt.exists() and json.loads(ckpt.read_text())["completed_step"] >= 0):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(0.1)  # step 1's meta call is running (DELAY s)
    sent = time.time()
    os.killpg(proc.pid, sig)  # the whole process group, like Ctrl-C or scancel
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 99), err
    assert f"mtg train --resume {run}" in err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "interrupted" and res["signal"] == sig.name
    assert f"mtg train --resume {run}" in res["message"]
    log = events(run)
    assert log[-1]["event"] == "interrupted"
    assert json.loads(ckpt.read_text())["completed_step"] == 0 and not (run / "learned_loss_prompt.txt").exists()
    if sig == signal.SIGUSR1:  # waits for the stage boundary
        assert log[-2]["event"] == "preempted"
    else:  # aborts the running call at once instead of finishing the phase
        assert "preempted" not in [e["event"] for e in log]
        assert log[-1]["t"] - sent < DELAY, "SIGTERM/SIGINT waited for the engine call to finish"

    resumed = mtg(tmp_path, "train", "--resume", str(run), "--no-progress")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete" and res["resumed"] is True
    assert {k: res[k] for k in COMPARED} == {k: reference[k] for k in COMPARED}
    assert res["best_step"] == 2


def test_group_sigterm_interrupts_eval_and_a_rerun_finishes_from_the_cache(tmp_path):
    run = tmp_path / "run"
    argv = ["eval", "--engine", f"scripted:delay={DELAY}", "--limit", "2", "--seeds", "0,1", "--steps", "1",
            "--max-tokens", "64", "--no-progress", "--out", str(run)]
    proc = mtg(tmp_path, *argv)
    deadline = time.time() + 60
    while cache_rows(run / "cache.sqlite") == 0:  # the forward call is done; the loss call runs
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    rows = cache_rows(run / "cache.sqlite")
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 99, err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "interrupted" and "the same command" in res["message"]
    assert events(run)[-1]["event"] == "interrupted"

    rerun = mtg(tmp_path, *argv)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete" and res["engine_usage"]["cache_hits"] >= rows > 0


def test_report_lists_an_interrupted_run_as_resumable_not_failed(tmp_path):
    from mtg_local.report.collect import parse_results

    body = {"schema_version": 1, "status": "interrupted", "error": None, "signal": "SIGTERM",
            "message": "stopped by SIGTERM; resume with: mtg train --resume runs/x"}
    problem = parse_results(body, tmp_path / "results.json")
    assert problem.kind == "interrupted" and "--resume runs/x" in problem.detail
    assert parse_results({**body, "status": "failed", "error": "boom"}, tmp_path / "r.json").kind == "failed"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=lambda s: s.name)
def test_signal_while_the_engine_starts_is_an_interruption_and_a_rerun_completes(tmp_path, reference, sig):
    # Before the run's own handlers exist (a model load takes minutes on a cluster), a stop signal
    # must still end as an interruption SLURM requeues (99; SIGINT 130), not a death by signal.
    run = tmp_path / "run"
    argv = [a if not a.startswith("scripted:") else "scripted:good=2;start=8" for a in TRAIN]
    proc = mtg(tmp_path, "train", *argv, "--out", str(run))
    deadline = time.time() + 60
    while not (run / "events.jsonl").exists():  # config written; the engine is "starting" for 8 s
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(0.2)
    sent = time.time()
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=20)
    assert time.time() - sent < 6, "waited for the engine start to finish"  # at once, not after the 8 s start
    assert proc.returncode == (130 if sig == signal.SIGINT else 99), err
    assert f"stopped by {sig.name}" in err and "Traceback" not in err
    assert not (run / "checkpoint.json").exists()
    # The hint it prints works although no stage had finished: the run starts over.
    assert f"mtg train --resume {run}" in err
    rerun = mtg(tmp_path, "train", "--resume", str(run), "--no-progress")
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "complete"
    assert {k: res[k] for k in COMPARED} == {k: reference[k] for k in COMPARED}


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_while_the_commands_are_imported_is_an_interruption(sig):
    # A job's --signal=B:USR1@T can land while mtg is still importing its sub-commands (seconds, before
    # any command code runs): that too ends as an interruption SLURM requeues, not a death by signal.
    # (In a child process: without the handler the signal would kill the test run itself.)
    program = textwrap.dedent(f"""
        import os, sys, time
        import mtg_local.cli as cli
        real = cli.build_parser
        def signalled_while_importing():
            os.kill(os.getpid(), {int(sig)})
            time.sleep(0.5)  # the handler raises before this returns
            return real()
        cli.build_parser = signalled_while_importing
        sys.exit(cli.main(["eval", "--help"]))
    """)
    p = subprocess.run([sys.executable, "-c", program], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 99, (p.returncode, p.stderr[-2000:])
    assert f"mtg: stopped by {sig.name} (exit 99)" in p.stderr


def test_job_shell_requeues_when_the_signal_kills_mtg_while_it_starts(tmp_path):
    # slurm/lib/mtg_job.sh forwards SIGUSR1 to mtg; if mtg dies of it (still starting up, no handler
    # yet), the job shell treats that as a checkpointed stop (99) so the job is requeued, not failed.
    repo = Path(__file__).resolve().parents[1]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "mtg").write_text("#!/bin/bash\nexec sleep 30\n")  # a process with SIGUSR1's default action
    (fake_bin / "mtg").chmod(0o755)
    script = (f'source {repo / "slurm" / "lib" / "mtg_job.sh"}; (sleep 1; kill -USR1 $$) & '
              'mtg_exec "" eval --task x; echo "rc=$?"')
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    env.pop("SLURM_JOB_ID", None)
    p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert "rc=99" in p.stdout, (p.stdout, p.stderr)
    assert "stopped by SIGUSR1 while starting up" in p.stderr
