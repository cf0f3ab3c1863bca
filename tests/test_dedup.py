"""Identical requests of one batch reach the backend once (engines.dedup), accounting stays exact."""

from __future__ import annotations

from pathlib import Path

from engines import GenRequest, SamplingConfig
from engines.cache import CachedEngine
from engines.dedup import collapse, dedup_key
from engines.fake_engine import FakeEngine


def ask(text: str, id: str, **sampling) -> GenRequest:  # noqa: ANN003
    return GenRequest.chat(text, sampling=SamplingConfig(**sampling), id=id)


def test_identical_requests_reach_the_backend_once_and_fan_out_in_order() -> None:
    eng = FakeEngine(responder=lambda r: f"answer to {r.messages[-1].content}")
    batch = [ask("same question here", f"dup-{i}", temperature=0.7, seed=3) for i in range(5)]
    batch.insert(2, ask("other one", "other", temperature=0.7, seed=3))
    results = eng.generate(batch)
    assert [len(b) for b in eng.batches] == [2]
    assert [r.id for r in eng.batches[0]] == ["dup-0", "other"]  # first occurrence, first-seen order
    assert [r.id for r in results] == [r.id for r in batch]
    assert [r.text for r in results] == ["answer to same question here"] * 2 + ["answer to other one"] + [
        "answer to same question here"
    ] * 3
    assert [r.deduplicated for r in results] == [False, True, False, True, True, True]
    u = eng.usage
    # requests count what the caller sent; tokens count the two generations actually made
    assert (u.requests, u.deduplicated, u.calls) == (6, 4, 1)
    assert u.prompt_tokens == 3 + 2 and u.completion_tokens == 5 + 4
    # the copies' prompt tokens: what the caller asked for, folded into one generation
    assert u.deduplicated_prompt_tokens == 4 * 3


def test_an_engine_told_not_to_deduplicate_sends_every_copy() -> None:
    eng = FakeEngine(responder=lambda r: f"answer to {r.messages[-1].content}")
    eng.deduplicate = False  # what mtg bench peer does for equal work with TextGrad's threads
    batch = [ask("same question here", f"dup-{i}", temperature=0.0, seed=i) for i in range(3)]
    results = eng.generate(batch)
    assert [[r.id for r in b] for b in eng.batches] == [["dup-0", "dup-1", "dup-2"]]
    assert [r.id for r in results] == ["dup-0", "dup-1", "dup-2"] and not any(r.deduplicated for r in results)
    u = eng.usage
    assert (u.requests, u.deduplicated, u.prompt_tokens) == (3, 0, 3 * 3)


def test_differing_seeds_are_not_merged_above_temperature_zero() -> None:
    eng = FakeEngine()
    batch = [ask("q", f"s{s}", temperature=0.7, seed=s) for s in range(4)]
    results = eng.generate(batch)
    assert len(eng.batches[0]) == 4 and eng.usage.deduplicated == 0
    assert not any(r.deduplicated for r in results)


def test_greedy_requests_differing_only_in_seed_are_merged() -> None:
    eng = FakeEngine()
    batch = [ask("q", f"s{s}", temperature=0.0, seed=s) for s in range(4)] + [ask("q", "none", temperature=0.0)]
    results = eng.generate(batch)
    assert [r.id for r in eng.batches[0]] == ["s0"]
    assert [r.id for r in results] == ["s0", "s1", "s2", "s3", "none"]
    assert eng.usage.deduplicated == 4 and eng.usage.requests == 5


def test_other_sampling_fields_and_prefix_keep_requests_apart() -> None:
    base = ask("q", "a", temperature=0.0, max_tokens=10)
    others = [
        ask("q", "b", temperature=0.0, max_tokens=11),
        ask("q", "c", temperature=0.0, max_tokens=10, top_p=0.5),
        GenRequest.chat("q", sampling=SamplingConfig(max_tokens=10), id="d", response_prefix="Step 1:"),
        GenRequest.chat("q", system="judge", sampling=SamplingConfig(max_tokens=10), id="e"),
    ]
    unique, index = collapse([base, *others])
    assert len(unique) == 5 and index == [0, 1, 2, 3, 4]
    assert dedup_key(base) == dedup_key(ask("q", "zzz", temperature=0.0, max_tokens=10, seed=9))


def test_failed_request_fails_every_copy_and_counts_as_errors() -> None:
    eng = FakeEngine(fail_if=lambda r: "boom" if "bad" in r.messages[-1].content else None)
    batch = [ask("bad one", f"b{i}", temperature=0.0, seed=i) for i in range(3)] + [ask("good", "g")]
    results = eng.generate(batch)
    assert [r.error for r in results] == ["boom", "boom", "boom", None]
    assert [r.id for r in results] == ["b0", "b1", "b2", "g"]
    assert eng.usage.errors == 3 and eng.usage.deduplicated == 2


def test_cached_engine_sends_each_distinct_miss_once(tmp_path: Path) -> None:
    inner = FakeEngine()
    eng = CachedEngine(inner, tmp_path / "c.sqlite")
    batch = [ask("q", f"x{i}", temperature=0.0, seed=i) for i in range(3)]
    results = eng.generate(batch)
    assert [len(b) for b in inner.batches] == [1]
    assert [r.id for r in results] == ["x0", "x1", "x2"] and eng.usage.deduplicated == 2
    assert inner.usage.requests == 1
