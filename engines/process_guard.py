"""Kills an engine's helper processes when the process that started them dies.

vLLM runs its engine core (and, with several GPUs, its workers) in child
processes. When the main process is killed outright (``kill -9``, the OOM
killer, a crashed node agent) those children are re-parented to init and keep
running: on a GPU node they keep the GPU's memory, so a resumed run cannot
start its engine. Linux's ``PR_SET_PDEATHSIG`` cannot be set on processes that
vLLM starts itself, so a tiny watchdog does it instead, from **before** the
engine starts (a model load takes minutes; a kill then must not leave a
half-started engine core holding the GPU) to the end:

* ``ProcessGuard.start()`` (before the engine is built) notes this process's
  current children and starts the watchdog in its own session (a signal to
  the run's process group does not reach it). Until told otherwise the
  watchdog *adopts* every new descendant of the main process it sees (polled
  every ``ADOPT_POLL_S``), recording pid + start time (a reused pid is never
  killed);
* ``settle()`` (after the engine has started) hands the watchdog the exact set:
  the descendants that were not there before. It stops adopting;
* the watchdog holds the read end of a pipe whose write end only the main
  process has, and polls the main process's pid and start time: when either
  says the main process is gone, it sends SIGTERM to the recorded processes and
  their descendants, waits ``grace_s``, then SIGKILLs the survivors;
* ``close()`` (after the engine's own shutdown, or after a failed or
  interrupted start) kills whatever was left running, then tells the
  watchdog to exit.

Any engine calls it around its start-up::

    guard = ProcessGuard.start()
    try:
        llm = vllm.LLM(...)        # or AsyncLLM(...)
    except BaseException:
        guard.close()              # what the failed start left is killed
        raise
    guard.settle()
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
#: Seconds between the watchdog's scans for new engine processes while the engine starts
#: (a scan reads every process's parent: ~6 ms with 100 processes; longer scans poll less often).
ADOPT_POLL_S = 0.25
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

    def __init__(self, proc: subprocess.Popen[bytes] | None, pids: dict[int, float],
                 before: set[int] | None = None) -> None:
        self._proc = proc
        self.pids = pids
        # Children of this process before the engine started (None: settled or watch()).
        self._before = before

    @classmethod
    def _spawn(cls, procs: dict[int, float], *, adopt: bool, exclude: set[int], grace_s: float) -> subprocess.Popen[bytes]:
        me = psutil.Process()
        spec = {"parent": me.pid, "parent_ctime": me.create_time(), "procs": procs, "grace_s": grace_s,
                "adopt": adopt, "exclude": sorted(exclude)}
        return subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the run's process group must not reach it
            close_fds=True,
        )

    @classmethod
    def start(cls, *, grace_s: float = GRACE_S) -> ProcessGuard:
        """Starts a watchdog before the engine starts: it adopts every new descendant until ``settle()``.

        Args:
            grace_s: seconds between SIGTERM and SIGKILL.
        """
        before = descendant_pids()
        return cls(cls._spawn({}, adopt=True, exclude=before, grace_s=grace_s), {}, before)

    @classmethod
    def watch(cls, pids: Iterable[int], *, grace_s: float = GRACE_S) -> ProcessGuard:
        """Starts a watchdog that kills ``pids`` (and their descendants) once this process dies.

        For processes already running; an engine uses ``start()`` before it starts instead.

        Args:
            pids: the processes to guard.
            grace_s: seconds between SIGTERM and SIGKILL.

        Returns:
            The guard; with no living pid, an inert one (no watchdog started).
        """
        procs = _identities(pids)
        if not procs:
            return cls(None, {})
        return cls(cls._spawn(procs, adopt=False, exclude=set(), grace_s=grace_s), procs)

    @property
    def watchdog_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _new_descendants(self) -> set[int]:
        return descendant_pids() - (self._before or set()) - {self.watchdog_pid or -1}

    def settle(self) -> None:
        """The engine has started: its processes are the descendants that were not there before.

        Hands the watchdog that exact set (it stops adopting); with none (an
        in-process engine), the watchdog exits.
        """
        if self._before is None:
            return
        self.pids = _identities(self._new_descendants())
        self._before = None
        if not self.pids:
            self.close(kill_survivors=False)
            return
        self._send(json.dumps({"procs": self.pids}).encode() + b"\n")

    def _send(self, data: bytes) -> None:
        try:
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, AssertionError):
            pass

    def close(self, *, kill_survivors: bool = True) -> None:
        """Stops the watchdog (call after the engine's own shutdown). Idempotent.

        Args:
            kill_survivors: first SIGTERM/SIGKILL any engine process left running
                (none after a clean vLLM shutdown); before ``settle()`` (a failed
                or interrupted start) that is every descendant started since ``start()``.
        """
        if kill_survivors:
            procs = self.pids if self._before is None else _identities(self._new_descendants())
            if procs:
                kill_processes(procs)
        self._before = None
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


def _adopt(parent: int, exclude: set[int], procs: dict[int, float]) -> None:
    """Records every descendant of ``parent`` not in ``exclude`` (pid -> start time) in ``procs``."""
    try:
        for c in psutil.Process(parent).children(recursive=True):
            if c.pid not in exclude and c.pid not in procs:
                try:
                    procs[c.pid] = c.create_time()
                except psutil.NoSuchProcess:
                    pass
    except psutil.NoSuchProcess:
        pass


def _watchdog(spec: dict) -> int:
    """The watchdog's loop: returns when released, or after killing the engine's processes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    procs = {int(k): float(v) for k, v in spec["procs"].items()}
    parent, parent_ctime = int(spec["parent"]), float(spec["parent_ctime"])
    adopt = bool(spec.get("adopt", False))
    exclude = {int(p) for p in spec.get("exclude", ())} | {os.getpid()}
    fd = sys.stdin.fileno()
    buf = b""
    poll = ADOPT_POLL_S if adopt else POLL_S
    while True:
        ready, _, _ = select.select([fd], [], [], poll)
        if ready:
            data = os.read(fd, 65536)
            if not data:  # EOF: every holder of the write end is gone
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"release"):
                    return 0
                if line.startswith(b"{"):  # settle(): the engine's exact processes; stop adopting
                    procs = {int(k): float(v) for k, v in json.loads(line)["procs"].items()}
                    adopt, poll = False, POLL_S
        if _same(parent, parent_ctime) is None:
            break
        if adopt:
            t0 = time.monotonic()
            _adopt(parent, exclude, procs)
            poll = max(ADOPT_POLL_S, 10 * (time.monotonic() - t0))  # a busy node: scan less often
        elif procs and not any(_same(pid, t) for pid, t in procs.items()):
            return 0  # the engine is gone already: nothing left to guard
    time.sleep(0.05)
    kill_processes(procs, float(spec.get("grace_s", GRACE_S)))
    return 0


if __name__ == "__main__":
    sys.exit(_watchdog(json.loads(sys.argv[1])))
