"""vLLM's async engine (``AsyncLLM``) behind the batch contract, for many concurrent callers.

``vllm-async:MODEL``. One ``AsyncLLM`` is driven from one event loop in a
background thread (``engines.loop_thread.BackgroundLoop``). ``generate(list)``
may be called from any number of threads at once: each call renders its
requests (same token ids, ``SamplingParams`` and over-long-prompt errors as
``vllm:MODEL``, via ``engines.vllm_engine.build_vllm_inputs``), submits all
of them to the loop and blocks until they are all done. vLLM's scheduler
adds every request to its running batch as it arrives, so one caller's
phase never waits for another caller's phase to drain (``vllm.LLM.generate``
could only run one caller's batch at a time). Configuration and CPU defaults
are ``VLLMConfig``'s, plus ``data_parallel_size``; the usage context too
(vLLM's ``LLM_CLASS``), so the scheduler's limits (``max_num_seqs``,
``max_num_batched_tokens``) are the ``vllm:`` engine's on the same hardware.

Events (for proving overlap and for throughput): per request, the caller
tag, ``submitted`` (wall clock when handed to ``AsyncLLM``), ``first_token``
(``arrival_time + first_token_latency`` from vLLM's request metrics) and
``finished`` (wall clock when its final output arrived); see ``events()``.
Running batch: a custom vLLM stat logger records
``SchedulerStats.num_running_reqs`` of every engine-core output batch
(about one per scheduler step while there is work); ``batch_stats()`` gives
their mean and max -- steps of an idle engine are not sampled, so the mean
is over busy steps.

Cancelling: ``cancel(tag)`` aborts every request of that caller still in
flight (vLLM drops them from its batch); the caller's ``generate`` then
raises. ``mtg grid`` does this for every cell when it is told to stop.

Why a separate backend instead of an option of ``vllm:``: ``vllm.LLM`` and
``AsyncLLM`` are different vLLM classes with different lifecycles; the spec
chooses the class, as every registry prefix does. ``identity()`` equals the
``vllm:`` engine's (same model, dtype, context, seed), so a run's generation
cache is shared between the two and a cell moved from array mode to
``mtg grid`` keeps its cache hits.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import itertools
import threading
import time
from typing import Any

from engines.base import Capabilities, Engine, GenRequest, GenResult
from engines.bundled import model_identity, resolve_model
from engines.errors import EngineError, EngineStartError
from engines.loop_thread import BackgroundLoop, CallerTasks
from engines.process_guard import ProcessGuard
from engines.registry import config_from_options
from engines.vllm_platform import require_usable_platform
from engines.vllm_engine import (
    _SEED_NOTE_CPU,
    USAGE_CONTEXT,
    PrefixCacheCounter,
    VLLMConfig,
    build_vllm_inputs,
    import_vllm,
    result_from_output,
)

#: most per-request events kept (oldest dropped first): ~100 bytes each.
MAX_EVENTS = 200_000


@dataclasses.dataclass(frozen=True)
class AsyncVLLMConfig(VLLMConfig):
    """``VLLMConfig`` plus data parallelism (the async engine's only extra).

    Attributes:
        data_parallel_size: engine replicas, each on ``tensor_parallel_size``
            GPUs; vLLM balances requests across them (its ``--data-parallel-size``).
            For a model that fits one GPU on a node with several. 1 on CPU.
    """

    data_parallel_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        dp = self.data_parallel_size
        if isinstance(dp, bool) or not isinstance(dp, int) or dp < 1:
            raise ValueError(f"data_parallel_size must be an integer >= 1, got {dp!r}")

    def llm_kwargs(self, model_path: str, *, on_cpu: bool) -> dict[str, Any]:
        kw = super().llm_kwargs(model_path, on_cpu=on_cpu)
        if self.data_parallel_size > 1:
            kw["data_parallel_size"] = self.data_parallel_size
        return kw


@dataclasses.dataclass
class RequestEvent:
    """When one request was submitted, produced its first token and finished (wall clock, s)."""

    tag: str
    request_id: str
    submitted: float
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _BatchSampler:
    """Receives vLLM scheduler stats (through ``_StatLogger``); thread-safe running-batch figures."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.samples = 0
        self.running_sum = 0
        self.running_max = 0

    def add(self, running: int) -> None:
        with self._lock:
            self.samples += 1
            self.running_sum += running
            self.running_max = max(self.running_max, running)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            mean = self.running_sum / self.samples if self.samples else 0.0
            return {"steps_sampled": self.samples, "mean_running": round(mean, 3), "max_running": self.running_max}


def _stat_logger_factory(sampler: _BatchSampler) -> Any:
    """A per-engine vLLM stat-logger factory that feeds ``sampler``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _StatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            if scheduler_stats is not None and scheduler_stats.num_running_reqs > 0:
                sampler.add(int(scheduler_stats.num_running_reqs))

        def log_engine_initialized(self) -> None:
            pass

    return lambda vllm_config, engine_index=0: _StatLogger(vllm_config, engine_index)


class AsyncVLLMEngine(Engine):
    """A long-lived ``AsyncLLM`` serving concurrent ``generate()`` calls; see the module docstring."""

    #: ``generate`` may be called from several threads at once (see engines.shared).
    serves_concurrent_calls = True
    #: ``generate(..., tag="cell")`` files the requests' events under that caller.
    accepts_caller_tag = True

    def __init__(self, config: AsyncVLLMConfig) -> None:
        super().__init__()
        self.config = config
        self.model_path = resolve_model(config.model)
        _, self.on_cpu = import_vllm()
        require_usable_platform()  # a CUDA build without a usable GPU: one line, before any load
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        self._final_only = RequestOutputKind.FINAL_ONLY
        self.llm_kwargs = config.llm_kwargs(self.model_path, on_cpu=self.on_cpu)
        self._sampler = _BatchSampler()
        self._events: collections.deque[RequestEvent] = collections.deque(maxlen=MAX_EVENTS)
        self._events_lock = threading.Lock()
        self._ids = itertools.count()
        self._per_thread = threading.local()  # backend calls of this thread's last generate()
        self._callers = CallerTasks()  # each caller's batches in flight, for cancel(tag)
        self._loop = BackgroundLoop(name="mtg-vllm-async")
        factory = _stat_logger_factory(self._sampler)

        async def _start() -> Any:
            # Built inside the loop so vLLM's output handler runs on it. vllm.LLM's usage
            # context, not AsyncLLM's default: it picks the scheduler's batch limits, which
            # must be the offline engine's (USAGE_CONTEXT in engines/vllm_engine.py).
            args = AsyncEngineArgs(**self.llm_kwargs)
            return AsyncLLM.from_engine_args(args, usage_context=UsageContext[USAGE_CONTEXT], stat_loggers=[factory])

        # As VLLMEngine: the engine core children die with this process, from before the load on.
        guard = ProcessGuard.start()
        try:
            self._llm = self._loop.run(_start())
        except BaseException as e:  # a failed or interrupted start: kill what it left
            guard.close()
            # After a failed start the loop is idle and closes at once; after a signal in this thread
            # the start still occupies it: do not wait for that (the process is about to exit).
            self._loop.close(timeout=2.0)
            if isinstance(e, (ValueError, RuntimeError)):
                raise EngineStartError(f"vLLM (async) failed to start with {self.llm_kwargs}: {e}") from e
            raise
        guard.settle()
        self._guard = guard
        self._tokenizer = self._llm.get_tokenizer()
        self._prefix = PrefixCacheCounter()
        self.max_model_len = int(self._llm.model_config.max_model_len)
        self.dtype = str(self._llm.model_config.dtype).removeprefix("torch.")
        self.capabilities = Capabilities(
            per_request_seed=True, response_prefix=True, seed_fallback=_SEED_NOTE_CPU if self.on_cpu else ""
        )

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> AsyncVLLMEngine:
        return cls(config_from_options(AsyncVLLMConfig, "vllm-async", model, options))

    def identity(self) -> dict[str, Any]:
        # Same as VLLMEngine.identity(): the two share generation caches.
        return {
            "backend": "vllm",
            "model": model_identity(self.config.model),
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "seed": self.config.seed,
        }

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # -- batch ----------------------------------------------------------------
    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        tag = str(kwargs.pop("tag", "") or "")
        kwargs.pop("progress", None)  # no per-caller bar: the batch is shared
        if kwargs:
            raise TypeError(f"unknown generate() options for the vllm-async engine: {sorted(kwargs)}")
        if self._llm is None:
            raise EngineError("the vllm-async engine is closed")
        # Rendering runs in the caller's thread, so callers tokenize in parallel with the loop.
        ids, submit, prompts, params, failed = build_vllm_inputs(self._tokenizer, self.max_model_len, requests)
        results: list[GenResult | None] = [failed.get(i) for i in range(len(requests))]
        self._per_thread.calls = 0
        if submit:
            for p in params:
                p.output_kind = self._final_only
            try:
                outs = self._loop.run(self._run_batch(tag, prompts, params))
            except Exception as e:  # the engine as a whole failed (EngineDeadError, loop closed)
                raise EngineError(f"vLLM (async) failed for a batch of {len(prompts)}: {e}") from e
            self._per_thread.calls = 1
            for i, out in zip(submit, outs):
                if isinstance(out, BaseException):
                    results[i] = GenResult.failed(requests[i].id, f"{type(out).__name__}: {out}", len(ids[i]))
                    continue
                results[i] = result_from_output(requests[i], out, ids[i])
            self._prefix.add([results[i] for i in submit])  # type: ignore[misc]
        return results  # type: ignore[return-value]

    def reset_prefix_cache(self) -> bool:
        """Empties vLLM's prefix cache (benchmarks start each variant cold); True if it was reset."""
        if self._llm is None:
            raise EngineError("the vllm-async engine is closed")
        return bool(self._loop.run(self._llm.reset_prefix_cache()))

    def prefix_cache_stats(self) -> dict[str, float] | None:
        """This engine's prefix-cache counters since it started (``PrefixCacheCounter``)."""
        return self._prefix.stats()

    def _count_backend_calls(self) -> int:
        # _record runs in the thread that called generate(): its own count, not another caller's.
        return getattr(self._per_thread, "calls", 1)

    async def _run_batch(self, tag: str, prompts: list[Any], params: list[Any]) -> list[Any]:
        """Submits every request at once and gathers them; per-request exceptions are returned."""
        with self._callers.track(tag):
            return list(await asyncio.gather(*(self._one(tag, p, sp) for p, sp in zip(prompts, params)),
                                             return_exceptions=True))

    def cancel(self, tag: str) -> int:
        """Aborts every request of caller ``tag`` in flight (vLLM drops them); returns its batches cancelled.

        Their ``generate()`` calls raise ``EngineError``. Safe from any thread but the loop's.
        """
        return self._callers.cancel(self._loop if self._llm is not None else None, tag)

    async def _one(self, tag: str, prompt: Any, params: Any) -> Any:
        from vllm.v1.engine.exceptions import EngineDeadError

        rid = f"{tag or 'mtg'}-{next(self._ids)}"
        ev = RequestEvent(tag=tag, request_id=rid, submitted=time.time())
        with self._events_lock:
            self._events.append(ev)
        final = None
        try:
            async for out in self._llm.generate(prompt, params, rid):
                final = out
        except EngineDeadError:
            ev.error, ev.finished = "engine dead", time.time()
            raise
        except asyncio.CancelledError:
            ev.error, ev.finished = "cancelled", time.time()
            raise
        except Exception as e:  # this request alone (validation, abort): an error result
            ev.error, ev.finished = f"{type(e).__name__}: {e}", time.time()
            return e
        ev.finished = time.time()
        if final is None:
            err = RuntimeError("vLLM returned no output")
            ev.error = str(err)
            return err
        m = getattr(final, "metrics", None)
        if m is not None and getattr(m, "first_token_latency", 0.0) and getattr(m, "arrival_time", 0.0):
            ev.first_token = float(m.arrival_time) + float(m.first_token_latency)
        ev.prompt_tokens = len(final.prompt_token_ids or ())
        ev.completion_tokens = len(final.outputs[0].token_ids)
        return final

    # -- observability ----------------------------------------------------------
    def events(self, tag: str | None = None) -> list[dict[str, Any]]:
        """Per-request events (see ``RequestEvent``), all callers or one ``tag``'s, oldest first."""
        with self._events_lock:
            evs = list(self._events)
        return [e.to_dict() for e in evs if tag is None or e.tag == tag]

    def batch_stats(self) -> dict[str, Any]:
        """Running-batch size per busy scheduler step since start: mean, max, steps sampled."""
        return self._sampler.snapshot()

    def close(self) -> None:
        """Shuts the engine core and the loop down. Safe to call twice."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        self._llm = None
        async def _shutdown() -> None:
            llm.shutdown()  # on the loop: it cancels vLLM's output-handler task there

        try:
            self._loop.run(_shutdown(), timeout=120)
        except Exception:  # already dead
            pass
        self._loop.close()
        del llm
        gc.collect()
        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.close()
