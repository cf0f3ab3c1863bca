"""Barrier-free schedule of the inner loop: every item advances as soon as its own request returns.

The phase schedule (``inner_loop.run_phases``) sends one phase of all items
as one ``engine.generate`` call, so every phase waits for its slowest request
while the batch drains to stragglers. Here each item ((question, seed) pair)
runs the same phase code on its own -- ``run_phases`` on a one-item list, in a
worker thread -- so an item sends its loss request the moment its own answer
is back. On an engine
that serves concurrent calls (``vllm-async:``: vLLM's scheduler adds each
request to the running batch as it arrives; OpenAI; fake) the running batch
stays full of whatever items are ready.

What stays the same: the requests (content, sampling, derived seeds), hence
at temperature 0 or with per-request seeds the outputs, and every rule of the
inner loop (errors, freezing, update validation, majority vote). The request
ids are the phase schedule's (``fwd-{i}``, ``loss-{t}-{i}``, ...).

Usage accounting: each worker calls the caller's engine through its own
``EngineView``, so the caller's engine counts every request once, as under
the phase schedule: ``requests``, token counts, ``cache_hits`` and
``errors`` are those of the same workload phase-batched -- except that
identical requests of one phase (``engines.dedup``: at temperature 0, e.g.
two seeds of one question whose answers agree) are no longer in one batch,
so they are generated each time (``deduplicated`` stays 0 and their tokens
are counted, as they are really spent). ``calls`` keeps its meaning,
``generate()`` calls that reached the backend; here that is one per item
per phase (up to N * (1 + 3T), not 1 + 3T), each of one request.

Engines that must be called from one thread at a time (``vllm:``, ``hf:``)
are refused up front (``require_concurrent_engine``): coalescing their
calls (``engines.shared.shareable``) would bring the barriers back, only
with timing-dependent batches. Use ``vllm-async:`` for vLLM.

Stopping: a stop (signal in the main thread, ``Interrupted`` from an engine
view such as the grid's, or any worker's exception) makes every other worker
refuse its next engine call; requests already sent finish (and are stored by
the run's cache, so a rerun replays them). The first real exception is
re-raised.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence

from engines.base import Engine
from engines.errors import UserError
from engines.registry import engine_class, parse_spec
from engines.shared import EngineView, serves_concurrent_calls
from mtg_local.inner_loop import InnerItem, InnerLoopConfig, Trajectory, run_phases
from mtg_local.runs import progress as progress_display
from mtg_local.tasks.base import Task

#: Most items in flight at once (threads mostly wait on the engine; the cap bounds thread count).
MAX_WORKERS = 256


class ItemCancelled(Exception):
    """Raised in a worker at its next engine call once the schedule is being stopped."""


class ScheduleError(UserError, ValueError):
    """Schedule "item" asked of an engine that cannot be called from several threads at once."""


def _refuse(spec: str, role: str) -> ScheduleError:
    backend, _, model = spec.partition(":")
    hint = f" (here: vllm-async:{model or 'bundled'})" if backend == "vllm" else ""
    return ScheduleError(
        f"schedule 'item' needs an engine that serves concurrent calls; the {role} {spec!r} does not. "
        f"Use a vllm-async: engine{hint} or an openai: one, or schedule 'phase'."
    )


def require_concurrent_engine(engine: Engine, role: str = "engine") -> None:
    """Raises ``ScheduleError`` naming the spec if ``engine`` does not serve concurrent calls."""
    if not serves_concurrent_calls(engine):
        raise _refuse(engine.spec or type(engine).__name__, role)


def require_concurrent_spec(spec: str, role: str = "engine") -> None:
    """Like ``require_concurrent_engine`` from a spec alone, before a model is loaded."""
    if not getattr(engine_class(parse_spec(spec)[0]), "serves_concurrent_calls", False):
        raise _refuse(spec, role)


def check_item_schedule(forward: Engine | str, optimizer: Engine | str | None = None) -> None:
    """The commands' up-front check: ``forward`` and ``optimizer`` (engines or specs) serve concurrent calls."""
    for what, role in ((forward, "forward engine"), (optimizer, "optimizer engine")):
        if isinstance(what, Engine):
            require_concurrent_engine(what, role)
        elif what:
            require_concurrent_spec(what, role)


def solution_optimization_by_item(
    task: Task,
    items: Sequence[InnerItem],
    *,
    forward_engine: Engine,
    optimizer_engine: Engine | None = None,
    config: InnerLoopConfig,
    progress: bool = False,
    max_workers: int = MAX_WORKERS,
) -> list[Trajectory]:
    """``solution_optimization`` with each item scheduled on its own; trajectories in item order.

    Args:
        task / items / forward_engine / optimizer_engine / config: as for
            ``solution_optimization`` (``config.schedule`` is ignored here).
        progress: an item-level tqdm bar (workers show none).
        max_workers: most items in flight at once (>= 1).

    Raises:
        ScheduleError: an engine does not serve concurrent calls.
        ValueError: ``max_workers`` < 1.
    """
    items = list(items)
    opt_engine = optimizer_engine or forward_engine
    require_concurrent_engine(forward_engine, "forward engine")
    if opt_engine is not forward_engine:
        require_concurrent_engine(opt_engine, "optimizer engine")
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if not items:
        return []
    cancel = threading.Event()

    def before_call() -> None:
        if cancel.is_set():
            raise ItemCancelled("the item schedule is stopping")

    def run_one(i: int) -> Trajectory:
        before_call()  # a queued item starts nothing once stopping
        fwd = EngineView(forward_engine, before_call=before_call)
        opt = fwd if opt_engine is forward_engine else EngineView(opt_engine, before_call=before_call)
        try:
            (traj,) = run_phases(task, [items[i]], forward_engine=fwd, optimizer_engine=opt, config=config,
                                 id_offset=i)
        except ItemCancelled:
            raise
        except BaseException:
            # Set here, not only when the main thread sees the failure: it may wake later than
            # the others' requests in flight return, and they must not start their next call.
            cancel.set()
            raise
        return traj

    bar = progress_display.bar(total=len(items), desc="inner loop, by item", unit="item", enabled=progress, leave=False)
    pool = concurrent.futures.ThreadPoolExecutor(min(max_workers, len(items)), thread_name_prefix="mtg-item")
    futures = {pool.submit(run_one, i): i for i in range(len(items))}
    out: list[Trajectory | None] = [None] * len(items)
    first_error: BaseException | None = None
    remaining = set(futures)
    try:
        while remaining:
            # A timeout keeps the main thread responsive to signal handlers (Interrupted).
            done, remaining = concurrent.futures.wait(
                remaining, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for f in done:
                exc = f.exception()
                if exc is None:
                    out[futures[f]] = f.result()
                    bar.update()
                elif not isinstance(exc, ItemCancelled) and first_error is None:
                    first_error = exc
                    cancel.set()  # the others stop at their next engine call
    except BaseException:
        # A signal (Interrupted, KeyboardInterrupt) in this thread: do not wait for requests in
        # flight (a stop must be quick); the workers refuse their next call and end on their own.
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        raise
    pool.shutdown(wait=True)
    bar.close()
    if first_error is not None:
        raise first_error
    return out  # type: ignore[return-value]
