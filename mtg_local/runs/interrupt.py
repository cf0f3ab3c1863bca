"""Stop signals: a clean, resumable interruption instead of a failure.

Every run command (``mtg train``, ``mtg eval``, ``mtg baseline``, the grid
runner) wraps its work in ``stop_on_signals`` and, when an exception escapes,
asks ``interruption()`` whether it was really a stop:

* SIGUSR1 sets the ``StopFlag``; ``mtg train`` stops at the next stage
  boundary (SLURM's ``--signal=B:USR1@T`` warning leaves time for that).
* SIGTERM and SIGINT set the flag *and* raise ``Interrupted`` at once: SLURM
  SIGKILLs ``KillWait`` (~30 s) after SIGTERM, which a long phase would
  outlast. What finished before is in the cache / checkpoint.
* A signal sent to the whole process group (Ctrl-C, ``kill -TERM -- -PGID``,
  ``scancel``) also reaches vLLM's engine-core child, which may die -- and
  make the phase fail with an engine error -- before this process runs its
  Python handler. Both processes got the signal at the same moment, so
  ``interruption()`` waits briefly (``ENGINE_DEATH_GRACE_S``) for the flag
  before calling the error a failure.

Exit codes (docs: CONTRACTS): 99 after SIGUSR1/SIGTERM ("requeue me"), 130
after SIGINT. results.json gets ``status: "interrupted"`` and a message saying
how to resume (``record_interruption``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from engines.errors import EngineUnreachableError, UserError

#: Exit status after SIGUSR1/SIGTERM: "checkpointed, requeue me".
EXIT_REQUEUE = 99
#: Exit status after SIGINT (the shell convention 128 + 2).
EXIT_SIGINT = 130
#: Seconds an engine failure waits for a stop signal that may explain it.
ENGINE_DEATH_GRACE_S = 2.0
#: Signals that abort the running phase at once (SIGUSR1 waits for a boundary).
ABORT_NOW = (signal.SIGTERM, signal.SIGINT)
ALL_STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name if signum else "stop request"
    except ValueError:
        return f"signal {signum}"


class StopFlag:
    """Set from a signal handler; checked by long loops between stages."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def set(self, signum: int, frame: Any = None) -> None:
        self.signal = signum

    def __bool__(self) -> bool:
        return self.signal is not None


class Interrupted(Exception):
    """The run stopped on a signal; what finished is kept (resume or rerun).

    Attributes:
        signum: the signal (None or 0: a stop requested in-process).
    """

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_SIGINT if self.signum == signal.SIGINT else EXIT_REQUEUE


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag, abort_on: Sequence[int] = ABORT_NOW) -> Iterator[StopFlag]:
    """Routes SIGUSR1/SIGTERM/SIGINT to ``stop`` while inside; handlers restored on exit.

    Args:
        stop: the flag to set.
        abort_on: signals that also raise ``Interrupted`` immediately (only
            once, so the cleanup after it is not interrupted by a repeated signal).

    A SIGINT that is ignored (background jobs of a non-interactive shell) stays
    ignored. Outside the main thread this is a no-op (Python's rule).
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    aborted: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        stop.set(signum, frame)
        if signum in abort_on and not aborted:  # e.g. SIGTERM after SLURM's early SIGUSR1 still aborts
            aborted.append(signum)
            raise Interrupted(f"stopped by {signal_name(signum)}", signum)

    previous: dict[int, Any] = {}
    for s in ALL_STOP_SIGNALS:
        if s == signal.SIGINT and signal.getsignal(s) is signal.SIG_IGN:
            continue
        previous[s] = signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interruption(exc: BaseException, stop: StopFlag, grace_s: float = ENGINE_DEATH_GRACE_S) -> Interrupted | None:
    """The interruption ``exc`` stands for, or None if it is a real failure.

    An ``Interrupted`` or ``KeyboardInterrupt`` is one; so is any other error
    raised while or just after a stop signal arrived (the engine child killed
    by the same group signal): a failure waits up to ``grace_s`` for the flag.
    User errors and an engine found missing by its probe never wait.
    """
    seen: BaseException | None = exc
    while seen is not None:  # e.g. an engine wrapped the Interrupted raised inside its call
        if isinstance(seen, Interrupted):
            return seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, KeyboardInterrupt):
        stop.set(signal.SIGINT)
        return Interrupted("stopped by SIGINT", signal.SIGINT)
    if not isinstance(exc, Exception) or isinstance(exc, (UserError, EngineUnreachableError)):
        return None  # not caused by a signal: no wait
    deadline = time.monotonic() + grace_s
    try:
        while not stop and time.monotonic() < deadline:
            time.sleep(0.02)  # the pending Python handler runs here
    except Interrupted as e:
        return Interrupted(f"{e} (the engine failed first: {type(exc).__name__}: {exc})", e.signum)
    if not stop:
        return None
    return Interrupted(f"stopped by {signal_name(stop.signal)} (the engine failed first: "
                       f"{type(exc).__name__}: {exc})", stop.signal)


def record_interruption(run_dir: Any, intr: Interrupted, *, resume: str, results: dict[str, Any]) -> str:
    """Writes results.json with ``status: "interrupted"`` and logs an "interrupted" event.

    Args:
        run_dir: the run's ``RunDir``.
        intr: the interruption.
        resume: the command (or instruction) that continues the run.
        results: further results.json fields (method, config, history, ...);
            its "status", "error" and "message" are replaced.

    Returns:
        The one-line message (also printed by the commands).
    """
    message = f"{intr}; resume with: {resume}"
    run_dir.write_results({**results, "status": "interrupted", "error": None, "message": message,
                           "signal": signal_name(intr.signum)})
    run_dir.log_event("interrupted", signal=signal_name(intr.signum), message=message)
    return message
