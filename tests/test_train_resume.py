"""Resumable ``mtg train``: preemption (exit 99), SIGKILL + --resume == an uninterrupted run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meta_fakes import ScriptedMetaEngine, meta_config, register_scripted
from mtg_local.commands import train as train_cmd

from mtg_local.meta import EXIT_REQUEUE, MetaConfig, Preempted, StopFlag, run_train

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent
COMPARED = ("learned", "artifacts", "test_accuracy", "history", "initial_val_accuracy", "best_val_accuracy",
            "best_step", "n_questions")


def cfg(out: Path, **kw) -> MetaConfig:
    # The scripted engine is written for last-iterate answers with format keeping.
    base = dict(out=str(out), method="learned_loss", engine="scripted:good=2", seeds=(0, 1), outer_steps=2,
                minibatch=2, steps=1, limit=3, max_tokens=64, optimizer_max_tokens=64, meta_max_tokens=64,
                progress=False, answer_selection="last", keep_answer_format=True)
    base.update(kw)
    return meta_config(**base)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def compared(results: dict) -> dict:
    return {k: results[k] for k in COMPARED}


def test_stop_flag_abandons_step_then_resume_matches(tmp_path):
    full = run_train(cfg(tmp_path / "full"), engine=ScriptedMetaEngine({(2, "loss_prompt")}))

    stop = StopFlag()
    engine = ScriptedMetaEngine({(2, "loss_prompt")}, on_meta_tgd=lambda s: stop.set(0) if s == 2 else None)
    with pytest.raises(Preempted):
        run_train(cfg(tmp_path / "cut"), engine=engine, stop=stop)
    ckpt = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())
    assert ckpt["completed_step"] == 1 and ckpt["test"] is None  # step 2 abandoned
    status = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert status["status"] == "interrupted" and f"mtg train --resume {tmp_path / 'cut'}" in status["message"]
    assert [e["event"] for e in events(tmp_path / "cut")][-2:] == ["preempted", "interrupted"]

    fresh = ScriptedMetaEngine({(2, "loss_prompt")})
    resumed = run_train(cfg(tmp_path / "cut"), engine=fresh, resume=True)
    assert compared(resumed) == compared(full)
    assert resumed["resumed"] is True
    # step 2's minibatch loop and meta calls were replayed from the cache; only step 2's
    # validation and the test evaluation reached the engine -- minus the validation's forward
    # phase: a loss-prompt candidate leaves the initial answers unchanged, cached at step 0
    assert len(fresh.batches) == resumed["engine_usage"]["calls"] == 2 * 4 - 1
    assert resumed["engine_usage"]["cache_hits"] > 0


def test_sigusr1_exits_with_requeue_code(tmp_path):
    register_scripted()
    parser = argparse.ArgumentParser(prog="mtg")
    train_cmd.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--engine", "scripted:good=2", "--seeds", "0,1", "--outer-steps", "2",
                              "--minibatch", "2", "--limit", "3", "--steps", "1", "--max-tokens", "64",
                              "--answer-selection", "last", "--keep-format", "--out", str(out), "--no-progress"])
    # the signal arrives while step 1's meta step runs: that step is abandoned
    import meta_fakes

    orig = meta_fakes.scripted_responder
    sent = []

    def responder(good, on_meta_tgd=None):
        def hook(step):
            if not sent:
                sent.append(step)
                os.kill(os.getpid(), signal.SIGUSR1)
        return orig(good, hook)

    meta_fakes.scripted_responder = responder
    try:
        assert args.func(args) == EXIT_REQUEUE == 99
    finally:
        meta_fakes.scripted_responder = orig
    assert json.loads((out / "checkpoint.json").read_text())["completed_step"] == 0
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handler restored
    resume = parser.parse_args(["train", "--resume", str(out), "--no-progress"])
    assert resume.func(resume) == 0
    assert json.loads((out / "results.json").read_text())["best_step"] == 2


LAUNCHER = textwrap.dedent(
    """
    import argparse, sys
    sys.path.insert(0, {tests!r})
    from meta_fakes import register_scripted
    register_scripted()
    from mtg_local.commands import train
    p = argparse.ArgumentParser(prog="mtg")
    train.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["train", *sys.argv[1:]])
    sys.exit(args.func(args))
    """
)


def mtg_train(launcher: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(launcher), *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# (accepted step, outer steps, kill after step): (1, 3, ...) is "resume where the best is not
# the initial": step 1 is accepted, steps 2-3 are rejected and must start from step 1's artifacts.
@pytest.mark.parametrize("good, outer_steps, kill_after_step", [(2, 2, 0), (2, 2, 1), (1, 3, 1), (1, 3, 2)],
                         ids=["best2-kill0", "best2-kill1", "best1-kill1", "best1-kill2"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, good, outer_steps, kill_after_step):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(tests=str(TESTS_DIR)))
    common = ["--engine", f"scripted:good={good};delay=0.15", "--seeds", "0,1", "--outer-steps", str(outer_steps),
              "--minibatch", "2", "--limit", "3", "--steps", "1", "--max-tokens", "64", "--optimizer-max-tokens", "64",
              "--meta-max-tokens", "64", "--answer-selection", "last", "--keep-format", "--no-progress"]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = mtg_train(launcher, *common, "--out", str(full_dir))
    cut = mtg_train(launcher, *common, "--out", str(cut_dir))
    ckpt = cut_dir / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists() and json.loads(ckpt.read_text())["completed_step"] >= kill_after_step:
            break
        assert cut.poll() is None, cut.communicate()
        time.sleep(0.01)
    cut.kill()  # SIGKILL, mid-way through the next step
    cut.wait()
    assert cut.returncode == -signal.SIGKILL
    state = json.loads(ckpt.read_text())
    assert state["test"] is None and not (cut_dir / "results.json").exists()

    resumed = mtg_train(launcher, "--resume", str(cut_dir), "--no-progress")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    f_out, f_err = full.communicate(timeout=300)
    assert full.returncode == 0, f_err

    a = json.loads((full_dir / "results.json").read_text())
    b = json.loads((cut_dir / "results.json").read_text())
    assert compared(a) == compared(b)
    assert (full_dir / "learned_loss_prompt.txt").read_text() == (cut_dir / "learned_loss_prompt.txt").read_text()
    assert a["best_step"] == good and a["test_accuracy"]["mean"] == 1.0
    if good <= state["completed_step"]:  # the checkpoint's best is a learned one, not the initial
        assert state["best_step"] == good and state["best"] != a["history"][0]["candidate"]
    assert [h["accepted"] for h in b["history"]] == [h["accepted"] for h in a["history"]]
    assert b["artifacts"] == a["artifacts"] and b["artifacts"]["loss_prompt"].endswith(f"[v{good}] GOOD")
    # nothing finished before the checkpoint is generated again
    calls_at = {e["completed_step"]: e["session_backend_calls"] for e in events(full_dir) if e["event"] == "checkpoint"
                and not e["tested"]}
    done = calls_at[state["completed_step"]]
    assert b["engine_usage"]["calls"] <= a["engine_usage"]["calls"] - done
    # The kill lands right after a checkpoint, so the cache may hold nothing past it; that rows
    # written mid-step are served from the cache is test_sigkill_mid_step_resume_serves_the_rows_from_the_cache.
    print(f"\nkilled after step {state['completed_step']}: resumed run made {b['engine_usage']['calls']} backend "
          f"calls ({b['engine_usage']['cache_hits']} cached requests) vs {a['engine_usage']['calls']} uninterrupted")


def cache_rows(path: Path) -> int:
    """Rows of a run's generation cache (0 before the table exists)."""
    import sqlite3

    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def kill_mid_step(proc: subprocess.Popen, run_dir: Path, *, min_step: int = 0, timeout: float = 120) -> dict:
    """SIGKILLs ``proc`` once its cache holds rows written after its last checkpoint.

    Returns:
        {"step": completed step of the checkpoint, "rows_at_checkpoint": rows seen when that
        checkpoint was first seen (>= the rows it covers), "rows": rows after the kill}.
    """
    ckpt, cache = run_dir / "checkpoint.json", run_dir / "cache.sqlite"
    seen: tuple[int, int] | None = None  # (checkpoint step, rows when first seen)
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        step = json.loads(ckpt.read_text())["completed_step"] if ckpt.exists() else None
        rows = cache_rows(cache)
        if step is not None and step >= min_step:
            if seen is None or seen[0] != step:
                seen = (step, rows)
            elif rows > seen[1]:
                proc.kill()
                proc.wait()
                after = json.loads(ckpt.read_text())["completed_step"]
                assert after == step, "a checkpoint was written just before the kill: not mid-step"
                return {"step": step, "rows_at_checkpoint": seen[1], "rows": cache_rows(cache)}
        time.sleep(0.005)


def generated(usage: dict) -> int:
    """Requests a session sent to the backend (not served from the cache nor copies of an identical request)."""
    return usage["requests"] - usage["cache_hits"] - usage.get("deduplicated", 0)


def test_sigkill_mid_step_resume_serves_the_rows_from_the_cache(tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(tests=str(TESTS_DIR)))
    common = ["--engine", "scripted:good=1;delay=0.2", "--seeds", "0,1", "--outer-steps", "2", "--minibatch", "2",
              "--limit", "3", "--steps", "2", "--max-tokens", "64", "--optimizer-max-tokens", "64",
              "--meta-max-tokens", "64", "--no-progress"]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = mtg_train(launcher, *common, "--out", str(full_dir))
    cut = mtg_train(launcher, *common, "--out", str(cut_dir))
    kill = kill_mid_step(cut, cut_dir, min_step=1)  # inside step 2 (its minibatch inner loop)
    assert cut.returncode == -signal.SIGKILL
    assert kill["rows"] > kill["rows_at_checkpoint"]

    resumed = mtg_train(launcher, "--resume", str(cut_dir), "--no-progress")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err
    a = json.loads((full_dir / "results.json").read_text())
    b = json.loads((cut_dir / "results.json").read_text())
    assert compared(a) == compared(b)
    # Every request is generated exactly once over both sessions: the killed session's
    # generations are the cache rows (failed results are not cached; none fail here).
    assert kill["rows"] + generated(b["engine_usage"]) == generated(a["engine_usage"])
    # The rows written after the checkpoint (the killed step's finished calls) come back as hits.
    assert b["engine_usage"]["cache_hits"] >= kill["rows"] - kill["rows_at_checkpoint"] > 0
    print(f"\nscripted SIGKILL in step {kill['step'] + 1}: generated before the kill {kill['rows']} "
          f"({kill['rows'] - kill['rows_at_checkpoint']}+ after the checkpoint), served from the cache after "
          f"{b['engine_usage']['cache_hits']}, generated after {generated(b['engine_usage'])}; total "
          f"{kill['rows'] + generated(b['engine_usage'])} vs uninterrupted {generated(a['engine_usage'])}")
