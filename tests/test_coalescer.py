"""RequestCoalescer: many threads, few engine calls, results to the right caller."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engines.base import GenRequest, GenResult
from engines.coalescer import (
    CoalescerClosedError,
    CoalescerConfig,
    GenerationFailedError,
    RequestCoalescer,
)
from engines.errors import EngineError
from engines.fake_engine import FakeEngine


class SlowEngine(FakeEngine):
    """Echo engine with a per-call latency that records the calling thread of every call."""

    def __init__(self, latency_s: float = 0.03, **kw) -> None:
        super().__init__(**kw)
        self.latency_s = latency_s
        self.thread_ids: list[int] = []
        self.explode_when: str | None = None  # a request text that makes the whole call raise

    def _generate(self, requests, **kwargs):
        self.thread_ids.append(threading.get_ident())
        time.sleep(self.latency_s)
        if self.explode_when and any(self.explode_when in (r.messages[-1].content) for r in requests):
            raise EngineError("backend died")
        return super()._generate(requests, **kwargs)


def _req(text: str, rid: str = "") -> GenRequest:
    return GenRequest.chat(text, id=rid or text)


def _hammer(co: RequestCoalescer, n: int, text=lambda i: f"q{i}"):
    """n threads released together by a barrier, each calling once; returns {i: result-or-exception}."""
    barrier = threading.Barrier(n)
    out: dict[int, object] = {}

    def call(i: int) -> None:
        barrier.wait()
        try:
            out[i] = co.generate_one(_req(text(i), f"id-{i}"))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            out[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_32_threads_make_few_backend_calls_and_get_their_own_results():
    engine = SlowEngine(latency_s=0.03, shuffle=True)
    with RequestCoalescer(engine, CoalescerConfig(window_s=0.05)) as co:
        out = _hammer(co, 32)
        stats = co.stats
    # All 32 threads leave the barrier within a few ms. The first batch closes
    # 50 ms after the first arrival, so it holds every thread that submitted
    # in that window; a late thread (descheduled on a busy 2-core machine)
    # lands in a later batch that again waits 50 ms (+30 ms engine latency).
    # Three stragglers' batches on top of the first is a generous bound.
    assert engine.usage.calls == stats.batches <= 4
    assert sum(stats.batch_sizes) == 32
    for i in range(32):
        res = out[i]
        assert isinstance(res, GenResult), res
        assert res.id == f"id-{i}" and res.text == f"q{i}"
    # Only the worker thread ever called the engine.
    assert len(set(engine.thread_ids)) == 1
    assert engine.thread_ids[0] not in {threading.get_ident()}


def test_error_result_reaches_only_its_caller():
    engine = SlowEngine(latency_s=0.01, fail_if=lambda r: "bad" if r.messages[-1].content == "q7" else None)
    with RequestCoalescer(engine, CoalescerConfig(window_s=0.05)) as co:
        out = _hammer(co, 16)
    assert isinstance(out[7], GenerationFailedError)
    assert out[7].result.error == "bad"
    assert all(isinstance(out[i], GenResult) and out[i].ok for i in range(16) if i != 7)


def test_backend_exception_reaches_only_callers_in_that_batch():
    engine = SlowEngine(latency_s=0.01)
    engine.explode_when = "boom"
    with RequestCoalescer(engine, CoalescerConfig(window_s=0.0)) as co:
        with pytest.raises(EngineError, match="backend died"):
            co.generate([_req("boom")])
        # the worker survives and serves the next batch
        assert co.generate([_req("fine")])[0].text == "fine"
        assert co.stats.backend_failures == 1


def test_submission_is_kept_together_and_order_is_preserved():
    engine = SlowEngine(latency_s=0.0)
    with RequestCoalescer(engine, CoalescerConfig(window_s=0.0, max_batch=2)) as co:
        reqs = [_req(f"t{i}") for i in range(5)]
        res = co.generate(reqs)
    assert [r.text for r in res] == [f"t{i}" for i in range(5)]
    assert engine.usage.calls == 1  # a submission larger than max_batch still goes whole


def test_max_batch_splits_many_submissions():
    engine = SlowEngine(latency_s=0.02)
    with RequestCoalescer(engine, CoalescerConfig(window_s=0.2, max_batch=4)) as co:
        with ThreadPoolExecutor(12) as ex:
            results = list(ex.map(lambda i: co.generate_one(_req(f"m{i}")).text, range(12)))
        sizes = co.stats.batch_sizes
    assert results == [f"m{i}" for i in range(12)]
    assert max(sizes) <= 4 and sum(sizes) == 12


def test_close_is_clean_and_idempotent():
    engine = SlowEngine(latency_s=0.0)
    co = RequestCoalescer(engine)
    fut = co.submit([_req("x")])
    co.close()
    co.close()
    assert fut.result(5)[0].text == "x"  # queued work is still served
    assert not co._worker.is_alive()
    with pytest.raises(CoalescerClosedError):
        co.submit([_req("y")])


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="window_s"):
        CoalescerConfig(window_s=-1)
    with pytest.raises(ValueError, match="max_batch"):
        CoalescerConfig(max_batch=0)
