"""Turns many threads' one-at-a-time requests into few batched engine calls.

Libraries such as DSPy and TextGrad call a language model once per item,
often from a thread pool. ``RequestCoalescer`` sits between them and an
``Engine``: each thread submits its request(s) and blocks on a future; one
worker thread gathers what is pending (for up to ``window_s`` after the first
arrival, or until ``max_batch`` requests), calls ``engine.generate`` **once**
for the whole batch and hands each caller its own results.

Only the worker thread ever touches the engine (vLLM's ``LLM`` is not
thread-safe). A request that fails on its own comes back as an error
``GenResult`` to its caller only (``generate_one(raise_on_error=True)`` turns
it into ``GenerationFailedError``); an exception of the backend as a whole
reaches only the callers whose requests were in that batch. ``close()`` stops
the worker after the batch in flight; later submissions raise.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from engines.base import Engine, GenRequest, GenResult
from engines.errors import EngineError


class GenerationFailedError(EngineError):
    """One request came back with an error result (raised for its caller only)."""

    def __init__(self, result: GenResult) -> None:
        super().__init__(f"request {result.id!r} failed: {result.error}")
        self.result = result


class CoalescerClosedError(RuntimeError):
    """A request was submitted to a coalescer that is closed."""


@dataclasses.dataclass(frozen=True)
class CoalescerConfig:
    """How long and how much the worker gathers before one engine call.

    Attributes:
        window_s: seconds to wait after the first pending request for more
            (>= 0; 0 sends whatever is already queued at once).
        max_batch: the batch closes early at this many requests (>= 1). A
            single submission larger than this is still sent whole.
    """

    window_s: float = 0.02
    max_batch: int = 512

    def __post_init__(self) -> None:
        w = self.window_s
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0 <= w <= 10):
            raise ValueError(f"window_s must be a number of seconds in [0, 10], got {w!r}")
        m = self.max_batch
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {m!r}")


@dataclasses.dataclass
class _Submission:
    requests: list[GenRequest]
    future: Future


@dataclasses.dataclass
class CoalescerStats:
    """What the worker did: engine calls made and their sizes (in call order)."""

    batches: int = 0
    requests: int = 0
    batch_sizes: list[int] = dataclasses.field(default_factory=list)
    backend_failures: int = 0


_STOP = object()


class RequestCoalescer:
    """Thread-safe front of one engine; see the module docstring.

    Args:
        engine: the engine the worker thread calls (no one else should call
            it while the coalescer is open).
        config: batching window and size.
        name: the worker thread's name.
        **generate_kwargs: keyword options passed to every ``engine.generate``.
    """

    def __init__(
        self,
        engine: Engine,
        config: CoalescerConfig | None = None,
        *,
        name: str = "mtg-coalescer",
        **generate_kwargs: Any,
    ) -> None:
        self.engine = engine
        self.config = config or CoalescerConfig()
        self._kwargs = generate_kwargs
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._ids = itertools.count()
        self._stats = CoalescerStats()
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    # -- callers ------------------------------------------------------------
    def submit(self, requests: Sequence[GenRequest], /) -> Future:
        """Queues ``requests`` (kept together in one batch); returns a future of their results.

        The future's value is ``list[GenResult]`` in the order of ``requests``;
        it raises the backend's exception if the whole batch failed.

        Raises:
            CoalescerClosedError: the coalescer is closed.
            TypeError: an element is not a ``GenRequest``.
        """
        reqs = list(requests)
        for i, r in enumerate(reqs):
            if not isinstance(r, GenRequest):
                raise TypeError(f"requests[{i}] must be a GenRequest, got {type(r).__name__}")
        fut: Future = Future()
        if not reqs:
            fut.set_result([])
            return fut
        with self._lock:
            if self._closed:
                raise CoalescerClosedError("the request coalescer is closed")
            self._queue.put(_Submission(reqs, fut))
        return fut

    def generate(self, requests: Sequence[GenRequest], /, *, timeout: float | None = None) -> list[GenResult]:
        """Blocking ``submit``: the results of ``requests``, in order (error results included)."""
        return self.submit(requests).result(timeout)

    def generate_one(
        self, request: GenRequest, /, *, raise_on_error: bool = True, timeout: float | None = None
    ) -> GenResult:
        """One request's result; raises ``GenerationFailedError`` for an error result if asked."""
        (result,) = self.generate([request], timeout=timeout)
        if raise_on_error and not result.ok:
            raise GenerationFailedError(result)
        return result

    def next_id(self, prefix: str = "co") -> str:
        """A fresh request id (unique within this coalescer)."""
        return f"{prefix}-{next(self._ids)}"

    @property
    def stats(self) -> CoalescerStats:
        """A snapshot copy of the worker's counters."""
        with self._lock:
            s = self._stats
            return CoalescerStats(s.batches, s.requests, list(s.batch_sizes), s.backend_failures)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = 30.0) -> None:
        """Stops accepting requests, lets the worker finish what is queued, joins it.

        Safe to call twice. Does not close the engine (the caller owns it).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def __enter__(self) -> RequestCoalescer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RequestCoalescer(engine={self.engine!r}, config={self.config})"

    # -- worker -------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            size = len(first.requests)
            deadline = time.monotonic() + self.config.window_s
            while size < self.config.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True  # serve this batch, then stop
                    break
                batch.append(item)
                size += len(item.requests)
            self._serve(batch)
        # Anything queued after the stop marker cannot be served: fail it loudly.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and not item.future.done():
                item.future.set_exception(CoalescerClosedError("the request coalescer closed before serving this request"))

    def _serve(self, batch: list[_Submission]) -> None:
        live = [s for s in batch if s.future.set_running_or_notify_cancel()]
        if not live:
            return
        flat = [r for s in live for r in s.requests]
        try:
            results = self.engine.generate(flat, **self._kwargs)
        except BaseException as e:  # noqa: BLE001 - delivered to exactly these callers
            with self._lock:
                self._stats.batches += 1
                self._stats.requests += len(flat)
                self._stats.batch_sizes.append(len(flat))
                self._stats.backend_failures += 1
            for s in live:
                s.future.set_exception(e)
            if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: stop the worker too
                raise
            return
        with self._lock:
            self._stats.batches += 1
            self._stats.requests += len(flat)
            self._stats.batch_sizes.append(len(flat))
        pos = 0
        for s in live:
            n = len(s.requests)
            s.future.set_result(results[pos : pos + n])
            pos += n
