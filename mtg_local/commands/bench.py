"""``mtg bench``: throughput benchmarks, one sub-command each.

``mtg bench engine`` sends the same N chat requests (varied short prompts,
temperature 0.7, distinct seeds) once as one batched call and once one request
per call, and prints one JSON line comparing the two. That ratio is why the
whole project hands each phase to the engine as one list. Further benchmarks
(e.g. ``bench inner-loop``) are added as sibling sub-parsers of ``engine`` in
``register`` (one ``add_*_bench`` function each).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from engines import Engine, GenRequest, SamplingConfig
from engines.errors import UserError
from engines.registry import parse_engine_opts
from mtg_local.bench.grid_bench import add_grid_bench
from mtg_local.bench.inner_loop_bench import add_inner_loop_bench
from mtg_local.commands.common import build_engine
from mtg_local.protocol_flags import parse_bool
from mtg_local.runs.secrets import public_engine_opts

_TOPICS = (
    "the moon", "rivers", "prime numbers", "honey bees", "volcanoes", "the color blue",
    "chess", "bread", "glaciers", "owls", "magnets", "the ocean", "tea", "bridges",
    "comets", "maple trees",
)
_ASKS = (
    "Tell me one short fact about {}.",
    "Write one sentence describing {}.",
    "Why do people find {} interesting? Answer briefly.",
    "Give a two-line poem about {}.",
    "Explain {} to a child in one sentence.",
    "List three words related to {}.",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput benchmarks (engine: batched vs one request per call)")
    bench_sub = p.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    add_engine_bench(bench_sub)
    add_inner_loop_bench(bench_sub)
    add_grid_bench(bench_sub)
    add_peer_bench(bench_sub)


def add_engine_bench(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("engine", help="the same N requests as one batched call vs one call each")
    p.add_argument("--engine", default="vllm:bundled", metavar="SPEC", help="engine spec (default: %(default)s)")
    p.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE", help="backend option, repeatable")
    p.add_argument("--requests", type=int, default=96, help="number of requests N (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=64, help="max new tokens per request (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.7, help="default: %(default)s")
    p.add_argument(
        "--per-call-requests",
        type=int,
        default=None,
        metavar="K",
        help="time only the first K requests one per call and report rates (default: all N)",
    )
    p.set_defaults(func=run_engine_bench)


def bench_requests(n: int, max_tokens: int, temperature: float) -> list[GenRequest]:
    """N varied short chat requests with distinct seeds (deterministic)."""
    sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens)
    return [
        GenRequest.chat(
            _ASKS[i % len(_ASKS)].format(_TOPICS[(i // len(_ASKS) + i) % len(_TOPICS)]),
            sampling=sampling.replace(seed=1000 + i),
            id=f"bench-{i}",
        )
        for i in range(n)
    ]


def _timed(engine: Engine, batches: list[list[GenRequest]]) -> dict[str, Any]:
    engine.reset_usage()
    t0 = time.perf_counter()
    for batch in batches:
        engine.generate(batch)
    wall = time.perf_counter() - t0
    u = engine.usage
    return {
        "wall_s": round(wall, 3),
        "completion_tokens": u.completion_tokens,
        "prompt_tokens": u.prompt_tokens,
        "calls": u.calls,
        "errors": u.errors,
        "tok_s": round(u.completion_tokens / wall, 2) if wall > 0 else 0.0,
    }


def engine_bench(engine: Engine, requests: list[GenRequest], per_call_requests: int | None = None) -> dict[str, Any]:
    """Times ``requests`` as one batched call, then (the first K of them) one per call.

    Args:
        engine: the engine to measure (not closed here; no cache wrapper, so
            every request reaches the backend).
        requests: the batch.
        per_call_requests: K, how many of them to time one per call (default: all).

    Returns:
        The benchmark record (tokens/s of both ways, their ratio, walls, counts).
    """
    k = per_call_requests or len(requests)
    # Warm-up (first-call allocations) outside the timings.
    engine.generate(requests[:1])
    batched = _timed(engine, [requests])
    per_call = _timed(engine, [[r] for r in requests[:k]])
    ratio = batched["tok_s"] / per_call["tok_s"] if per_call["tok_s"] else None
    return {
        "batched_tok_s": batched["tok_s"],
        "per_call_tok_s": per_call["tok_s"],
        "ratio": round(ratio, 2) if ratio is not None else None,
        "batched_wall_s": batched["wall_s"],
        "per_call_wall_s": per_call["wall_s"],
        "batched_tokens": batched["completion_tokens"],
        "per_call_tokens": per_call["completion_tokens"],
        "batched_calls": batched["calls"],
        "per_call_calls": per_call["calls"],
        "per_call_requests": k,
        "errors": batched["errors"] + per_call["errors"],
        "prefix_cache": getattr(engine, "prefix_cache_stats", lambda: None)(),
    }


def run_engine_bench(args: argparse.Namespace) -> int:
    if args.requests < 1:
        raise UserError(f"--requests must be >= 1, got {args.requests}")
    try:
        requests = bench_requests(args.requests, args.max_tokens, args.temperature)
    except ValueError as e:
        raise UserError(f"bad sampling value: {e}") from e
    k = args.per_call_requests or args.requests
    if not 1 <= k <= args.requests:
        raise UserError(f"--per-call-requests must be in [1, {args.requests}], got {k}")
    t0 = time.perf_counter()
    # No cache: a benchmark must hit the backend every time.
    engine = build_engine(args.engine, args.engine_opt, None, True)
    start_s = time.perf_counter() - t0
    try:
        result = engine_bench(engine, requests, k)
    finally:
        engine.close()
    record = {
        "bench": "engine",
        "engine": args.engine,
        "engine_opts": public_engine_opts(args.engine_opt),
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "engine_start_s": round(start_s, 1),
        **result,
    }
    print(json.dumps(record))
    return 0


# -- mtg bench peer (issue 16) ----------------------------------------------------


def add_peer_bench(bench_sub: argparse._SubParsersAction) -> None:
    """Adds ``peer``: ours vs the real TextGrad on one vLLM server (``mtg_local.bench.peer_bench``)."""
    from mtg_local.bench import peer_bench
    from mtg_local.bench.inner_loop_bench import InnerLoopBenchConfig
    from mtg_local.protocol import PRESETS
    from mtg_local.tasks import task_names

    d = InnerLoopBenchConfig()
    p = bench_sub.add_parser(
        "peer",
        help="ours (in-process and via a vLLM server) vs the real TextGrad on the same vLLM server",
        description=peer_bench.__doc__.split("\n\n", 1)[1] if peer_bench.__doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="bundled", help="vLLM model of every variant (default: %(default)s)")
    p.add_argument("--engine-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="vLLM option (VLLMConfig), applied to the server and the in-process engine alike")
    p.add_argument("--questions", type=int, default=d.questions, metavar="N", help="default: %(default)s")
    p.add_argument("--seeds", type=int, default=None, metavar="S",
                   help="seeds 0..S-1 (default: the protocol's: 6 default, 1 textgrad)")
    p.add_argument("--fold-seeds", action="store_true",
                   help="let our engines generate identical requests of a phase once (every seed's copy at "
                        "temperature 0; greedy phases whose answers agree), which TextGrad sends each: less work, "
                        "listed apart in the record (default: ours send every request, as TextGrad does)")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="timed runs of every variant, order reversed on every other run; the record has each "
                        "variant's median wall and spread (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, metavar="T", help="default: %(default)s")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, metavar="M",
                   help="per request, all phases (default: %(default)s)")
    p.add_argument("--protocol", default="default", choices=tuple(PRESETS),
                   help="protocol of TextGrad and our variants alike: default, or textgrad (TextGrad's "
                        "solution_optimization.py; then both send the same requests) (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=None,
                   help="forward phase (default: the protocol's: 0.7 default, 0 textgrad)")
    p.add_argument("--inference-template", default=None, type=parse_bool, metavar="BOOL",
                   help="start every answer, TextGrad's and ours, with the inference template (default: the "
                        "protocol's: true default, false textgrad)")
    p.add_argument("--textgrad-prefill", default=True, type=parse_bool, metavar="BOOL",
                   help="TextGrad's answers start with the template too, its forward call prefilled by its client "
                        "wrapper as our openai: engine does on vLLM, so both sides send the same requests; false: "
                        "TextGrad as it ships, answers without the template (default: true)")
    p.add_argument("--task", default=d.task, choices=task_names(), help="default: %(default)s")
    p.add_argument("--split", default=d.split, choices=("train", "val", "test"), help="default: %(default)s")
    p.add_argument("--widths", default="1,16,32,all",
                   help="TextGrad thread-pool widths, 'all' = one thread per item (default: %(default)s)")
    p.add_argument("--variants", default=",".join(peer_bench.VARIANTS), help="subset to run (default: %(default)s)")
    p.add_argument("--server-concurrency", default="default",
                   help="max_concurrency values of the openai: engine for ours-server, comma-separated; "
                   "'default' = the engine's default (default: %(default)s)")
    p.add_argument("--server-start-timeout", type=float, default=900.0, metavar="SECONDS",
                   help="default: %(default)s")
    p.set_defaults(func=run_peer_bench_cli)


def run_peer_bench_cli(args: argparse.Namespace) -> int:
    """Runs ``mtg bench peer`` on vLLM; the table goes to stderr, one JSON line to stdout."""
    from mtg_local.bench import peer_bench
    from mtg_local.bench.inner_loop_bench import InnerLoopBenchConfig
    from mtg_local.protocol import PRESETS

    preset = PRESETS[args.protocol]
    temperature = args.temperature if args.temperature is not None else preset.temperature
    seeds = args.seeds if args.seeds is not None else len(preset.seeds)
    try:
        config = peer_bench.PeerBenchConfig(
            workload=InnerLoopBenchConfig(
                questions=args.questions, seeds=seeds, steps=args.steps, max_tokens=args.max_tokens,
                temperature=temperature, task=args.task, split=args.split,
            ),
            protocol=args.protocol,
            inference_template=args.inference_template,
            textgrad_prefill=args.textgrad_prefill,
            fold_seeds=args.fold_seeds,
            repeats=args.repeats,
            widths=peer_bench.parse_widths(args.widths),
            variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
            server_concurrency=peer_bench.parse_concurrency(args.server_concurrency),
        )
    except ValueError as e:
        raise UserError(str(e)) from e
    opts = parse_engine_opts(args.engine_opt)
    record = peer_bench.run_peer_bench(
        config,
        server_factory=lambda: peer_bench.vllm_server(args.model, opts, args.server_start_timeout),
        inproc_factory=lambda backend: peer_bench.inproc_engine(args.model, opts, backend=backend),
    )
    record["model"] = args.model
    record["engine_opts"] = args.engine_opt
    print(peer_bench.table(record), file=sys.stderr)
    print(json.dumps(record))
    return 0
