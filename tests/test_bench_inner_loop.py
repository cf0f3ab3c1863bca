"""``mtg bench inner-loop`` runs end to end on the fake engine and reports every field.

No timing assertions: on the fake engine the numbers mean nothing. What is
checked is the workload's shape: a sends 1 + 3T phase calls of N*S requests,
b replays the same requests one call each, c the same phases one call each.
"""

from __future__ import annotations

import json

import pytest

from engines.fake_engine import FakeEngine
from mtg_local.bench.inner_loop_bench import InnerLoopBenchConfig, run_inner_loop_bench
from mtg_local.bench.wrappers import PerRequestEngine, RecordingEngine
from mtg_local.cli import main

VARIANT_FIELDS = {
    "wall_s", "completion_tokens", "prompt_tokens", "tok_s", "calls", "requests", "errors",
    "prefix_cache_hit_rate", "preemptions", "level",
}


def test_cli_prints_one_json_line_with_all_fields(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "inner-loop", "--engine", "fake", "--questions", "3", "--seeds", "2", "--steps", "2"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    for key in (
        "speedup_vs_per_call", "efficiency_vs_raw", "calls", "peak_rss_gib", "sanity",
        "phase_tokens_a", "order", "workload", "engine_start_s",
    ):
        assert key in rec
    for v in "abc":
        assert VARIANT_FIELDS <= set(rec[v])
    items, phases = 3 * 2, 1 + 3 * 2
    assert rec["workload"]["items"] == items and rec["workload"]["phases"] == phases
    # The echo engine gives both seeds of a question the same answer, so their greedy
    # optimizer-phase requests are identical and reach the backend once (engines.dedup):
    # forward N*S distinct requests, then N per optimizer phase.
    backend = [items] + [3] * (phases - 1)
    assert rec["calls"] == {"a": phases, "b": sum(backend), "c": phases}
    assert rec["a"]["requests"] == rec["b"]["requests"] == rec["c"]["requests"] == sum(backend)
    assert rec["sanity"]["requests_a_eq_c"] is True
    assert rec["sanity"]["completion_tokens_c_over_a"] == 1.0  # the fake engine is deterministic
    assert [p["requests"] for p in rec["phase_tokens_a"]] == backend
    assert rec["a"]["prefix_cache_hit_rate"] is None  # the fake engine has no prefix cache


def test_per_call_sample_limits_b_only() -> None:
    config = InnerLoopBenchConfig(questions=2, seeds=2, steps=1, per_call_sample=1)
    rec = run_inner_loop_bench(FakeEngine(), config)
    assert rec["calls"] == {"a": 4, "b": 4, "c": 4}  # b: the first request of each of 4 phases
    assert rec["wall_ratio_b_over_a"] is None


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="questions"):
        InnerLoopBenchConfig(questions=0)
    with pytest.raises(ValueError, match="split"):
        InnerLoopBenchConfig(split="dev")
    assert main(["bench", "inner-loop", "--engine", "fake", "--questions", "1000"]) == 2


def test_wrappers_keep_order_and_count_calls() -> None:
    from engines import GenRequest

    inner = FakeEngine(shuffle=True)
    reqs = [GenRequest.chat(f"q{i}", id=f"r{i}") for i in range(5)]
    rec = RecordingEngine(inner)
    assert [r.text for r in rec.generate(reqs)] == [f"q{i}" for i in range(5)]
    assert rec.batches == [reqs] and inner.usage.calls == 1
    inner.reset_usage()
    out = PerRequestEngine(inner).generate(reqs)
    assert [r.id for r in out] == [r.id for r in reqs]
    assert inner.usage.calls == 5 and [len(b) for b in inner.batches[1:]] == [1] * 5


@pytest.mark.vllm
def test_raw_replay_on_vllm_sends_what_the_engine_sends(vllm_engine) -> None:  # noqa: ANN001
    """c goes below the engine (``LLM.generate`` on ``vllm_inputs``): same requests, same seeded tokens."""
    from engines import GenRequest, SamplingConfig
    from mtg_local.bench.replay import LEVEL_LLM, replay_raw

    phases = [
        [GenRequest.chat(f"Name a colour, number {i}.", sampling=SamplingConfig(temperature=0.7, max_tokens=12, seed=i))
         for i in range(3)],
        [GenRequest.chat("Count to three.", sampling=SamplingConfig(max_tokens=10))],
    ]
    vllm_engine.reset_usage()
    for phase in phases:
        vllm_engine.generate(phase)
    via_engine = vllm_engine.reset_usage()
    raw = replay_raw(vllm_engine, phases)
    assert raw.level == LEVEL_LLM and raw.calls == 2 and raw.requests == 4
    assert (raw.prompt_tokens, raw.completion_tokens) == (via_engine.prompt_tokens, via_engine.completion_tokens)
