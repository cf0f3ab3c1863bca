"""One asyncio event loop in a daemon thread, callable from any thread.

Engines that are asyncio inside (the async vLLM engine, the OpenAI engine)
keep one such loop for their lifetime, so every caller's coroutines run on
the same loop: requests of concurrent ``generate()`` calls share one
scheduler (vLLM's running batch) or one concurrency limit (OpenAI), with no
barrier between callers. Works whether or not the caller runs a loop itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class LoopClosedError(RuntimeError):
    """A coroutine was submitted to a closed loop thread."""


class BackgroundLoop:
    """A running event loop in its own daemon thread.

    Args:
        name: the thread's name (shows in stack dumps).
    """

    def __init__(self, name: str = "mtg-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._closed = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs ``coro`` on the loop and blocks the calling thread until it is done.

        Raises:
            LoopClosedError: the loop is closed.
            RuntimeError: called from the loop's own thread (it would deadlock).
        """
        if self._closed:
            coro.close()
            raise LoopClosedError("the engine's event loop is closed")
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("BackgroundLoop.run called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Cancels what is still running, stops the loop and joins the thread. Safe twice."""
        if self._closed:
            return
        self._closed = True

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._loop.is_running() and not self.in_loop_thread():
            try:
                asyncio.run_coroutine_threadsafe(_cancel_all(), self._loop).result(timeout)
            except Exception:  # noqa: BLE001 - closing: nothing to report to
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._loop.is_running():
            self._loop.close()


class CallerTasks:
    """The batches in flight on one loop, by caller tag, so a caller's can be cancelled from another thread.

    An engine wraps each batch's coroutine in ``track(tag)`` (on the loop) and
    implements ``cancel(tag)`` with ``cancel(loop, tag)``: the batch's task is
    cancelled, which cancels every request it gathers (vLLM aborts them), and
    the caller's blocked ``generate()`` raises.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}  # touched on the loop thread only

    @contextlib.contextmanager
    def track(self, tag: str) -> Iterator[None]:
        """Records the current task under ``tag`` while inside (use in a coroutine on the loop)."""
        me = asyncio.current_task()
        assert me is not None, "CallerTasks.track outside a task"
        self._tasks.setdefault(tag, set()).add(me)
        try:
            yield
        finally:
            self._tasks[tag].discard(me)

    def cancel(self, loop: BackgroundLoop | None, tag: str) -> int:
        """Cancels ``tag``'s batches in flight; returns how many. Safe from any thread but the loop's."""
        if loop is None:
            return 0

        async def _cancel() -> int:
            tasks = list(self._tasks.get(tag, ()))
            for t in tasks:
                t.cancel()
            return len(tasks)

        try:
            return loop.run(_cancel(), timeout=30)
        except Exception:  # noqa: BLE001 - loop closed or busy: nothing left to cancel
            return 0
