"""engines.process_guard: an engine's processes die with the process that started them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from engines.process_guard import ProcessGuard, descendant_pids, kill_processes

REPO = Path(__file__).parent.parent

# A stand-in "engine": a child shell with a grandchild (like EngineCore and its workers);
# the guard is started after it, as an engine does after start-up.
PARENT = textwrap.dedent(
    """
    import json, subprocess, sys, time
    sys.path.insert(0, {repo!r})
    from engines.process_guard import ProcessGuard, descendant_pids
    before = descendant_pids()
    child = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300; wait"])
    time.sleep(0.3)
    guard = ProcessGuard.watch(descendant_pids() - before)
    print(json.dumps({{"engine": sorted(guard.pids), "watchdog": guard.watchdog_pid,
                      "all": sorted(descendant_pids())}}), flush=True)
    if sys.argv[1] == "release":
        guard.close(kill_survivors=False)
        print("released", flush=True)
    time.sleep(300)
    """
)


def alive(pid: int, ctime: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - ctime) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_parent(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, dict]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    return proc, info


def test_sigkill_of_the_parent_kills_the_engine_processes(tmp_path):
    proc, info = start_parent(tmp_path, "hold")
    engine = {pid: psutil.Process(pid).create_time() for pid in info["all"] if pid != info["watchdog"]}
    assert len(engine) >= 3  # sh + two sleeps
    assert info["watchdog"] not in info["engine"]
    try:
        proc.kill()  # kill -9: no Python cleanup runs in the parent
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(p, t) for p, t in engine.items()):
            time.sleep(0.1)
        assert not [p for p, t in engine.items() if alive(p, t)], "engine processes outlived the parent"
        deadline = time.time() + 10
        while time.time() < deadline and psutil.pid_exists(info["watchdog"]):
            time.sleep(0.1)
        wd = psutil.Process(info["watchdog"]) if psutil.pid_exists(info["watchdog"]) else None
        assert wd is None or wd.status() == psutil.STATUS_ZOMBIE, "the watchdog did not exit"
    finally:
        kill_processes({p: t for p, t in engine.items() if alive(p, t)}, grace_s=0.1)


def test_released_guard_kills_nothing(tmp_path):
    proc, info = start_parent(tmp_path, "release")
    engine = {pid: psutil.Process(pid).create_time() for pid in info["engine"]}
    try:
        assert proc.stdout.readline().strip() == "released"
        proc.kill()
        proc.wait()
        time.sleep(1.5)  # > the watchdog's poll interval
        assert all(alive(p, t) for p, t in engine.items()), "a released guard killed the engine"
    finally:
        descendants = {c.pid: c.create_time() for p in engine for c in psutil.Process(p).children(recursive=True)}
        kill_processes({**engine, **descendants}, grace_s=0.1)


def test_a_reused_pid_is_not_killed():
    victim = subprocess.Popen(["sleep", "30"])
    try:
        ctime = psutil.Process(victim.pid).create_time()
        assert kill_processes({victim.pid: ctime - 5.0}, grace_s=0.1) == []  # recorded start time differs
        assert victim.poll() is None
        assert kill_processes({victim.pid: ctime}, grace_s=1.0) == [victim.pid]
        victim.wait(timeout=5)  # psutil reaped it already (our child), so no exit status is left here
        assert not psutil.pid_exists(victim.pid)
    finally:
        if victim.poll() is None:
            victim.kill()


def test_nothing_to_guard_starts_no_watchdog():
    guard = ProcessGuard.watch([])
    assert guard.watchdog_pid is None and guard.pids == {}
    guard.close()
    assert os.getpid() not in descendant_pids()


def test_close_kills_what_the_shutdown_left():
    before = descendant_pids()
    child = subprocess.Popen(["sleep", "30"])
    guard = ProcessGuard.watch(descendant_pids() - before)
    watchdog = guard.watchdog_pid
    guard.close()
    assert child.wait(timeout=5) is not None
    assert not psutil.pid_exists(watchdog) or psutil.Process(watchdog).status() == psutil.STATUS_ZOMBIE


# The guard started before the engine (engines do this): it adopts the processes the start
# spawns, so a kill -9 in the middle of a model load leaves nothing either.
LOADING = textwrap.dedent(
    """
    import json, subprocess, sys, time
    sys.path.insert(0, {repo!r})
    from engines.process_guard import ProcessGuard, descendant_pids
    guard = ProcessGuard.start()
    time.sleep(0.3)
    child = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300; wait"])  # the "engine core", mid-load
    time.sleep(1.0)  # > ADOPT_POLL_S: the watchdog has seen it
    print(json.dumps({{"watchdog": guard.watchdog_pid, "all": sorted(descendant_pids())}}), flush=True)
    if sys.argv[1] == "fail":  # the start failed or was interrupted: close() kills what it left
        guard.close()
        print(json.dumps(sorted(descendant_pids())), flush=True)
    time.sleep(300)
    """
)


def test_sigkill_during_the_engine_start_kills_what_the_start_spawned(tmp_path):
    script = tmp_path / "loading.py"
    script.write_text(LOADING.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), "hold"], stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    engine = {pid: psutil.Process(pid).create_time() for pid in info["all"] if pid != info["watchdog"]}
    assert len(engine) >= 3  # sh + two sleeps
    try:
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(p, t) for p, t in engine.items()):
            time.sleep(0.1)
        assert not [p for p, t in engine.items() if alive(p, t)], "processes of an unfinished start outlived kill -9"
    finally:
        kill_processes({p: t for p, t in engine.items() if alive(p, t)}, grace_s=0.1)


def test_close_after_a_failed_start_kills_what_it_spawned(tmp_path):
    script = tmp_path / "loading.py"
    script.write_text(LOADING.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), "fail"], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        engine = {pid: psutil.Process(pid).create_time() for pid in info["all"] if pid != info["watchdog"]}
        left = json.loads(proc.stdout.readline())
        assert not [p for p, t in engine.items() if alive(p, t)] and left == []
    finally:
        proc.kill()
        proc.wait()
