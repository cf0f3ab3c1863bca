"""``mtg bench inner-loop``: one inner-loop workload run three ways on one engine.

Variants, all in one process on one engine, no generation cache:

* **a (ours)**: ``solution_optimization`` on N questions x S seeds for T steps,
  phase-batched (1 + 3T ``engine.generate`` calls). A ``RecordingEngine``
  keeps every phase's requests in the order they were sent.
* **c (raw ceiling)**: a's recorded phases replayed as bare backend calls, one
  per phase, nothing between them (for vLLM: ``LLM.generate`` on token ids
  rendered before the clock starts).
* **b (TextGrad pattern)**: a's recorded requests replayed one backend call
  per request, sequentially, in recorded order (``PerRequestEngine``).
* **i (barrier-free, with --schedule item)**: the same loop on the same items
  under ``schedule="item"`` (``mtg_local.barrier_free``): each item sends its
  next phase as soon as its own request returns. Needs an engine that serves
  concurrent calls (``vllm-async:``). With per-request seeds it sends a's
  requests (identical ones of a phase excepted: a generates them once).
  ``speedup_item_vs_phase`` = tok/s(i) / tok/s(a).

b and c replay a's requests rather than re-running the loop, because at
temperature > 0 a new run would send different later-phase prompts; with the
same requests (seeds included) the three do the same work. Order: a (it
produces the workload), then i, then c, then b; vLLM's prefix cache is reset before
each variant so each starts cold and reuses only what it computed itself.

``speedup_vs_per_call`` = tok/s(a) / tok/s(b) and ``efficiency_vs_raw`` =
tok/s(a) / tok/s(c), tok/s being generated (completion) tokens per wall
second; as the token counts match (same requests, same seeds), these are
close to wall(b)/wall(a) and wall(c)/wall(a), which are reported too.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import sys
import time
from typing import Any

from engines.base import Engine, GenRequest, SamplingConfig
from engines.errors import UserError
from mtg_local.bench.memory import PeakRSS
from mtg_local.bench.replay import ReplayStats, replay_per_request, replay_raw
from mtg_local.barrier_free import require_concurrent_engine, require_concurrent_spec
from mtg_local.bench.wrappers import RecordingEngine
from mtg_local.inner_loop import (
    DEFAULT_TEMPLATE,
    PROMPT_LAYOUTS,
    SCHEDULES,
    InnerItem,
    InnerLoopConfig,
    solution_optimization,
)
from mtg_local.runs.secrets import public_engine_opts
from mtg_local.tasks import Task, get_task, task_names


@dataclasses.dataclass(frozen=True)
class InnerLoopBenchConfig:
    """The workload of ``mtg bench inner-loop`` (validated in ``__post_init__``).

    Attributes:
        questions: N, questions taken from the start of ``split``.
        seeds: S, sampling seeds 0..S-1 per question (N*S items).
        steps: T, TextGrad steps (1 + 3T phases).
        max_tokens: most new tokens per request, every phase.
        temperature: forward (initial answer) temperature; the optimizer
            phases use the inner loop's default (greedy).
        task: task name (``synthetic_word_sorting`` is offline).
        split: "train", "val" or "test".
        per_call_sample: if set, b sends only the first K requests of each
            phase (rates comparable, walls not); None = all.
        profile_path: write a cProfile of variant a here (slows a a little).
        schedule: "phase" (a, c, b) or "item" (also variant i, barrier-free).
        prompt_layout: the inner loop's prompt layout ("textgrad" | "chained"), to
            compare how much of each phase the prefix cache serves.
    """

    questions: int = 32
    seeds: int = 3
    steps: int = 2
    max_tokens: int = 64
    temperature: float = 0.7
    task: str = "synthetic_word_sorting"
    split: str = "test"
    per_call_sample: int | None = None
    profile_path: str | None = None
    schedule: str = "phase"
    prompt_layout: str = "textgrad"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("questions", "seeds", "steps", "max_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise ValueError(f"temperature must be a number >= 0, got {t!r}")
        if self.task not in task_names():
            raise ValueError(f"task must be one of {task_names()}, got {self.task!r}")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {self.split!r}")
        k = self.per_call_sample
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"per_call_sample must be None or an integer >= 1, got {k!r}")
        if self.prompt_layout not in PROMPT_LAYOUTS:
            raise ValueError(f"prompt_layout must be one of {', '.join(PROMPT_LAYOUTS)}, got {self.prompt_layout!r}")

    def inner_config(self) -> InnerLoopConfig:
        """The inner loop's settings: every item runs every phase (no freezing)."""
        return InnerLoopConfig(
            steps=self.steps,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            optimizer_max_tokens=self.max_tokens,
            freeze_when="never",
            prompt_layout=self.prompt_layout,
        )


def build_items(task: Task, config: InnerLoopBenchConfig) -> list[InnerItem]:
    """N questions x S seeds with the task's initial loss prompt and the paper's template."""
    examples = task.splits().get(config.split)
    if len(examples) < config.questions:
        raise UserError(
            f"--questions {config.questions} is more than the {len(examples)} questions of "
            f"{task.name}'s {config.split} split"
        )
    return [
        InnerItem(ex, seed, task.initial_loss_prompt, DEFAULT_TEMPLATE)
        for ex in examples[: config.questions]
        for seed in range(config.seeds)
    ]


def reset_prefix_cache(engine: Engine) -> bool | None:
    """Empties vLLM's prefix cache; None where the engine has none to reset."""
    fn = getattr(engine, "reset_prefix_cache", None)
    if fn is None:
        llm = getattr(engine, "_llm", None)  # VLLMEngine without a public hook
        fn = getattr(llm, "reset_prefix_cache", None)
    return bool(fn()) if fn is not None else None


#: vLLM counters read around each variant (process-wide Prometheus metrics)
_COUNTERS = {
    "vllm:prefix_cache_queries": "queries",
    "vllm:prefix_cache_hits": "hits",
    "vllm:num_preemptions": "preemptions",
}


def vllm_counters(engine: Engine) -> dict[str, float] | None:
    """vLLM's prefix-cache and preemption counters now, or None if the engine exposes none."""
    llm = getattr(engine, "_llm", None)
    if llm is None or not hasattr(llm, "get_metrics"):
        return None
    try:
        metrics = llm.get_metrics()
    except Exception:  # metrics are optional (disabled stats, other builds)
        return None
    out = {key: 0.0 for key in _COUNTERS.values()}
    for m in metrics:
        key = _COUNTERS.get(m.name)
        if key is not None:
            out[key] += float(getattr(m, "value", 0) or 0)
    return out


def _cache_stats(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    if before is None or after is None:
        return {"prefix_cache_hit_rate": None, "preemptions": None}
    d = {k: after[k] - before[k] for k in after}
    return {
        "prefix_cache_hit_rate": round(d["hits"] / d["queries"], 4) if d["queries"] > 0 else None,
        "preemptions": int(d["preemptions"]),
    }


def _summary(name: str, stats: ReplayStats, cache: dict[str, Any]) -> dict[str, Any]:
    """One variant's numbers; also logged to stderr at once, so a run cut short keeps them."""
    wall = stats.wall_s
    out = {
        "wall_s": round(wall, 3),
        "completion_tokens": stats.completion_tokens,
        "prompt_tokens": stats.prompt_tokens,
        "tok_s": round(stats.completion_tokens / wall, 2) if wall > 0 else None,
        "calls": stats.calls,
        "requests": stats.requests,
        "errors": stats.errors,
        **cache,
        "level": stats.level,
    }
    print(f"[bench inner-loop] {name}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x and y else None


def _warmup_requests(n: int = 8, words: int = 300) -> list[GenRequest]:
    """Distinct long prompts (no shared prefix) of roughly this workload's backward-phase length."""
    return [
        GenRequest.chat(f"Request {i}. " + " ".join(f"w{(i * 7919 + j) % 5003}" for j in range(words)),
                        sampling=SamplingConfig(max_tokens=8, seed=i))
        for i in range(n)
    ]


def _run_ours(
    engine: Engine, task: Task, items: list[InnerItem], config: InnerLoopBenchConfig
) -> tuple[ReplayStats, RecordingEngine]:
    """Variant a: the phase-batched inner loop, recorded; engine usage gives the backend work."""
    recorder = RecordingEngine(engine)
    inner = config.inner_config()
    profiler = cProfile.Profile() if config.profile_path else None
    engine.reset_usage()
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    solution_optimization(task, items, forward_engine=recorder, config=inner)
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - t0
    if profiler is not None:
        profiler.dump_stats(config.profile_path)
    return ReplayStats.from_usage(wall, engine.reset_usage(), "solution_optimization (phase-batched)"), recorder


def _run_item_schedule(
    engine: Engine, task: Task, items: list[InnerItem], config: InnerLoopBenchConfig
) -> ReplayStats:
    """Variant i: the same loop under the barrier-free item schedule; engine usage gives the backend work."""
    inner = dataclasses.replace(config.inner_config(), schedule="item")
    engine.reset_usage()
    t0 = time.perf_counter()
    solution_optimization(task, items, forward_engine=engine, config=inner)
    wall = time.perf_counter() - t0
    return ReplayStats.from_usage(wall, engine.reset_usage(), "solution_optimization (barrier-free, per item)")


def run_inner_loop_bench(engine: Engine, config: InnerLoopBenchConfig, *, task: Task | None = None) -> dict[str, Any]:
    """Runs variants a, c, b on ``engine`` and returns the JSON record (see module docstring).

    Args:
        engine: an uncached engine (a ``CachedEngine`` would serve the replays
            from its cache); it is not closed here.
        config: the workload.
        task: the task object (default: ``get_task(config.task)``).

    Returns:
        One flat-ish dict: per-variant ``a``/``b``/``c`` summaries, the two
        ratios, call counts, peak RSS and prefix-cache hit rates.
    """
    if type(engine).__name__ == "CachedEngine":
        raise UserError("the inner-loop benchmark needs an uncached engine (the replays would be cache hits)")
    if config.schedule == "item":
        require_concurrent_engine(engine)
    task = task or get_task(config.task)
    items = build_items(task, config)
    results: dict[str, dict[str, Any]] = {}
    with PeakRSS() as rss:
        # Warm-up outside the timings: first-call allocations and lazy imports, and
        # a batch of long prompts so the first large prefill (buffer growth, page
        # faults) is not charged to a, which runs first.
        engine.generate(_warmup_requests())
        reset_prefix_cache(engine)
        before = vllm_counters(engine)
        a, recorder = _run_ours(engine, task, items, config)
        results["a"] = _summary("a", a, _cache_stats(before, vllm_counters(engine)))
        phases = recorder.batches

        if config.schedule == "item":
            reset_prefix_cache(engine)
            before = vllm_counters(engine)
            i = _run_item_schedule(engine, task, items, config)
            results["i"] = _summary("i", i, _cache_stats(before, vllm_counters(engine)))

        prefix_reset = reset_prefix_cache(engine)
        before = vllm_counters(engine)
        c = replay_raw(engine, phases)
        results["c"] = _summary("c", c, _cache_stats(before, vllm_counters(engine)))

        reset_prefix_cache(engine)
        before = vllm_counters(engine)
        b = replay_per_request(engine, phases, sample=config.per_call_sample)
        results["b"] = _summary("b", b, _cache_stats(before, vllm_counters(engine)))

    ra, rb, rc = (results[k] for k in "abc")
    ri = results.get("i")
    item = {} if ri is None else {
        "i": ri,
        "speedup_item_vs_phase": _ratio(ri["tok_s"], ra["tok_s"]),
        "speedup_item_definition": "tok/s(i) / tok/s(a); i sends a phase's identical requests each time",
        "wall_ratio_a_over_i": _ratio(ra["wall_s"], ri["wall_s"]),
        "sanity_item": {"requests_i_eq_a": ri["requests"] == ra["requests"],
                        "completion_tokens_i_over_a": _ratio(ri["completion_tokens"], ra["completion_tokens"])},
    }
    return {
        "bench": "inner-loop",
        "engine": engine.spec,
        "workload": {**dataclasses.asdict(config), "items": len(items), "phases": len(phases)},
        "order": ["a", "i", "c", "b"] if ri is not None else ["a", "c", "b"],
        "prefix_cache_reset_between_variants": prefix_reset,
        "a": ra,
        "b": rb,
        "c": rc,
        "speedup_vs_per_call": _ratio(ra["tok_s"], rb["tok_s"]),
        "speedup_definition": "tok/s(a) / tok/s(b), generated tokens per wall second",
        "wall_ratio_b_over_a": _ratio(rb["wall_s"], ra["wall_s"]) if not config.per_call_sample else None,
        "efficiency_vs_raw": _ratio(ra["tok_s"], rc["tok_s"]),
        "efficiency_definition": "tok/s(a) / tok/s(c)",
        "wall_ratio_c_over_a": _ratio(rc["wall_s"], ra["wall_s"]),
        "calls": {"a": ra["calls"], "b": rb["calls"], "c": rc["calls"]},
        "phase_tokens_a": recorder.phase_tokens(),
        "sanity": {
            "requests_a_eq_c": ra["requests"] == rc["requests"],
            "completion_tokens_c_over_a": _ratio(rc["completion_tokens"], ra["completion_tokens"]),
            "completion_tokens_b_over_a": _ratio(rb["completion_tokens"], ra["completion_tokens"])
            if not config.per_call_sample
            else None,
        },
        "peak_rss_gib": rss.peak_gib,
        **item,
    }


def add_inner_loop_bench(bench_sub: argparse._SubParsersAction) -> None:
    """Adds ``inner-loop`` to ``mtg bench``'s sub-commands."""
    d = InnerLoopBenchConfig()
    p = bench_sub.add_parser(
        "inner-loop",
        help="the inner loop phase-batched (ours) vs one request per call (TextGrad) vs raw backend calls",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--engine", default="vllm:bundled", metavar="SPEC", help="engine spec (default: %(default)s)")
    p.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE", help="backend option, repeatable")
    p.add_argument("--questions", type=int, default=d.questions, metavar="N", help="default: %(default)s")
    p.add_argument("--seeds", type=int, default=d.seeds, metavar="S", help="default: %(default)s")
    p.add_argument("--steps", type=int, default=d.steps, metavar="T", help="default: %(default)s")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, metavar="M", help="per request, all phases (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="forward phase (default: %(default)s)")
    p.add_argument("--task", default=d.task, choices=task_names(), help="default: %(default)s")
    p.add_argument("--split", default=d.split, choices=("train", "val", "test"), help="default: %(default)s")
    p.add_argument(
        "--per-call-sample",
        type=int,
        default=None,
        metavar="K",
        help="variant b sends only the first K requests of each phase (default: all)",
    )
    p.add_argument("--profile", default=None, metavar="PATH", help="write a cProfile (pstats) of variant a")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                   help="item: also run variant i, the barrier-free item schedule (needs e.g. vllm-async:bundled; "
                   "default: %(default)s)")
    p.add_argument("--prompt-layout", default=d.prompt_layout, choices=PROMPT_LAYOUTS,
                   help="inner-loop prompt layout (docs/protocol.md; default: %(default)s)")
    p.set_defaults(func=run_inner_loop_cli)


def run_inner_loop_cli(args: argparse.Namespace) -> int:
    """Builds the engine (no cache), runs the benchmark, prints one JSON line."""
    from engines.registry import create_engine, parse_engine_opts

    try:
        config = InnerLoopBenchConfig(
            questions=args.questions,
            seeds=args.seeds,
            steps=args.steps,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            task=args.task,
            split=args.split,
            per_call_sample=args.per_call_sample,
            profile_path=args.profile,
            schedule=args.schedule,
            prompt_layout=args.prompt_layout,
        )
    except ValueError as e:
        raise UserError(str(e)) from e
    if config.schedule == "item":  # before the model is loaded
        require_concurrent_spec(args.engine)
    t0 = time.perf_counter()
    engine = create_engine(args.engine, **parse_engine_opts(args.engine_opt))  # no cache: every request hits the backend
    start_s = time.perf_counter() - t0
    try:
        record = run_inner_loop_bench(engine, config)
    finally:
        engine.close()
    record["engine_opts"] = public_engine_opts(args.engine_opt)
    record["engine_start_s"] = round(start_s, 1)
    print(json.dumps(record))
    return 0
