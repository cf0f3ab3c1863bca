"""Peak resident memory of this process and all its descendants (vLLM's engine core, workers).

``resource.getrusage`` only covers children that have exited, and vLLM keeps
its engine core alive in a child process, so a background thread samples the
RSS of the whole process tree with psutil and keeps the maximum of the sums.
"""

from __future__ import annotations

import threading

import psutil

GiB = 1024**3


def tree_rss_bytes(proc: psutil.Process | None = None) -> int:
    """Current RSS of ``proc`` (default: this process) plus all its descendants, in bytes."""
    proc = proc or psutil.Process()
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # exited between listing and reading
            continue
    return total


class PeakRSS:
    """Samples the process tree's RSS every ``interval_s`` while in a ``with`` block.

    Attributes:
        peak_bytes: the largest sum seen (also sampled on entry and exit).
    """

    def __init__(self, interval_s: float = 0.25) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Takes one sample now."""
        self.peak_bytes = max(self.peak_bytes, tree_rss_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> PeakRSS:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    @property
    def peak_gib(self) -> float:
        return round(self.peak_bytes / GiB, 3)
