"""Runs a batch against the fault-injecting test server and prints the figures as one JSON line.

    python scripts/bench_openai_faults.py [--requests 100] [--fault-rate 0.35] [--seed 4]

The server (``tests/fault_server.py``) answers on 127.0.0.1 and injects 429
with Retry-After, 500, slow responses past the client timeout and malformed
JSON on a seeded share of calls. Output: requests, answered, errors, retries,
wall time, server calls and the faults it injected.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fault_server

from engines import GenRequest, SamplingConfig, create_engine  # noqa: E402
from tests.fault_server import FaultServer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--fault-rate", type=float, default=0.35)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout-s", type=float, default=0.5, help="per attempt; slow faults sleep 1.5 s")
    args = p.parse_args()
    with FaultServer(fault_rate=args.fault_rate, seed=args.seed, retry_after_s=1, slow_s=1.5) as srv:
        engine = create_engine(
            "openai:fault-model",
            base_url=srv.base_url,
            api_key="sk-bench-not-a-real-key",
            timeout_s=args.timeout_s,
            max_retries=args.max_retries,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            max_concurrency=args.concurrency,
        )
        requests = [
            GenRequest.chat(f"item {i}", id=f"q{i}", sampling=SamplingConfig(temperature=0.7, seed=i, max_tokens=32))
            for i in range(args.requests)
        ]
        t0 = time.perf_counter()
        results = engine.generate(requests)
        wall = time.perf_counter() - t0
    ids_ok = [r.id for r in results] == [r.id for r in requests]
    print(
        json.dumps(
            {
                "requests": len(requests),
                "answered": sum(r.ok for r in results),
                "errors": sum(not r.ok for r in results),
                "retries": engine.usage.retries,
                "wall_s": round(wall, 2),
                "ids_in_order": ids_ok,
                "server_calls": len(srv.calls),
                "faults": srv.fault_counts(),
                "fault_rate": args.fault_rate,
                "seed": args.seed,
                "max_retries": args.max_retries,
            }
        )
    )


if __name__ == "__main__":
    main()
