"""The barrier-free item schedule of the inner loop (``mtg_local.barrier_free``) on the fake engine."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from engines import GenRequest
from engines.cache import CachedEngine
from engines.errors import UserError
from engines.fake_engine import FakeEngine
from mtg_local.barrier_free import ScheduleError, check_item_schedule, require_concurrent_spec
from mtg_local.commands.eval import EvalConfig, run_eval
from mtg_local.inner_loop import InnerItem, InnerLoopConfig, solution_optimization
from mtg_local.meta.meta_config import MetaConfig
from mtg_local.protocol import DEFAULT_PROTOCOL, protocol_hash
from mtg_local.runs.interrupt import Interrupted
from tests.test_inner_loop import Script, make_task

STEPS = 2
LOSS_PROMPTS = ("Evaluate the answer.", "Judge strictly:", "Check the order of words.")


def mixed_items() -> list[InnerItem]:
    """3 questions x 2 seeds, a different loss prompt per question."""
    task = make_task(3)
    return [InnerItem(ex, s, LOSS_PROMPTS[k], "Let's think. ") for k, ex in enumerate(task.splits().test)
            for s in (0, 1)]


def config(schedule: str, **kw) -> InnerLoopConfig:
    # Forward at 0.7 with per-request seeds: the two seeds' requests differ (no batch dedup).
    return InnerLoopConfig(steps=STEPS, temperature=0.7, optimizer_temperature=0.0, schedule=schedule, **kw)


def item_of(request_id: str) -> int:
    return int(request_id.rsplit("-", 1)[1])


def fields(tr) -> tuple:
    return (tr.item, tr.answers, tr.evaluations, tr.gradients, tr.update_errors, tr.errors, tr.score,
            tr.final_answer, tr.extracted, tr.frozen_at, tr.finish_reasons)


def run(schedule: str, engine, items=None, **kw):
    items = items or mixed_items()
    return solution_optimization(make_task(3), items, forward_engine=engine, config=config(schedule, **kw))


class TimedEngine(FakeEngine):
    """Records every request's start/end; a batch holding one of ``slow_items``' requests sleeps ``delay``."""

    def __init__(self, *a, slow_items=(), delay=0.3, **kw):
        super().__init__(*a, **kw)
        self.slow_items, self.delay = set(slow_items), delay
        self.spans: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _generate(self, requests, **kwargs):
        start = time.perf_counter()
        if any(item_of(r.id) in self.slow_items for r in requests):
            time.sleep(self.delay)
        out = super()._generate(requests, **kwargs)
        end = time.perf_counter()
        with self._lock:
            self.spans.update({r.id: (start, end) for r in requests})
        return out


def test_item_schedule_gives_the_phase_schedules_trajectories_and_usage():
    phase_engine, item_engine = FakeEngine(Script()), FakeEngine(Script(), shuffle=True)
    phase, item = run("phase", phase_engine), run("item", item_engine)
    assert [t.item for t in item] == mixed_items()  # item order
    assert [fields(t) for t in item] == [fields(t) for t in phase]
    assert all(len(t.answers) == STEPS + 1 and not t.errors for t in item)
    assert len({t.evaluations[0].split("|")[0] for t in item}) == 3  # each item used its own loss prompt
    pu, iu = phase_engine.usage, item_engine.usage
    assert pu.deduplicated == 0 and iu.deduplicated == 0
    for name in ("requests", "prompt_tokens", "completion_tokens", "errors", "cache_hits"):
        assert getattr(iu, name) == getattr(pu, name), name
    # calls: one generate() per phase under "phase", one per item per phase under "item".
    assert pu.calls == 1 + 3 * STEPS and iu.calls == 6 * (1 + 3 * STEPS)
    assert all(len(b) == 1 for b in item_engine.batches)
    # Same request ids as the phase schedule (item i keeps index i).
    ids = [sorted(r.id for b in e.batches for r in b) for e in (item_engine, phase_engine)]
    assert ids[0] == ids[1]


def test_item_schedule_counts_identical_requests_it_no_longer_deduplicates():
    # Greedy everywhere and a responder blind to seeds: the two seeds of a question send identical requests.
    blind = Script()

    def responder(req: GenRequest) -> str:
        return blind(dataclasses.replace(req, sampling=req.sampling.replace(seed=0)))

    phase_engine, item_engine = FakeEngine(responder), FakeEngine(responder)
    kw = dict(temperature=0.0)
    items = mixed_items()
    phase = solution_optimization(make_task(3), items, forward_engine=phase_engine,
                                  config=dataclasses.replace(config("phase"), **kw))
    item = solution_optimization(make_task(3), items, forward_engine=item_engine,
                                 config=dataclasses.replace(config("item"), **kw))
    assert [fields(t) for t in item] == [fields(t) for t in phase]
    pu, iu = phase_engine.usage, item_engine.usage
    assert pu.deduplicated == 3 * (1 + 3 * STEPS)  # one copy per question per phase
    assert iu.deduplicated == 0 and iu.requests == pu.requests
    # The copies' tokens are really spent under "item": exactly twice the phase schedule's here.
    assert iu.prompt_tokens == 2 * pu.prompt_tokens and iu.completion_tokens == 2 * pu.completion_tokens


def test_item_schedule_does_not_wait_for_a_slow_item():
    items = mixed_items()
    engine = TimedEngine(Script(), slow_items={0})
    run("item", engine, items)
    spans = engine.spans
    slow_first_loss_end = spans["loss-1-0"][1]
    others_last_end = max(end for rid, (_, end) in spans.items() if item_of(rid) != 0)
    assert others_last_end < slow_first_loss_end  # items 1..5 finished every phase first
    assert all(f"upd-{STEPS}-{i}" in spans for i in range(len(items)))

    engine = TimedEngine(Script(), slow_items={0})
    run("phase", engine, items)
    spans = engine.spans
    others_last_end = max(end for rid, (_, end) in spans.items() if item_of(rid) != 0)
    assert others_last_end > spans["loss-1-0"][1]  # each phase waited for item 0


def test_one_items_engine_failure_stays_with_that_item():
    def fail(req: GenRequest) -> str | None:
        return "boom" if req.id == "loss-1-2" else None

    item = run("item", FakeEngine(Script(), fail_if=fail))
    phase = run("phase", FakeEngine(Script(), fail_if=fail))
    assert item[2].errors == ["step 1 loss: boom"]
    assert [k for k, t in enumerate(item) if t.errors] == [2]
    assert all(len(t.answers) == STEPS + 1 for t in item)  # the others (and item 2's step 2) went on
    assert [fields(t) for t in item] == [fields(t) for t in phase]


class SerialEngine(FakeEngine):
    serves_concurrent_calls = False


def test_item_schedule_refuses_an_engine_that_does_not_serve_concurrent_calls():
    engine = SerialEngine(Script())
    engine.spec = "vllm:bundled"
    with pytest.raises(ScheduleError, match=r"'vllm:bundled'.*vllm-async:bundled"):
        run("item", engine)
    assert engine.batches == []  # refused before any request
    with pytest.raises(ScheduleError, match="optimizer engine"):
        solution_optimization(make_task(3), mixed_items(), forward_engine=FakeEngine(Script()),
                              optimizer_engine=engine, config=config("item"))
    # From a spec alone (no model loaded), and through a cache wrapper (as the commands run it).
    with pytest.raises(ScheduleError, match="vllm-async"):
        require_concurrent_spec("vllm:bundled")
    check_item_schedule("fake", "vllm-async:bundled")
    with pytest.raises(ScheduleError):
        check_item_schedule(CachedEngine(SerialEngine(), ":memory:"))
    check_item_schedule(CachedEngine(FakeEngine(), ":memory:"))


def test_schedule_is_validated_and_outside_the_protocol(tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        InnerLoopConfig(schedule="bogus")
    with pytest.raises(UserError, match="schedule"):
        MetaConfig(out="x", schedule="bogus")
    with pytest.raises(UserError, match="--schedule"):
        EvalConfig(out="x", schedule="bogus")
    assert DEFAULT_PROTOCOL.inner_config(schedule="item").schedule == "item"
    assert "schedule" not in DEFAULT_PROTOCOL.to_dict()
    assert MetaConfig(out="x", schedule="item").inner_config().schedule == "item"
    hashes = {}
    for schedule in ("phase", "item"):
        cfg = EvalConfig(out=str(tmp_path / schedule), engine="fake", protocol=DEFAULT_PROTOCOL.replace(
            steps=1, seeds=(0, 1), limit=2), schedule=schedule, progress=False)
        res = run_eval(cfg)
        stored = json.loads((tmp_path / schedule / "results.json").read_text())
        assert stored["schedule"] == schedule and stored["status"] == "complete"
        hashes[schedule] = (stored["protocol_hash"], res["test_accuracy"], stored["engine_usage"]["requests"])
    assert hashes["phase"] == hashes["item"]
    assert hashes["phase"][0] == protocol_hash(DEFAULT_PROTOCOL.replace(steps=1, seeds=(0, 1), limit=2))


def test_eval_refuses_the_item_schedule_on_a_serial_spec_before_writing_anything(tmp_path):
    cfg = EvalConfig(out=str(tmp_path / "run"), engine="vllm:bundled", schedule="item")
    with pytest.raises(ScheduleError, match="vllm-async:bundled"):
        run_eval(cfg)
    assert not (tmp_path / "run").exists()


def test_cached_item_schedule_counts_calls_per_thread_and_replays_from_the_cache(tmp_path):
    path = tmp_path / "cache.sqlite"
    first = CachedEngine(FakeEngine(Script()), path)
    out1 = run("item", first)
    u = first.usage
    assert u.calls == 6 * (1 + 3 * STEPS) and u.cache_hits == 0 and u.requests == u.calls
    again = CachedEngine(FakeEngine(Script()), path)
    out2 = run("item", again)
    u2 = again.usage
    assert u2.calls == 0 and u2.cache_hits == u.requests and u2.prompt_tokens == 0
    assert [fields(t) for t in out2] == [fields(t) for t in out1]


def test_a_stop_in_one_item_stops_the_others_at_their_next_call():
    # Item 0's request raises once the other five items' requests are in flight; those return
    # after the stop, and none of them may start its next phase. Events, not fixed delays, order
    # this, so a loaded machine cannot reorder it.
    in_flight, stopped = threading.Semaphore(0), threading.Event()

    class Stopping(FakeEngine):
        def _generate(self, requests, **kwargs):
            if requests[0].id == "fwd-0":
                assert all(in_flight.acquire(timeout=30) for _ in range(5)), "the other items never started"
                stopped.set()
                raise Interrupted("stop requested", 10)
            if requests[0].id.startswith("fwd-"):
                in_flight.release()
                assert stopped.wait(timeout=30)
                time.sleep(0.3)  # a margin for item 0's exception to leave its thread
            return super()._generate(requests, **kwargs)

    engine = Stopping(Script())
    with pytest.raises(Interrupted, match="stop requested"):
        run("item", engine)
    sent = [r.id for b in engine.batches for r in b]
    assert sorted(sent) == [f"fwd-{i}" for i in range(1, 6)]  # requests in flight finished; no next phase


def test_a_whole_engine_failure_is_raised_like_under_the_phase_schedule():
    class Broken(FakeEngine):
        def _generate(self, requests, **kwargs):
            if requests[0].id == "bwd-1-3":
                raise RuntimeError("engine died")
            return super()._generate(requests, **kwargs)

    with pytest.raises(RuntimeError, match="engine died"):
        run("item", Broken(Script()))


def test_failed_results_are_not_mistaken_for_cancellation():
    # GenResult.failed for every request of one item: recorded on that item, the run completes.
    def fail(req: GenRequest) -> str | None:
        return "down" if item_of(req.id) == 4 else None

    trajs = run("item", FakeEngine(Script(), fail_if=fail))
    assert trajs[4].errors == ["step 0 forward: down"] + [f"step {t} loss: down" for t in range(1, STEPS + 1)]
    assert all(not t.errors for k, t in enumerate(trajs) if k != 4)
