"""Every process a test's subprocess started, recorded while it runs (for "nothing left behind" checks)."""

from __future__ import annotations

import subprocess
import time

import psutil


class Tree:
    """Every process ever seen below ``proc`` (pid + start time), recorded while it runs."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.root = psutil.Process(proc.pid)
        self.seen: dict[int, float] = {}

    def record(self) -> None:
        try:
            for c in self.root.children(recursive=True):
                self.seen.setdefault(c.pid, c.create_time())
        except psutil.NoSuchProcess:
            pass

    def alive(self) -> list[int]:
        out = []
        for pid, t in self.seen.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - t) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def wait_gone(self, timeout: float) -> list[int]:
        deadline = time.time() + timeout
        while self.alive() and time.time() < deadline:
            time.sleep(0.1)
        return self.alive()

    def cleanup(self) -> None:  # never leave an engine behind, even when an assert failed
        for pid in self.alive():
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def names(tree: Tree) -> dict[int, str]:
    """pid -> command line (or name) of the recorded processes still alive."""
    out = {}
    for pid in tree.alive():
        try:
            p = psutil.Process(pid)
            out[pid] = " ".join(p.cmdline() or [p.name()])
        except psutil.NoSuchProcess:
            pass
    return out


def engine_started(tree: Tree) -> bool:
    """True once a vLLM engine core runs among the recorded processes."""
    return any("EngineCore" in n for n in names(tree).values())
