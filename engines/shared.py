"""One engine object, many concurrent callers (the runs of ``mtg grid``).

* ``EngineView`` is what one caller (one run) holds: it forwards each
  ``generate()`` to the shared engine unchanged -- one call per phase, so the
  batch contract and the per-run call counts stay what they are alone -- and
  keeps **its own** usage counters, so a run's ``engine.usage`` (and the
  usage in its results.json) counts only its own requests, whoever else uses
  the shared engine. A view can carry a caller tag (engines that record
  per-request events file them under it) and a ``before_call`` hook, which
  the grid runner uses to stop a run: with ``watch=True`` the hook is also
  polled while a call is in flight, and when it raises the call is abandoned
  at once (the shared engine cancels that caller's requests where it can,
  ``cancel(tag)``) -- a stop must not wait for a long phase to finish.
* ``CoalescedEngine`` makes an engine that must be called from one thread at
  a time (``vllm.LLM``, HF ``generate``) shareable: concurrent calls are
  merged into one backend call by ``engines.coalescer.RequestCoalescer``.
* ``shareable(engine)`` picks: engines whose ``serves_concurrent_calls`` is
  true (async vLLM, OpenAI, fake) are shared as they are; others are
  coalesced.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from engines.base import Engine, GenRequest, GenResult
from engines.coalescer import CoalescerConfig, RequestCoalescer


def serves_concurrent_calls(engine: Engine) -> bool:
    """True if ``engine.generate`` may be called from several threads at once without barriers."""
    return bool(getattr(engine, "serves_concurrent_calls", False))


class EngineView(Engine):
    """One caller's handle on a shared engine, with its own usage counters.

    Args:
        inner: the shared engine (not closed by the view).
        tag: the caller's name, passed to engines that accept ``tag=``.
        spec: the spec the caller records (default: the inner engine's).
        before_call: called before every ``generate`` of this view; may raise
            to refuse the call (e.g. a stop was requested).
        watch: also poll ``before_call`` every ``poll_s`` while a call is in
            flight; when it raises, the call is abandoned: the inner engine's
            ``cancel(tag)`` (if it has one) drops this caller's requests, and
            the exception propagates to the caller at once.
        poll_s: seconds between polls of a watched call.

    Attributes the view does not define (``max_model_len``, ``tokenizer``,
    ``prefix_cache_stats``...) are read from the shared engine.
    """

    def __init__(
        self,
        inner: Engine,
        *,
        tag: str = "",
        spec: str | None = None,
        before_call: Callable[[], None] | None = None,
        watch: bool = False,
        poll_s: float = 0.05,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.tag = tag
        self.spec = spec or inner.spec
        self.capabilities = inner.capabilities
        self.before_call = before_call
        self.watch = watch and before_call is not None
        self.poll_s = poll_s
        self._identity = inner.identity()

    def identity(self) -> dict[str, Any]:
        return self._identity

    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        if self.before_call is not None:
            self.before_call()
        if self.tag and getattr(self.inner, "accepts_caller_tag", False):
            kwargs.setdefault("tag", self.tag)
        if not self.watch:
            return self.inner.generate(requests, **kwargs)
        return self._watched(requests, kwargs)

    def _watched(self, requests: list[GenRequest], kwargs: dict[str, Any]) -> list[GenResult]:
        """The inner call in a helper thread, abandoned as soon as ``before_call`` raises."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                box["out"] = self.inner.generate(requests, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["exc"] = e
            finally:
                done.set()

        # A daemon thread: an abandoned call must not keep the process alive at exit.
        threading.Thread(target=call, name=f"mtg-view-{self.tag or 'call'}", daemon=True).start()
        while not done.wait(self.poll_s):
            try:
                self.before_call()  # type: ignore[misc]
            except BaseException:
                cancel = getattr(self.inner, "cancel", None)
                if self.tag and callable(cancel):
                    try:
                        cancel(self.tag)
                    except Exception:  # noqa: BLE001 - best effort: the stop goes on regardless
                        pass
                raise
        if "exc" in box:
            raise box["exc"]
        return box["out"]

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the view lacks; guard against recursion
        # before __init__ has set ``inner``.
        if name.startswith("__") or "inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    def close(self) -> None:
        """Does nothing: the shared engine belongs to whoever created it."""

    def __repr__(self) -> str:
        return f"EngineView(tag={self.tag!r}, inner={self.inner!r})"


class CoalescedEngine(Engine):
    """A thread-safe front of a one-caller-at-a-time engine; concurrent calls share backend calls.

    Each ``generate()`` is submitted whole to a ``RequestCoalescer`` whose
    worker merges what several threads submitted within ``window_s`` into
    one ``inner.generate``. Owns ``inner``: ``close()`` closes both.
    """

    serves_concurrent_calls = True

    def __init__(self, inner: Engine, config: CoalescerConfig | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.spec = inner.spec
        self.capabilities = inner.capabilities
        self._identity = inner.identity()
        self.coalescer = RequestCoalescer(inner, config or CoalescerConfig(), name="mtg-shared-engine")

    def identity(self) -> dict[str, Any]:
        return self._identity

    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        kwargs.pop("tag", None)
        kwargs.pop("progress", None)  # a progress bar of a merged batch would mislead
        if kwargs:
            raise TypeError(f"unknown generate() options for a coalesced engine: {sorted(kwargs)}")
        return self.coalescer.generate(requests)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    def probe(self) -> None:
        self.inner.probe()

    def close(self) -> None:
        self.coalescer.close()
        self.inner.close()


def shareable(engine: Engine, config: CoalescerConfig | None = None) -> Engine:
    """``engine`` itself if it serves concurrent calls, else a ``CoalescedEngine`` around it."""
    return engine if serves_concurrent_calls(engine) else CoalescedEngine(engine, config)

