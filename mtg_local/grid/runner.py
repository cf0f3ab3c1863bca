"""Runs grid cells concurrently, each a whole run (own run dir, lock, checkpoint, results), on one engine.

A cell is a run of ``mtg eval``/``train``/``baseline``: ``GridCell.execute``
calls the command's run function with ``engine=`` (built by
``mtg_local.commands.grid``, which knows the commands; this module does
not). Every cell gets its own ``EngineView`` of the shared engine, so its
usage counts only its own requests, and the run function wraps that view in
the run's own generation cache as it would wrap a private engine. Each cell
runs in its own thread, at most ``max_concurrent`` at once; each thread
makes the run's usual one ``generate()`` per phase, and the shared engine
(vLLM's async engine, one OpenAI concurrency limit, or a coalescer) batches
the phases of all running cells together.

Cells whose results.json says "complete" are skipped. A cell that fails is
recorded and the others go on.

Order: a cell may wait for others (``GridCell.after``: a transfer cell waits
for the run whose learned prompts it applies). It starts once every one of
them is complete; a source that ends failed, interrupted or not run means the
cell never starts and is recorded "not_run" with the reason. A source that
is not a cell of this call (another engine's cell) must already be complete
when the cell's turn comes.

Stopping: one ``StopFlag`` (set by the command's SIGUSR1 / SIGTERM / SIGINT
handler) reaches every cell. No new cell starts, and every running cell's
engine call in flight is abandoned at once (its view polls the flag; the
shared engine cancels that cell's requests where it can): SLURM kills a job
``KillWait`` (~30 s) after SIGTERM, which a long phase would outlast. Each
cell then ends "interrupted" by its run function's own path -- the same
flag is handed to ``execute``, so an engine error caused by the signal
(vLLM's engine core, in the same process group, dies of it first) is
recognised as the interruption it is (``runs.interrupt.interruption``).
Train cells keep the checkpoint of their last completed stage; every cell's
finished generations are in its cache, so a rerun replays them for free.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from engines.base import Engine
from engines.errors import UserError
from engines.shared import EngineView
from mtg_local.grid.order import dependency_order
from mtg_local.meta.outer_loop import Preempted
from mtg_local.runs.health import DEGRADED_SHARE, assess
from mtg_local.runs.interrupt import Interrupted, StopFlag, signal_name
from mtg_local.runs.lock import RunDirLock
from mtg_local.runs.run_dir import RunDir, read_json


class CellStopped(Preempted):
    """A stop was requested; the cell's engine call was refused or abandoned.

    A ``Preempted`` (an ``Interrupted``): the run records status "interrupted";
    a train cell keeps its last checkpoint, and every cell's cache replays what
    it generated on rerun.
    """


class CellRef(NamedTuple):
    """A cell another one waits for: its name and run dir."""

    name: str
    run_dir: Path


@dataclasses.dataclass(frozen=True)
class GridCell:
    """One run of the grid.

    Attributes:
        name: ``task/method/engine`` label (the caller tag of its requests).
        run_dir: the run's directory.
        kind: "eval", "train" or "baseline".
        execute: ``execute(engine, stop) -> results`` runs the cell on ``engine``
            (its view of the shared engine); ``stop`` is the grid's stop flag,
            which the run function must use as its own. A cell with an
            ``optimizer_spec`` is called ``execute(engine, stop, optimizer_engine=view)``.
        spec: the engine spec the cell records (its grid entry's, e.g. ``vllm:bundled``).
        checkpoints: True if the run checkpoints (train): a rerun resumes it.
        optimizer_spec: another engine for the cell's optimizer phases
            (``--optimizer-engine``); the grid shares one engine per such spec.
        after: the cells that must be complete before this one starts (its sources).
    """

    name: str
    run_dir: Path
    kind: str
    execute: Callable[..., dict[str, Any]]
    spec: str = ""
    checkpoints: bool = False
    optimizer_spec: str | None = None
    after: tuple[CellRef, ...] = ()


@dataclasses.dataclass
class CellOutcome:
    """What happened to one cell: "complete", "skipped", "failed", "interrupted", "not_started" or
    "not_run" (a source it waits for did not complete; ``error`` says which and why)."""

    name: str
    run_dir: str
    status: str
    accuracy: float | None = None
    wall_s: float = 0.0
    error: str | None = None
    usage: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class GridReport:
    """The outcome of ``run_cells``: per cell, and the shared engine's totals."""

    cells: list[CellOutcome]
    wall_s: float
    engine: dict[str, Any]
    stopped: bool

    @property
    def failed(self) -> list[CellOutcome]:
        return [c for c in self.cells if c.status == "failed"]

    @property
    def not_run(self) -> list[CellOutcome]:
        return [c for c in self.cells if c.status == "not_run"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells:
            out[c.status] = out.get(c.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 3), "stopped": self.stopped, "counts": self.counts(),
                "engine": self.engine, "cells": [c.to_dict() for c in self.cells]}


def is_complete(run_dir: str | Path) -> bool:
    """True if ``RUN_DIR/results.json`` exists and says status "complete"."""
    rd = RunDir(run_dir)
    if not rd.results_path.exists():
        return False
    try:
        return read_json(rd.results_path).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


def engine_figures(engine: Engine, wall_s: float) -> dict[str, Any]:
    """Shared-engine totals: generated tokens, tok/s over ``wall_s``, running batch when known."""
    u = engine.usage
    out: dict[str, Any] = {
        "spec": engine.spec,
        "dtype": getattr(engine, "dtype", None),
        "requests": u.requests,
        "completion_tokens": u.completion_tokens,
        "prompt_tokens": u.prompt_tokens,
        "gen_tok_per_s": round(u.completion_tokens / wall_s, 3) if wall_s > 0 else None,
    }
    batch = getattr(engine, "batch_stats", None)
    if callable(batch):
        out["running_batch"] = batch()
    return out


def _why(results: dict[str, Any]) -> str:
    """Why a finished run is not complete, in ``runs.health``'s words (what failed, the first error)."""
    health = assess(results.get("engine_usage") or {})
    if health.ok:
        return f"run {results.get('status')}: {results.get('error') or 'no error recorded'}"
    what = "every request failed" if health.status == "failed" else f"more than {DEGRADED_SHARE:.0%} of the requests failed"
    first = (health.first_error or "unknown error").replace("\n", " ")[:300]
    return f"run {health.status}: {what} ({health.errors} of {health.requests}); first error: {first}"


def _accuracy(results: dict[str, Any] | None) -> float | None:
    acc = (results or {}).get("test_accuracy") or (results or {}).get("accuracy")
    return acc.get("mean") if isinstance(acc, dict) else None


class _Order:
    """Which cells of one ``run_cells`` call wait for which (sources outside the call are read from disk)."""

    def __init__(self, cells: Sequence[GridCell]) -> None:
        names = [c.name for c in cells]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UserError(f"two grid cells are named {dup}")
        self.cells = cells
        by_dir = {Path(c.run_dir): i for i, c in enumerate(cells)}
        self.inside = {i: [by_dir[Path(r.run_dir)] for r in c.after if Path(r.run_dir) in by_dir]
                       for i, c in enumerate(cells)}
        dependency_order({cells[i].name: [cells[j].name for j in deps] for i, deps in self.inside.items()})
        self._by_dir = by_dir

    def blocked(self, i: int, outcomes: dict[int, CellOutcome]) -> str | None:
        """Why cell ``i`` cannot start (a source that is not complete), or None."""
        for ref in self.cells[i].after:
            j = self._by_dir.get(Path(ref.run_dir))
            if j is not None:
                o = outcomes[j]
                if o.status not in ("complete", "skipped"):
                    return f"source {ref.name} ended {o.status.replace('_', ' ')}" + (f" ({o.error})" if o.error else "")
            elif not is_complete(ref.run_dir):
                return f"source {ref.name} is not complete ({_state(ref.run_dir)})"
        return None


def _state(run_dir: str | Path) -> str:
    rd = RunDir(run_dir)
    if not rd.results_path.exists():
        return f"no results.json in {rd.path}"
    try:
        return f"{rd.path}: status {read_json(rd.results_path).get('status')!r}"
    except (OSError, ValueError, AttributeError):
        return f"{rd.path}: results.json unreadable"


def run_cells(
    cells: Sequence[GridCell],
    engine: Engine,
    *,
    max_concurrent: int = 4,
    stop: StopFlag | None = None,
    log: Callable[[str], None] = print,
    optimizer_engines: dict[str, Engine] | None = None,
) -> GridReport:
    """Runs ``cells`` on the shared ``engine``, at most ``max_concurrent`` at once.

    Args:
        cells: the grid's cells (started in this order; a cell that waits for
            others starts when they are complete, see the module docstring).
        engine: the shared engine; it must serve concurrent calls (see
            ``engines.shared.shareable``). Not closed here.
        optimizer_engines: ``optimizer_spec`` -> the shared engine of the
            cells with that optimizer spec (one per spec, not one per cell). Not closed here.
        max_concurrent: most cells running at once (>= 1; 1 = one after another).
        stop: set to stop (see the module docstring); polled, never cleared.
            Each cell's ``execute`` receives it.
        log: receives one progress line per cell event and engine totals.

    Returns:
        Every cell's outcome (in ``cells`` order) and the engine's totals.

    Raises:
        UserError: two cells share a name, or cells wait for each other in a cycle.
    """
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    order = _Order(cells)
    stop = stop if stop is not None else StopFlag()
    t0 = time.perf_counter()
    outcomes: dict[int, CellOutcome] = {}
    pending: list[int] = []
    for i, cell in enumerate(cells):
        if is_complete(cell.run_dir):
            outcomes[i] = CellOutcome(cell.name, str(cell.run_dir), "skipped")
            log(f"[grid] skip   {cell.name}: results.json is complete")
        else:
            pending.append(i)
    waiting = [i for i in pending if cells[i].after]  # started (or not) by release() below
    for i in waiting:
        if order.inside[i]:
            log(f"[grid] wait   {cells[i].name}: after {', '.join(r.name for r in cells[i].after)}")
    running = [0]
    lock = threading.Lock()

    def progress(cell: GridCell, what: str) -> None:
        fig = engine_figures(engine, time.perf_counter() - t0)
        batch = fig.get("running_batch", {}).get("mean_running")
        tail = f" | engine {fig['completion_tokens']} tok, {fig['gen_tok_per_s']} tok/s"
        tail += f", mean running batch {batch}" if batch is not None else ""
        with lock:
            log(f"[grid] {what} ({running[0]} running){tail}")

    def before_call() -> None:
        if stop:
            raise CellStopped(f"stopped by {signal_name(stop.signal)}; rerun the grid to continue", stop.signal)

    def one(i: int) -> CellOutcome:
        cell = cells[i]
        if stop:
            return CellOutcome(cell.name, str(cell.run_dir), "not_started")
        c0 = time.perf_counter()
        with lock:
            running[0] += 1
        progress(cell, f"start  {cell.name}")
        view = EngineView(engine, tag=cell.name, spec=cell.spec or None, before_call=before_call, watch=True)
        extra: dict[str, Any] = {}
        if cell.optimizer_spec:
            shared_opt = (optimizer_engines or {})[cell.optimizer_spec]
            extra["optimizer_engine"] = EngineView(shared_opt, tag=cell.name, spec=cell.optimizer_spec,
                                                   before_call=before_call, watch=True)
        try:
            with RunDirLock(cell.run_dir):
                RunDir(cell.run_dir).create().log_event("grid_cell", shared_engine=engine.spec, command=cell.kind)
                results = cell.execute(view, stop, **extra)
        except Interrupted as e:  # CellStopped, or the run's own interruption (engine died of the signal)
            out = CellOutcome(cell.name, str(cell.run_dir), "interrupted", wall_s=time.perf_counter() - c0,
                              error=str(e))
        except Exception as e:  # noqa: BLE001 - one cell's failure is its own; the grid goes on
            out = CellOutcome(cell.name, str(cell.run_dir), "failed", wall_s=time.perf_counter() - c0,
                              error=f"{type(e).__name__}: {e}")
        else:
            status = results.get("status", "complete")
            out = CellOutcome(cell.name, str(cell.run_dir), "complete" if status == "complete" else "failed",
                              accuracy=_accuracy(results), wall_s=time.perf_counter() - c0,
                              error=None if status == "complete" else _why(results),
                              usage=results.get("engine_usage"))
        with lock:
            running[0] -= 1
        acc = f" accuracy={out.accuracy:.3f}" if out.accuracy is not None else ""
        err = f" error={out.error}" if out.error else ""
        word = "done" if out.status == "complete" else out.status
        progress(cell, f"{word:<6} {cell.name}{acc} wall={out.wall_s:.1f}s{err}")
        return out

    with concurrent.futures.ThreadPoolExecutor(max_concurrent, thread_name_prefix="mtg-grid-cell") as pool:
        futures = {pool.submit(one, i): i for i in pending if not cells[i].after}

        def release() -> None:
            """Starts or settles each waiting cell whose sources in this call have all ended."""
            settled = True
            while settled:  # a cell settled "not_run" may settle the cells that wait for it
                settled = False
                for i in [i for i in waiting if all(j in outcomes for j in order.inside[i])]:
                    waiting.remove(i)
                    cell = cells[i]
                    why = None if stop else order.blocked(i, outcomes)
                    if stop or why:
                        outcomes[i] = CellOutcome(cell.name, str(cell.run_dir), "not_started" if stop else "not_run",
                                                  error=why)
                        settled = True
                        if why:
                            log(f"[grid] not run {cell.name}: {why}")
                    else:
                        futures[pool.submit(one, i)] = i

        release()
        remaining = set(futures)
        try:
            while remaining:
                # A timeout keeps the main thread responsive to signal handlers.
                done, remaining = concurrent.futures.wait(remaining, timeout=0.2)
                for f in done:
                    outcomes[futures[f]] = f.result()
                if done and waiting:
                    started = set(futures)
                    release()
                    remaining |= set(futures) - started
        except KeyboardInterrupt:
            stop.set(2)  # SIGINT: stop the cells like SIGTERM, then let the caller exit 130
            for f in concurrent.futures.as_completed(remaining):
                outcomes[futures[f]] = f.result()
            raise
    for i in waiting:  # none: release() settles every waiting cell once its sources end (every cell gets an outcome)
        outcomes[i] = CellOutcome(cells[i].name, str(cells[i].run_dir), "not_started")
    wall = time.perf_counter() - t0
    report = GridReport([outcomes[i] for i in range(len(cells))], wall, engine_figures(engine, wall), bool(stop))
    log(f"[grid] {report.counts()} in {wall:.1f}s; engine: {report.engine}")
    return report
