"""Kills an engine's helper processes when the process that started them dies.

vLLM runs its engine core (and, with several GPUs, its workers) in child
processes. When the main process is killed outright (``kill -9``, the OOM
killer, a crashed node agent) those children are re-parented to init and keep
running: on a GPU node they keep the GPU's memory, so a resumed run cannot
start its engine. Linux's ``PR_SET_PDEATHSIG`` cannot be set on processes that
vLLM starts itself, so a tiny watchdog does it instead:

* after an engine has started, ``ProcessGuard.watch(new_pids)`` records the
  engine's processes (pid + start time, so a reused pid is never killed) and
  starts the watchdog in its own session (a signal to the run's process group
  does not reach it);
* the watchdog holds the read end of a pipe whose write end only the main
  process has, and polls the main process's pid and start time: when either
  says the main process is gone, it sends SIGTERM to the recorded processes and
  their descendants, waits ``grace_s``, then SIGKILLs the survivors;
* ``close()`` (after the engine's own shutdown) kills whatever that shutdown
  left running, then tells the watchdog to exit.

Any engine calls it after start-up::

    before = descendant_pids()
    llm = vllm.LLM(...)            # or AsyncLLM(...)
    guard = ProcessGuard.watch(descendant_pids() - before)
    ...
    guard.close()                  # after shutting the engine down

The watchdog is this file run as a script (stdlib + psutil only).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

import psutil

#: Seconds between the watchdog's checks of the main process (a pipe EOF wakes it sooner).
POLL_S = 0.5
#: Seconds between SIGTERM and SIGKILL of the engine's processes.
GRACE_S = 2.0


def descendant_pids(pid: int | None = None) -> set[int]:
    """Pids of every living descendant of ``pid`` (default: this process)."""
    try:
        return {p.pid for p in psutil.Process(pid or os.getpid()).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _identities(pids: Iterable[int]) -> dict[int, float]:
    """pid -> start time of each pid still alive (the pair names one process, pids are reused)."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            pass
    return out


def _same(pid: int, create_time: float) -> psutil.Process | None:
    """The process ``pid`` if it is still the one started at ``create_time``, else None."""
    try:
        p = psutil.Process(pid)
        return p if abs(p.create_time() - create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE else None
    except psutil.NoSuchProcess:
        return None


def kill_processes(procs: dict[int, float], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM the recorded processes and their descendants, SIGKILL what is left after ``grace_s``.

    Args:
        procs: pid -> start time, as recorded when the engine started.
        grace_s: seconds to wait for a clean exit before SIGKILL.

    Returns:
        The pids signalled.
    """
    targets: dict[int, psutil.Process] = {}
    for pid, ctime in procs.items():
        p = _same(pid, ctime)
        if p is None:
            continue
        targets[pid] = p
        try:  # children started after the recording (e.g. GPU workers) go too
            targets.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in targets.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(targets.values()), timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return sorted(targets)


class ProcessGuard:
    """Handle of a running watchdog over one engine's processes (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen[bytes] | None, pids: dict[int, float]) -> None:
        self._proc = proc
        self.pids = pids

    @classmethod
    def watch(cls, pids: Iterable[int], *, grace_s: float = GRACE_S) -> ProcessGuard:
        """Starts a watchdog that kills ``pids`` (and their descendants) once this process dies.

        Args:
            pids: the engine's processes (e.g. ``descendant_pids() - before``).
            grace_s: seconds between SIGTERM and SIGKILL.

        Returns:
            The guard; with no living pid, an inert one (no watchdog started).
        """
        procs = _identities(pids)
        if not procs:
            return cls(None, {})
        me = psutil.Process()
        spec = {"parent": me.pid, "parent_ctime": me.create_time(), "procs": procs, "grace_s": grace_s}
        proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the run's process group must not reach it
            close_fds=True,
        )
        return cls(proc, procs)

    @property
    def watchdog_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self, *, kill_survivors: bool = True) -> None:
        """Stops the watchdog (call after the engine's own shutdown). Idempotent.

        Args:
            kill_survivors: first SIGTERM/SIGKILL any recorded process the
                shutdown left running (none after a clean vLLM shutdown).
        """
        if kill_survivors and self.pids:
            kill_processes(self.pids)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"release\n")
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _watchdog(spec: dict) -> int:
    """The watchdog's loop: returns when released, or after killing the engine's processes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    procs = {int(k): float(v) for k, v in spec["procs"].items()}
    parent, parent_ctime = int(spec["parent"]), float(spec["parent_ctime"])
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready:
            data = os.read(fd, 64)
            if data.startswith(b"release"):
                return 0
            if not data:  # EOF: every holder of the write end is gone
                break
        if _same(parent, parent_ctime) is None:
            break
        if not any(_same(pid, t) for pid, t in procs.items()):
            return 0  # the engine is gone already: nothing left to guard
    time.sleep(0.05)
    kill_processes(procs, float(spec.get("grace_s", GRACE_S)))
    return 0


if __name__ == "__main__":
    sys.exit(_watchdog(json.loads(sys.argv[1])))
