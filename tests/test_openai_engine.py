"""Tests of the OpenAI engine against real HTTP servers on 127.0.0.1.

* the fault-injecting server of ``tests/fault_server.py`` (429 + Retry-After,
  500, slow, malformed JSON): retries, ordering, no lost/duplicated requests,
  per-request errors, deadline, prefix handling, parameter pass-through, and
  that the API key leaks nowhere;
* a real vLLM OpenAI-compatible server with the bundled model (``-m vllm``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from engines import GenRequest, SamplingConfig, create_engine
from engines.cache import CachedEngine
from engines.errors import EngineSpecError, UserError
from engines.openai_engine import MissingAPIKeyError, OpenAIAuthError, OpenAIEngine
from engines.openai_support import Redactor, safe_url, strip_repeated_prefix
from engines.pricing import estimate_cost
from tests.fault_server import (
    ALWAYS_FAIL_MARKER,
    ECHO_AUTH_400_MARKER,
    ECHO_AUTH_401_MARKER,
    FAULT_KINDS,
    FaultServer,
    default_answer,
)

# Fast settings for the fault server: a slow call (1.5 s) outlives the 0.5 s timeout.
FAST = dict(timeout_s=0.5, max_retries=3, backoff_initial_s=0.05, backoff_max_s=0.2, max_concurrency=16)


def _engine(srv: FaultServer, **opts) -> OpenAIEngine:
    return create_engine("openai:fault-model", base_url=srv.base_url, api_key="sk-test-key-0000", **{**FAST, **opts})


def _last_user(body: dict) -> str:
    return [m["content"] for m in body["messages"] if m["role"] == "user"][-1]


# -- (a) the fault run ---------------------------------------------------------
def run_fault_batch(n: int = 100, *, fault_rate: float = 0.35, seed: int = 4) -> tuple[dict, list, FaultServer]:
    """Runs ``n`` chat requests against a fresh fault server; returns (figures, results, server)."""
    with FaultServer(fault_rate=fault_rate, seed=seed, retry_after_s=1, slow_s=1.5) as srv:
        engine = _engine(srv)
        requests = [
            GenRequest.chat(f"item {i}", id=f"q{i}", sampling=SamplingConfig(temperature=0.7, seed=i, max_tokens=32))
            for i in range(n)
        ]
        t0 = time.perf_counter()
        results = engine.generate(requests)
        wall = time.perf_counter() - t0
    figures = {
        "requests": n,
        "answered": sum(r.ok for r in results),
        "errors": sum(not r.ok for r in results),
        "retries": engine.usage.retries,
        "wall_s": round(wall, 2),
        "server_calls": len(srv.calls),
        "faults": srv.fault_counts(),
    }
    return figures, results, srv


def test_fault_run_batch_of_100_completes_without_loss_or_duplicates():
    max_retries = FAST["max_retries"]
    # Seed 4 makes two requests fail 4 times in a row, so both outcomes are checked.
    figures, results, srv = run_fault_batch(100)
    print("\nfault run:", json.dumps(figures))
    faults = figures["faults"]
    assert set(FAULT_KINDS) <= set(faults), faults  # every fault kind was exercised
    assert sum(v for k, v in faults.items() if k != "ok") / len(srv.calls) >= 0.30

    assert [r.id for r in results] == [f"q{i}" for i in range(100)]
    calls_by_item: dict[str, list] = {}
    for c in srv.calls:
        calls_by_item.setdefault(_last_user(c.body), []).append(c)
    assert set(calls_by_item) == {f"item {i}" for i in range(100)}  # none lost
    for i, res in enumerate(results):
        calls = sorted(calls_by_item[f"item {i}"], key=lambda c: c.attempt)
        oks = [c for c in calls if c.fault == "ok"]
        if res.ok:
            # Exactly one good answer, and it was the last call: nothing sent twice.
            assert len(oks) == 1 and calls[-1] is oks[0]
            assert res.text == default_answer(oks[0].body)  # its own answer
            assert res.text.endswith(f"item {i}")
            assert res.completion_tokens == len(res.text.split()) and res.prompt_tokens == 2
        else:
            assert not oks and len(calls) == max_retries + 1, (res, [c.fault for c in calls])
            assert "gave up after 4 attempt(s)" in res.error and res.finish_reason == "error"
    # Every call after the first of an item is one retry, counted once.
    assert figures["retries"] == len(srv.calls) - 100
    assert figures["answered"] + figures["errors"] == 100 and figures["answered"] >= 90 and figures["errors"] >= 1
    # Retry-After: 1 was honoured (backoff alone would wait <= 0.2 s).
    for calls in calls_by_item.values():
        calls.sort(key=lambda c: c.attempt)
        for prev, nxt in zip(calls, calls[1:]):
            if prev.fault == "429":
                assert nxt.t - prev.t >= 0.95, (prev, nxt)


def test_failing_request_gets_error_result_and_the_rest_of_the_batch_completes():
    with FaultServer(fault_rate=0.0) as srv:
        engine = _engine(srv)
        reqs = [GenRequest.chat(f"ok {i}", id=str(i)) for i in range(5)]
        reqs.insert(2, GenRequest.chat(f"bad {ALWAYS_FAIL_MARKER}", id="bad"))
        results = engine.generate(reqs)
    assert [r.id for r in results] == ["0", "1", "bad", "2", "3", "4"]
    bad = results[2]
    assert not bad.ok and "InternalServerError" in bad.error and "4 attempt(s)" in bad.error
    assert all(r.ok for i, r in enumerate(results) if i != 2)
    assert engine.usage.retries == 3 and engine.usage.errors == 1


def test_deadline_bounds_a_request_that_never_answers():
    with FaultServer(fault_rate=0.999, kinds=("slow",), slow_s=3.0) as srv:
        engine = _engine(srv, timeout_s=0.3, deadline_s=1.2, max_retries=50)
        t0 = time.perf_counter()
        [res] = engine.generate([GenRequest.chat("never", id="x")])
        wall = time.perf_counter() - t0
    assert not res.ok and "Timeout" in res.error
    assert wall < 3.0  # the deadline, not 50 retries, ended it
    assert 1 <= engine.usage.retries < 50


# -- prefix, endpoints, parameters --------------------------------------------
def _prefill_answer(body: dict) -> str:
    if body.get("continue_final_message"):
        return "continued"
    return "Answer: " + _last_user(body).split("\n")[0]


@pytest.mark.parametrize("owned_by,prefill,expect_prefill", [("vllm", "auto", True), ("other", "auto", False), ("vllm", False, False)])
def test_response_prefix_prefill_or_instruction(owned_by, prefill, expect_prefill):
    with FaultServer(fault_rate=0.0, owned_by=owned_by, answer=_prefill_answer) as srv:
        engine = _engine(srv, prefill=prefill)
        [res] = engine.generate([GenRequest.chat("what?", id="a", response_prefix="Answer: ")])
        body = [c.body for c in srv.calls if c.body][-1]
    if expect_prefill:
        assert body["messages"][-1] == {"role": "assistant", "content": "Answer: "}
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert res.text == "continued"
    else:
        assert body["messages"][-1]["role"] == "user" and "Answer: " in body["messages"][-1]["content"]
        assert "continue_final_message" not in body
        assert res.text == "what?"  # the repeated prefix was stripped


def test_strip_repeated_prefix():
    assert strip_repeated_prefix("  answer: 42", "Answer:") == " 42"
    assert strip_repeated_prefix("Let's think.\nStep 1", "Let's think.\n") == "Step 1"
    assert strip_repeated_prefix("42", "Answer:") == "42"


def test_prompt_requests_use_completions_and_sampling_is_passed_through():
    with FaultServer(fault_rate=0.0) as srv:
        engine = _engine(srv)
        s = SamplingConfig(temperature=0.3, top_p=0.9, max_tokens=7, stop=("END",), seed=11)
        results = engine.generate(
            [GenRequest(prompt="raw text", id="p", sampling=s, response_prefix=" so"), GenRequest.chat("hi", id="c", sampling=s)]
        )
        bodies = {c.path: c.body for c in srv.calls}
        no_seed = _engine(srv, send_seed=False)
        no_seed.generate([GenRequest.chat("hi again", id="n", sampling=s)])
        last = srv.calls[-1].body
    assert all(r.ok for r in results)
    comp = bodies["/v1/completions"]
    assert comp["prompt"] == "raw text so" and results[0].text.endswith("raw text so")
    chat = bodies["/v1/chat/completions"]
    for body in (comp, chat):
        assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"], body["seed"]) == (0.3, 0.9, 7, ["END"], 11)
    assert "seed" not in last and no_seed.capabilities.per_request_seed is False
    assert engine.capabilities.per_request_seed is True
    assert engine.usage.prompt_tokens == results[0].prompt_tokens + results[1].prompt_tokens > 0


def test_works_from_inside_a_running_event_loop_and_from_threads():
    with FaultServer(fault_rate=0.0) as srv:
        engine = _engine(srv)

        async def inside() -> list:
            return engine.generate([GenRequest.chat("loop", id="l")])

        in_loop = asyncio.run(inside())
        out: list = []
        threads = [threading.Thread(target=lambda i=i: out.extend(engine.generate([GenRequest.chat(f"t{i}", id=f"t{i}")]))) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert in_loop[0].ok and in_loop[0].text.endswith("loop")
    assert sorted(r.id for r in out) == ["t0", "t1", "t2"] and all(r.ok for r in out)
    assert engine.usage.requests == 4


def test_cost_from_api_usage():
    with FaultServer(fault_rate=0.0) as srv:
        engine = create_engine("openai:gpt-4o-mini", base_url=srv.base_url, api_key="sk-x-1234", **FAST)
        engine.generate([GenRequest.chat("one two three", id="a")])
    u = engine.usage
    assert u.prompt_tokens == 3 and u.completion_tokens == 4
    assert engine.cost_usd() == pytest.approx(estimate_cost("gpt-4o-mini", 3, 4)) and engine.cost_usd() > 0
    assert _engine(srv).cost_usd() is None  # unknown model: no price


def test_config_errors_are_user_errors(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        create_engine("openai:gpt-4o-mini")
    with pytest.raises(EngineSpecError, match="max_concurrency must be an integer >= 1, got 0"):
        create_engine("openai:m", base_url="http://127.0.0.1:1/v1", max_concurrency=0)
    with pytest.raises(EngineSpecError, match="unknown option.*temprature"):
        create_engine("openai:m", base_url="http://127.0.0.1:1/v1", temprature=1)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("MY_KEY", "sk-from-env-var-77")
    engine = create_engine("openai:m", api_key_env="MY_KEY")
    assert engine.identity()["base_url"] == "http://127.0.0.1:9/v1" and engine._secret == "sk-from-env-var-77"


# -- (b) the API key leaks nowhere ---------------------------------------------
def test_api_key_never_leaks(tmp_path, caplog, capsys):
    key = f"sk-mtgcanary-{uuid.uuid4().hex}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log_file = logging.FileHandler(run_dir / "debug.log")
    log_file.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(log_file)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    try:
        with FaultServer(fault_rate=0.4, seed=3) as srv:
            inner = create_engine("openai:fault-model", base_url=srv.base_url, api_key=key, **FAST)
            engine = CachedEngine(inner, run_dir / "cache.sqlite")
            reqs = [GenRequest.chat(f"q {i}", id=f"r{i}") for i in range(20)]
            reqs.append(GenRequest.chat(f"x {ECHO_AUTH_400_MARKER}", id="echo400"))
            reqs.append(GenRequest.chat(f"y {ALWAYS_FAIL_MARKER}", id="fail"))
            results = engine.generate(reqs)
            engine.generate(reqs[:5])  # cache hits
            with pytest.raises(OpenAIAuthError) as auth:
                inner.generate([GenRequest.chat(f"z {ECHO_AUTH_401_MARKER}", id="a")])
            texts += [str(auth.value), repr(auth.value)]
            with pytest.raises(UserError) as bad:
                create_engine("openai:m", base_url="ftp://127.0.0.1/v1", api_key=key)
            texts += [str(bad.value)]
            (run_dir / "results.jsonl").write_text("\n".join(json.dumps(r.to_dict()) for r in results))
            (run_dir / "config.json").write_text(
                json.dumps({"engine": dataclasses.asdict(inner.config), "identity": engine.identity(), "usage": engine.usage.to_dict()})
            )
            texts += [repr(engine), repr(inner), json.dumps(inner.identity()), repr(inner.config), str(vars(inner.config))]
            echoed = [c for c in srv.calls if c.fault in ("400", "401")]
            engine.close()
    finally:
        root.removeHandler(log_file)
        log_file.close()
        root.setLevel(old_level)
    # The server did see the key (so the test is not vacuous) ...
    assert echoed and results[20].error and "Authorization" in results[20].error
    assert "[redacted]" in results[20].error and "[redacted]" in str(auth.value)
    assert caplog.records and (run_dir / "cache.sqlite").stat().st_size > 0
    # ... but no file, log, repr or error text holds it.
    captured = capsys.readouterr()
    texts += [caplog.text, captured.out, captured.err] + [r.error or "" for r in results]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 3
    secret = key.encode()
    leaks = [str(p) for p in files if secret in p.read_bytes()] + [t[:80] for t in texts if key in t]
    assert not leaks, leaks
    assert key[13:] not in caplog.text  # not even the random part alone


def test_a_server_that_lowers_max_tokens_to_its_context_gives_context_length():
    # Like a vLLM server: max_tokens is lowered to the room left in the context, the answer says "length".
    long_answer = lambda body: " ".join(["word"] * 50)  # noqa: E731
    with FaultServer(fault_rate=0.0, answer=long_answer, max_model_len=40) as srv:
        engine = _engine(srv)
        prompt = " ".join(["p"] * 30)  # 30 words: 10 left for the answer
        cut, capped, big_cap = engine.generate([
            GenRequest.chat(prompt, id="cut", sampling=SamplingConfig(max_tokens=20)),
            GenRequest.chat(prompt, id="capped", sampling=SamplingConfig(max_tokens=5)),
            GenRequest.chat("short", id="big-cap", sampling=SamplingConfig(max_tokens=60)),
        ])
    assert (cut.finish_reason, cut.completion_tokens) == ("context_length", 10)
    assert (capped.finish_reason, capped.completion_tokens) == ("length", 5)  # its own cap, not the context
    assert (big_cap.finish_reason, big_cap.completion_tokens) == ("context_length", 39)  # 1 + 39 = 40
    assert engine.usage.context_truncated == 2


def test_redactor_and_safe_url():
    scrub = Redactor("abcd-secret")
    text = 'headers: {"Authorization": "Bearer abcd-secret"} api_key=zzz token sk-abcdef123456'
    out = scrub(text)
    assert "abcd-secret" not in out and "zzz" not in out and "sk-abcdef123456" not in out
    assert safe_url("http://user:pw@host:8000/v1?key=1") == "http://host:8000/v1"
    engine = create_engine("openai:m", base_url="http://user:pw-in-url-99@127.0.0.1:9/v1", api_key="sk-k-1234")
    shown = [json.dumps(dataclasses.asdict(engine.config)), json.dumps(engine.identity()), repr(engine)]
    assert not [t for t in shown if "pw-in-url-99" in t] and engine.config.base_url == "http://127.0.0.1:9/v1"


# -- (c) a real vLLM OpenAI-compatible server (``vllm_server``, tests/conftest.py) ------

@pytest.mark.vllm
def test_real_vllm_server_batch_of_32(vllm_server):
    engine = create_engine(
        "openai:smollm2", base_url=vllm_server.base_url, max_concurrency=32, timeout_s=300, send_seed=False
    )
    sampling = SamplingConfig(temperature=0.0, max_tokens=24)
    words = ["apple", "river", "mountain", "violin", "copper", "garden", "winter", "rocket"]
    reqs = [GenRequest.chat(f"Repeat the word '{words[i % 8]}' {i // 8 + 1} times.", id=f"v{i}", sampling=sampling) for i in range(32)]
    results = engine.generate(reqs)
    assert [r.id for r in results] == [r.id for r in reqs]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert all(r.text.strip() and r.prompt_tokens > 0 and 0 < r.completion_tokens <= 24 for r in results)
    u = engine.usage
    assert u.requests == 32 and u.completion_tokens == sum(r.completion_tokens for r in results)
    assert u.prompt_tokens == sum(r.prompt_tokens for r in results) and u.retries == 0
    # Greedy: the same request gives the same text, so order is really preserved.
    again = engine.generate([reqs[5], reqs[0]])
    assert [a.text for a in again] == [results[5].text, results[0].text]
    print(f"\nvllm server: 32 requests, {u.completion_tokens} completion tokens in {u.wall_s:.1f}s")


@pytest.mark.vllm
def test_real_vllm_server_prefill_detected(vllm_server):
    engine = create_engine("openai:smollm2", base_url=vllm_server.base_url, timeout_s=300, send_seed=False)
    sampling = SamplingConfig(temperature=0.0, max_tokens=8)
    [res] = engine.generate([GenRequest.chat("What is 2+2?", id="p", sampling=sampling, response_prefix="The answer is")])
    assert res.ok and engine._prefill_detected is True
    assert not res.text.lower().lstrip().startswith("the answer is")  # a continuation, not a restart


@pytest.mark.vllm
def test_real_vllm_server_context_cut_is_context_length(vllm_server):
    """vLLM's server lowers max_tokens to the room its context leaves; the engine reports that cut."""
    engine = create_engine("openai:smollm2", base_url=vllm_server.base_url, timeout_s=300, send_seed=False)
    sampling = SamplingConfig(temperature=0.0, max_tokens=64)
    # ~2030 prompt tokens of a 2048 context: less room than max_tokens, and a text the model continues.
    prompt = "Count on: " + " ".join(str(i % 10) for i in range(1015))
    [res] = engine.generate([GenRequest(prompt=prompt, id="long", sampling=sampling)])
    assert res.ok and res.prompt_tokens + res.completion_tokens == 2048, (res.prompt_tokens, res.completion_tokens)
    assert res.completion_tokens < 64 and res.finish_reason == "context_length"
    assert engine.usage.context_truncated == 1
