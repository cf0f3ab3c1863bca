"""What vLLM resolves for our engines' options, without starting an engine.

Two uses:

* ``resolved_settings`` -- for ``mtg doctor``: the installed vLLM's own
  ``create_engine_config`` on this machine's platform, for the engine
  arguments and usage context that ``vllm:`` (``vllm.LLM``) and
  ``vllm-async:`` (``AsyncLLM``) use. Nothing is loaded on a device.
* ``simulated_batch_limits`` -- for checks without a GPU (the tests,
  ``scripts/check_vllm_api.py``): the scheduler limits vLLM's own
  ``EngineArgs`` defaulting gives on a CUDA platform with a given GPU, with
  only the hardware queries answered by ``SimulatedGPU``. Never used by an
  engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from engines.vllm_engine import USAGE_CONTEXT

GiB = 1024**3


def usage_context() -> Any:
    """vLLM's ``UsageContext`` both vLLM engines run with (``USAGE_CONTEXT``)."""
    from vllm.usage.usage_lib import UsageContext

    return UsageContext[USAGE_CONTEXT]


def engine_args(backend: str, llm_kwargs: dict[str, Any]) -> Any:
    """The ``EngineArgs`` the engine of ``backend`` builds from ``llm_kwargs``.

    ``vllm.LLM(**kw)`` passes our (plain) keywords to ``EngineArgs``;
    ``vllm-async:`` builds ``AsyncEngineArgs(**kw)`` itself.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs

    return (AsyncEngineArgs if backend == "vllm-async" else EngineArgs)(**llm_kwargs)


def settings_of(vllm_config: Any) -> dict[str, Any]:
    """The figures of a resolved ``VllmConfig`` a user needs before a long job."""
    mc, sc, cc = vllm_config.model_config, vllm_config.scheduler_config, vllm_config.cache_config
    comp = vllm_config.compilation_config
    graphs = getattr(comp, "cudagraph_mode", None)
    kv_bytes = getattr(cc, "kv_cache_memory_bytes", None)
    return {
        "dtype": str(mc.dtype).removeprefix("torch."),
        "max_model_len": int(mc.max_model_len),
        "kv_cache_gib": round(kv_bytes / GiB, 3) if kv_bytes else None,
        "gpu_memory_utilization": getattr(cc, "gpu_memory_utilization", None),
        "block_size": getattr(cc, "block_size", None),
        "max_num_seqs": int(sc.max_num_seqs),
        "max_num_batched_tokens": int(sc.max_num_batched_tokens),
        "enable_prefix_caching": bool(cc.enable_prefix_caching),
        "enable_chunked_prefill": bool(sc.enable_chunked_prefill),
        "enforce_eager": bool(mc.enforce_eager),
        "cuda_graphs": "none" if graphs is None else getattr(graphs, "name", str(graphs)),
        "performance_mode": getattr(vllm_config, "performance_mode", None),
        "usage_context": USAGE_CONTEXT,
    }


def resolved_settings(backend: str, llm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """vLLM's own resolution of ``llm_kwargs`` here, as the engine of ``backend`` would start it.

    Raises:
        Exception: whatever vLLM raises for these arguments on this platform.
    """
    config = engine_args(backend, llm_kwargs).create_engine_config(usage_context())
    return settings_of(config)


@dataclasses.dataclass(frozen=True)
class SimulatedGPU:
    """The hardware answers vLLM's batch defaults ask for (``EngineArgs.get_batch_defaults``)."""

    name: str
    memory_gib: float
    capability: tuple[int, int]


#: An H100 SXM as CUDA reports it (80 GB = 79.6 GiB usable, compute capability 9.0).
H100 = SimulatedGPU("NVIDIA H100 80GB HBM3", 79.6, (9, 0))
#: An A100 40 GB (vLLM keeps A100s on its smaller defaults whatever their memory).
A100_40GB = SimulatedGPU("NVIDIA A100-SXM4-40GB", 39.4, (8, 0))


def _cuda_platform(gpu: SimulatedGPU) -> Any:
    """A vLLM CUDA platform whose device queries answer for ``gpu`` (the rest is vLLM's base class)."""
    from vllm.platforms.interface import DeviceCapability, Platform, PlatformEnum

    class SimulatedCudaPlatform(Platform):
        _enum = PlatformEnum.CUDA
        device_name = "cuda"
        device_type = "cuda"

        @classmethod
        def get_device_capability(cls, device_id: int = 0) -> Any:
            return DeviceCapability(*gpu.capability)

        @classmethod
        def get_device_name(cls, device_id: int = 0) -> str:
            return gpu.name

        @classmethod
        def get_device_total_memory(cls, device_id: int = 0) -> int:
            return int(gpu.memory_gib * GiB)

    return SimulatedCudaPlatform()


@contextlib.contextmanager
def _platform_for_batch_defaults(gpu: SimulatedGPU) -> Iterator[None]:
    """vLLM's argument defaulting (``vllm.engine.arg_utils``) sees a CUDA platform with ``gpu``."""
    import vllm.engine.arg_utils as arg_utils

    saved = arg_utils.current_platform
    arg_utils.current_platform = _cuda_platform(gpu)
    try:
        yield
    finally:
        arg_utils.current_platform = saved


def simulated_batch_limits(args: Any, context: Any, gpu: SimulatedGPU = H100) -> dict[str, Any]:
    """``max_num_seqs`` and ``max_num_batched_tokens`` vLLM resolves for ``args`` on ``gpu``.

    Runs the steps of ``EngineArgs.create_engine_config`` that decide them --
    the model config, then vLLM's own ``_set_default_chunked_prefill_and_prefix_caching_args``
    and ``_set_default_max_num_seqs_and_batched_tokens_args`` for ``context`` --
    on a copy of ``args``, with vLLM's argument module seeing a CUDA platform
    with ``gpu``. Works on any vLLM build (no GPU, no engine); the model must
    be local.

    Args:
        args: an ``EngineArgs`` / ``AsyncEngineArgs`` (e.g. the one an engine built).
        context: a vLLM ``UsageContext`` (or None).
        gpu: the device to answer for.
    """
    from vllm.config import ParallelConfig

    args = dataclasses.replace(args)
    with _platform_for_batch_defaults(gpu):
        model_config = args.create_model_config()
        args._set_default_chunked_prefill_and_prefix_caching_args(model_config)
        parallel = ParallelConfig(pipeline_parallel_size=args.pipeline_parallel_size,
                                  tensor_parallel_size=args.tensor_parallel_size,
                                  data_parallel_size=args.data_parallel_size)  # fmt: skip
        args._set_default_max_num_seqs_and_batched_tokens_args(context, model_config, parallel)
    return {"max_num_seqs": int(args.max_num_seqs), "max_num_batched_tokens": int(args.max_num_batched_tokens),
            "enable_chunked_prefill": bool(args.enable_chunked_prefill),
            "max_model_len": int(model_config.max_model_len)}  # fmt: skip
