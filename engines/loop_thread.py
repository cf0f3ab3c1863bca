"""One asyncio event loop in a daemon thread, callable from any thread.

Engines that are asyncio inside (the async vLLM engine, the OpenAI engine)
keep one such loop for their lifetime, so every caller's coroutines run on
the same loop: requests of concurrent ``generate()`` calls share one
scheduler (vLLM's running batch) or one concurrency limit (OpenAI), with no
barrier between callers. Works whether or not the caller runs a loop itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
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
