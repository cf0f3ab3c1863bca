"""An exclusive lock on a run directory, so two jobs never write one run dir at once.

``fcntl.flock`` on ``RUN_DIR/.lock``: the kernel releases it when the holding
process dies (SIGKILL, node reboot of a local disk, SLURM preemption), so a
dead job can never leave a run dir stuck. After taking the lock the holder
writes who it is (pid, host, SLURM job id, start time) into the file, and a
second process that finds the lock taken gets a ``RunDirLockedError`` naming
that holder.

Use::

    with RunDirLock(run_dir):
        ...  # write config, checkpoints, results

Note: flock is reliable on local disks and on most cluster file systems
(NFSv4, Lustre and GPFS map it to their own locks); on NFSv3 without lockd it
may be a no-op, see slurm/README.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from engines.errors import UserError

LOCK_NAME = ".lock"


class RunDirLockedError(UserError):
    """Another live process holds the run dir's lock."""


def holder_info() -> dict[str, Any]:
    """What this process writes into a lock it holds."""
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        info["slurm_job_id"] = f"{array_job}_{array_task}" if array_job and array_task else job
        info["slurm_restart_count"] = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    return info


def describe_holder(info: dict[str, Any] | None) -> str:
    """A short human text for a holder record (tolerates a missing/partial one)."""
    if not info:
        return "an unknown process (lock file empty: it may be starting right now)"
    text = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    if info.get("slurm_job_id"):
        text += f" (SLURM job {info['slurm_job_id']})"
    if info.get("since"):
        text += f" since {info['since']}"
    return text


class RunDirLock:
    """Exclusive, non-blocking lock on ``RUN_DIR/.lock`` (a context manager).

    Args:
        run_dir: the run directory (created if missing).

    Raises (from ``acquire``):
        RunDirLockedError: another process holds the lock; the message names it.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC (Python's default): engine worker processes do not inherit the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirLockedError(
                f"run dir {self.run_dir} is in use by {describe_holder(read_holder(self.run_dir))}; "
                "wait for that job to finish or cancel it (the lock goes away when its process exits)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Releases the lock (the holder text stays as a record of the last holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last holder record written into ``RUN_DIR/.lock`` (None if absent/unreadable)."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def is_locked(run_dir: str | os.PathLike[str]) -> bool:
    """True when some live process holds the run dir's lock (probes without keeping it)."""
    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe lock
    return False
