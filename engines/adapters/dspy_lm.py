"""``EngineDSPyLM``: a ``dspy.BaseLM`` that runs DSPy programs on our engines.

DSPy calls its LM once per prediction, from many threads in ``dspy.Evaluate``
and the optimizers. Every call here becomes ``n`` ``GenRequest``s submitted to
a ``RequestCoalescer``, so concurrent predictions reach the engine as one
batched ``generate`` call (the engine is only touched by the coalescer's
worker thread).

Contract (DSPy 3.x, checked against dspy 3.4's ``BaseLM``): a subclass
implements ``forward(prompt=None, messages=None, **kwargs)`` and returns an
OpenAI chat-completion-shaped object (``choices[i].message.content``,
``usage``, ``model``); DSPy reads it with attribute or key access. DSPy 3.4
marks this subclass interface deprecated (a ``DeprecationWarning`` per call
site) and plans to replace it in 3.5 with engine objects; the project pins
``dspy<3.5`` until the adapter moves to that interface.

Mapping of DSPy's keyword arguments:

* ``temperature``, ``max_tokens`` (or ``max_completion_tokens``), ``top_p``,
  ``stop`` -> ``SamplingConfig``;
* ``n`` -> ``n`` requests in the same submission (one batch);
* ``seed`` (default: the adapter's seed) and ``rollout_id`` -> each sample's
  seed is ``derive_seed(seed, rollout_id, i)``: samples of one call differ,
  rollouts differ, and a repeated call is reproducible (and hits our cache);
* ``cache``, ``num_retries``, ``response_format`` and other provider options
  are ignored: caching is ``engines.cache.CachedEngine``'s job (DSPy's own
  cache is off for this class), retries the engine's.

A request that fails on its own raises ``GenerationFailedError`` in the
calling thread only; DSPy then treats that prediction as failed.

``lm.counters`` (``LMCounters``) counts what this LM asked for: DSPy calls,
requests, cache hits, tokens and errors. Copies made by DSPy (``lm.copy``)
share it, so one LM's role in a run (task model, prompt / reflection model)
is accounted separately even when both roles share one engine.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from engines.adapters.common import adopt_coalescer, chat_messages, derive_seed, offline_library_env

offline_library_env()

import dspy  # noqa: E402  (after the environment defaults)

from engines.base import Engine, GenRequest, SamplingConfig  # noqa: E402
from engines.coalescer import CoalescerConfig, GenerationFailedError, RequestCoalescer  # noqa: E402
from engines.errors import RequestError  # noqa: E402

#: DSPy keyword arguments the adapter reads; any other is ignored.
HANDLED_KWARGS = ("temperature", "max_tokens", "max_completion_tokens", "top_p", "stop", "n", "seed", "rollout_id")


class _AttrDict(dict):
    """A dict whose keys read as attributes too (DSPy and users use both)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _attr(obj: Any) -> Any:
    if isinstance(obj, dict):
        return _AttrDict({k: _attr(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [_attr(v) for v in obj]
    return obj


class LMCounters:
    """Thread-safe counts of one LM's requests (shared by its DSPy copies).

    ``prompt_tokens`` / ``completion_tokens`` count backend work only (not
    cache hits or in-batch duplicates), as ``engines.base.Usage`` does;
    ``wall_s`` sums the calls' wall time (concurrent calls overlap).
    """

    FIELDS = ("calls", "requests", "cache_hits", "prompt_tokens", "completion_tokens", "errors", "wall_s")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.FIELDS, 0)
        self._values["wall_s"] = 0.0

    def add(self, results: list, wall_s: float, *, failed: int = 0) -> None:
        """Counts one call: its results (``GenResult``s), or ``failed`` requests when the engine raised."""
        with self._lock:
            v = self._values
            v["calls"] += 1
            v["requests"] += len(results) + failed
            v["errors"] += failed + sum(1 for r in results if not r.ok)
            v["cache_hits"] += sum(1 for r in results if r.cached)
            done = [r for r in results if not r.cached and not r.deduplicated]
            v["prompt_tokens"] += sum(r.prompt_tokens for r in done)
            v["completion_tokens"] += sum(r.completion_tokens for r in done)
            v["wall_s"] += wall_s

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            d = dict(self._values)
        d["wall_s"] = round(d["wall_s"], 3)
        return d


class EngineDSPyLM(dspy.BaseLM):
    """A DSPy LM over one of our engines (through a request coalescer).

    Args:
        engine: an ``Engine`` (a private coalescer is created and closed with
            this LM) or a ``RequestCoalescer`` to share with other adapters.
        model: the name DSPy records in its history (default ``"mtg/<spec>"``).
        temperature: default sampling temperature.
        max_tokens: default completion budget.
        seed: base seed of every request (see the module docstring).
        coalescer_config: batching window/size of a private coalescer.
        **kwargs: further default request kwargs kept in ``self.kwargs``.
    """

    def __init__(
        self,
        engine: Engine | RequestCoalescer,
        *,
        model: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int = 0,
        coalescer_config: CoalescerConfig | None = None,
        **kwargs: Any,
    ) -> None:
        self.coalescer, self._owns_coalescer, spec = adopt_coalescer(engine, coalescer_config)
        super().__init__(
            model=model or f"mtg/{spec}",
            model_type="chat",
            temperature=temperature,
            max_tokens=max_tokens,
            cache=False,
            num_retries=0,
            **kwargs,
        )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        self.counters = LMCounters()

    # -- request building ---------------------------------------------------
    def build_requests(self, prompt: str | None = None, messages: list | None = None, **kwargs: Any) -> list[GenRequest]:
        """The ``n`` requests one DSPy call stands for (merged with ``self.kwargs``)."""
        merged = {**self.kwargs, **{k: v for k, v in kwargs.items() if v is not None}}
        if messages is None:
            if prompt is None:
                raise RequestError("a DSPy LM call needs prompt or messages")
            messages = [{"role": "user", "content": prompt}]
        msgs = chat_messages(messages)
        n = merged.get("n") or 1
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise RequestError(f"n must be an integer >= 1, got {n!r}")
        stop = merged.get("stop") or ()
        max_tokens = merged.get("max_tokens") or merged.get("max_completion_tokens") or 512
        temperature = merged.get("temperature")
        base_seed = merged.get("seed", self.seed)
        rollout = merged.get("rollout_id")
        try:
            base = SamplingConfig(
                temperature=0.0 if temperature is None else float(temperature),
                top_p=float(merged.get("top_p") or 1.0),
                max_tokens=int(max_tokens),
                stop=(stop,) if isinstance(stop, str) else tuple(stop),
            )
        except ValueError as e:
            raise RequestError(f"bad sampling setting from DSPy: {e}") from e
        rid = self.coalescer.next_id("dspy")
        return [
            GenRequest(messages=msgs, sampling=base.replace(seed=derive_seed(base_seed, rollout, i)), id=f"{rid}.{i}")
            for i in range(n)
        ]

    # -- DSPy contract -------------------------------------------------------
    def forward(self, prompt: str | None = None, messages: list | None = None, **kwargs: Any) -> Any:
        """One DSPy LM call: an OpenAI chat-completion-shaped response with ``n`` choices.

        Raises:
            GenerationFailedError: one of the ``n`` requests came back with an error.
            EngineError: the engine failed as a whole.
        """
        requests = self.build_requests(prompt, messages, **kwargs)
        t0 = time.perf_counter()
        try:
            results = self.coalescer.generate(requests)
        except Exception:
            self.counters.add([], time.perf_counter() - t0, failed=len(requests))
            raise
        self.counters.add(results, time.perf_counter() - t0)
        for r in results:
            if not r.ok:
                raise GenerationFailedError(r)
        choices = [
            {
                "index": i,
                "finish_reason": "length" if r.finish_reason == "length" else "stop",
                "message": {"role": "assistant", "content": r.text},
            }
            for i, r in enumerate(results)
        ]
        pt = results[0].prompt_tokens
        ct = sum(r.completion_tokens for r in results)
        return _attr(
            {
                "id": requests[0].id,
                "object": "chat.completion",
                "model": self.model,
                "choices": choices,
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
            }
        )

    async def aforward(self, prompt: str | None = None, messages: list | None = None, **kwargs: Any) -> Any:
        """Async ``forward``: runs it in a worker thread (the coalescer batches across threads)."""
        return await asyncio.to_thread(self.forward, prompt, messages, **kwargs)

    def dump_state(self) -> dict[str, Any]:
        # The engine is a live object: saved programs record only the name.
        return {"model": self.model, "seed": self.seed}

    def close(self) -> None:
        """Closes a private coalescer (not the engine, which the caller owns)."""
        if self._owns_coalescer:
            self.coalescer.close()
