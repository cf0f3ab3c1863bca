"""Replaying recorded phases: one call per phase (the ceiling) or one call per request.

The raw ceiling skips everything our code does around a backend call. For the
in-process vLLM engine the recorded requests are rendered and tokenized
*before* the clock starts by ``VLLMEngine.vllm_inputs``, the very code its
``generate`` uses (same rendering, same ``SamplingParams``), and each phase
is one ``vllm.LLM.generate`` on token ids. Other engines are replayed with one
``engine.generate(phase)`` per phase.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from engines.base import Engine, GenRequest, Usage
from mtg_local.bench.wrappers import PerRequestEngine

#: what ``replay_raw`` calls, recorded in the benchmark's JSON
LEVEL_LLM = "vllm.LLM.generate(token ids), pre-rendered"
LEVEL_ENGINE = "engine.generate(phase)"


@dataclasses.dataclass
class ReplayStats:
    """Backend work of one replay (counted from the outputs, not the engine's usage)."""

    wall_s: float = 0.0
    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    level: str = LEVEL_ENGINE

    @classmethod
    def from_usage(cls, wall_s: float, usage: Usage, level: str) -> ReplayStats:
        """Stats from an engine's ``reset_usage()`` counters."""
        return cls(wall_s=wall_s, calls=usage.calls, requests=usage.requests, prompt_tokens=usage.prompt_tokens,
                   completion_tokens=usage.completion_tokens, errors=usage.errors, level=level)


def _vllm_llm(engine: Engine) -> Any | None:
    """The engine's ``vllm.LLM`` if it is the in-process vLLM engine, else None."""
    # VLLMEngine keeps it private; the ceiling has to go below the engine.
    llm = getattr(engine, "_llm", None)
    return llm if llm is not None and hasattr(engine, "vllm_inputs") else None


def replay_raw(engine: Engine, phases: Sequence[Sequence[GenRequest]]) -> ReplayStats:
    """Sends each recorded phase as one backend call, with no orchestration between them.

    Args:
        engine: the engine the phases were recorded on.
        phases: the recorded batches, in order.

    Returns:
        Wall time of the calls only (preparation excluded) and token counts.
    """
    llm = _vllm_llm(engine)
    if llm is None:
        engine.reset_usage()
        t0 = time.perf_counter()
        for phase in phases:
            engine.generate(phase)
        return ReplayStats.from_usage(time.perf_counter() - t0, engine.reset_usage(), LEVEL_ENGINE)
    stats = ReplayStats(level=LEVEL_LLM)
    prepared = [engine.vllm_inputs(phase)[2:4] for phase in phases]  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    outputs = [llm.generate(prompts, params, use_tqdm=False) for prompts, params in prepared]
    stats.wall_s = time.perf_counter() - t0
    for outs in outputs:
        stats.calls += 1
        for out in outs:
            stats.requests += 1
            stats.prompt_tokens += len(out.prompt_token_ids or ())
            stats.completion_tokens += len(out.outputs[0].token_ids)
    return stats


def replay_per_request(
    engine: Engine, phases: Sequence[Sequence[GenRequest]], *, sample: int | None = None
) -> ReplayStats:
    """Sends every recorded request as its own backend call, sequentially, in recorded order.

    Args:
        engine: the engine the phases were recorded on.
        phases: the recorded batches, in order.
        sample: if set, only the first ``sample`` requests of each phase are
            sent (for slow backends; rates stay comparable, walls do not).

    Returns:
        Wall time and token counts, as the engine counted them.
    """
    per_call = PerRequestEngine(engine)
    chosen = [list(p[:sample]) if sample else list(p) for p in phases]
    engine.reset_usage()
    t0 = time.perf_counter()
    for phase in chosen:
        per_call.generate(phase)
    return ReplayStats.from_usage(time.perf_counter() - t0, engine.reset_usage(), "engine.generate([request]) per request")
