"""The batched inner loop (TextGrad solution optimization) on the fake engine.

A scripted responder plays every phase: the forward answer names its question
id, seed and version ("v0"); each accepted update bumps the version. So every
trajectory can be checked to hold its own item's outputs, in order, even when
the engine works through a batch in shuffled order.
"""

from __future__ import annotations

import re

import pytest

from engines import GenRequest
from engines.fake_engine import FakeEngine
from mtg_local import metrics
from mtg_local.inner_loop import (
    DEFAULT_TEMPLATE,
    InnerItem,
    InnerLoopConfig,
    Trajectory,
    derive_seed,
    solution_optimization,
)
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.tasks.base import Example, Splits
from mtg_local.tasks.word_sorting import INITIAL_LOSS_PROMPT, WordSortingTask
from mtg_local.zero_shot_cot import zero_shot_cot

GOLD = "apple banana"
WRONG = "banana apple"


def make_task(n: int) -> WordSortingTask:
    ex = tuple(Example(id=f"q{k}", question=f"QID-{k}: sort banana apple", answer=GOLD) for k in range(n))
    return WordSortingTask(Splits(ex, ex, ex))


def items_for(task: WordSortingTask, seeds: list[int], *, loss_prompt: str = INITIAL_LOSS_PROMPT,
              template: str = DEFAULT_TEMPLATE) -> list[InnerItem]:
    return [InnerItem(ex, s, loss_prompt, template) for ex in task.splits().test for s in seeds]


def system_of(req: GenRequest) -> str | None:
    return req.messages[0].content if req.messages[0].role == "system" else None


def variable_of(req: GenRequest) -> str:
    """The variable span of a backward or update prompt (TextGrad pads it with a space each side)."""
    return re.search(r"<VARIABLE> (.*?) </VARIABLE>", req.messages[-1].content, re.S).group(1)


class Script:
    """Responder for all phases; ``words(qid, version)`` picks each answer's final line."""

    def __init__(self, words=lambda q, v: GOLD, bad_update=lambda req: False, same_update=False):
        self.words, self.bad_update, self.same_update = words, bad_update, same_update

    def __call__(self, req: GenRequest) -> str:
        sys, user = system_of(req), req.messages[-1].content
        if sys == P.OPTIMIZER_SYSTEM_PROMPT:
            var = variable_of(req)
            q, v = re.search(r"QID-\d+", var).group(0), int(re.search(r" v(\d+)", var).group(1))
            if self.bad_update(req):
                return "I think it is fine as it is."
            if self.same_update:
                return var + P.IMPROVED_VARIABLE_END
            head = re.sub(r" v\d+.*", f" v{v + 1}", var, flags=re.S)
            return f"{head}\nAnswer: {self.words(q, v + 1)}{P.IMPROVED_VARIABLE_END}"
        if sys == P.BACKWARD_SYSTEM_PROMPT:
            return f"grad[{variable_of(req)}]"
        q = re.search(r"QID-\d+", user).group(0)
        if sys == P.LOSS_SYSTEM_PROMPT:
            loss_prompt, answer = user.split("\nQuestion: ", 1)[0], user.split("\nAnswer by the language model: ", 1)[1]
            return f"eval[{loss_prompt[:6]}|{answer}]"
        return f"{q} s{req.sampling.seed} v0\nAnswer: {self.words(q, 0)}"


def check_slots(trajs: list[Trajectory], items: list[InnerItem], steps: int) -> None:
    for tr, it in zip(trajs, items):
        assert tr.item is it
        q = it.example.question.split(":")[0]
        assert len(tr.answers) == steps + 1
        for t, a in enumerate(tr.answers):
            assert a.startswith(it.template + f"{q} s{it.seed} v{t}\n"), (t, a)
        for t in range(steps):
            assert tr.evaluations[t].endswith(f"|{tr.answers[t]}]")
            assert tr.gradients[t] == f"grad[{tr.answers[t]}]"
            assert tr.update_errors[t] is None


@pytest.mark.parametrize("n, seeds, steps", [(1, [0], 0), (1, [0], 1), (3, [0, 1], 2), (5, [0, 1, 2], 3), (2, [7], 4)])
def test_call_count_and_slots(n: int, seeds: list[int], steps: int) -> None:
    task = make_task(n)
    items = items_for(task, seeds)
    engine = FakeEngine(Script(), shuffle=True)
    trajs = solution_optimization(task, items, forward_engine=engine, config=InnerLoopConfig(steps=steps))
    assert engine.usage.calls == 1 + 3 * steps == len(engine.batches)
    assert all(len(b) == n * len(seeds) for b in engine.batches)
    check_slots(trajs, items, steps)
    assert all(tr.score == 1.0 and tr.extracted == GOLD and tr.errors == [] for tr in trajs)


def test_separate_optimizer_engine_takes_the_optimizer_phases() -> None:
    task = make_task(2)
    fwd, opt = FakeEngine(Script(), shuffle=True), FakeEngine(Script(), shuffle=True)
    items = items_for(task, [0, 1])
    trajs = solution_optimization(task, items, forward_engine=fwd, optimizer_engine=opt, config=InnerLoopConfig(steps=2))
    assert fwd.usage.calls == 1 and opt.usage.calls == 6
    check_slots(trajs, items, 2)


def test_seeds_forward_and_derived() -> None:
    task = make_task(2)
    items = items_for(task, [0, 5])
    engine = FakeEngine(Script())
    solution_optimization(task, items, forward_engine=engine, config=InnerLoopConfig(steps=1))
    by_id = {r.id: r for b in engine.batches for r in b}
    for i, it in enumerate(items):
        assert by_id[f"fwd-{i}"].sampling.seed == it.seed
        for phase, pid in (("loss", "loss"), ("backward", "bwd"), ("update", "upd")):
            assert by_id[f"{pid}-1-{i}"].sampling.seed == derive_seed(it.seed, phase, 1)
    assert len({derive_seed(0, p, t) for p in ("loss", "backward", "update") for t in (1, 2)}) == 6
    assert derive_seed(3, "loss", 1) == derive_seed(3, "loss", 1) < 2**31


def test_malformed_update_for_one_item_keeps_previous_and_continues() -> None:
    task = make_task(3)
    items = items_for(task, [0])
    engine = FakeEngine(Script(bad_update=lambda req: req.id == "upd-1-1"), shuffle=True)
    trajs = solution_optimization(task, items, forward_engine=engine, config=InnerLoopConfig(steps=2))
    assert engine.usage.calls == 7
    bad = trajs[1]
    assert bad.answers[1] == bad.answers[0] and "no </IMPROVED_VARIABLE>" in bad.update_errors[0]
    assert bad.errors == [] and bad.update_errors[1] is None and " v1\n" in bad.answers[2]
    for tr in (trajs[0], trajs[2]):
        assert [(" v%d\n" % t) in a for t, a in enumerate(tr.answers)] == [True, True, True]


@pytest.mark.parametrize("freeze", ["never", "error"])
def test_engine_error_for_one_item_does_not_stop_others(freeze: str) -> None:
    task = make_task(3)
    items = items_for(task, [0, 1])

    def fail(req: GenRequest) -> str | None:
        return "loss backend hiccup" if req.id == "loss-1-5" else None  # QID-2, seed 1, step 1

    engine = FakeEngine(Script(), shuffle=True, fail_if=fail)
    trajs = solution_optimization(task, items, forward_engine=engine, config=InnerLoopConfig(steps=3, freeze_when=freeze))
    assert engine.usage.calls == 10
    hit = trajs[5]  # QID-2, seed 1
    assert hit.errors == ["step 1 loss: loss backend hiccup"]
    assert hit.update_errors[0] == "skipped: the loss call failed"
    assert hit.answers[1] == hit.answers[0]
    if freeze == "error":
        assert hit.frozen_at == 1 and len(hit.answers) == 2
        assert [len(b) for b in engine.batches] == [6, 6, 5, 5] + [5, 5, 5] * 2
    else:
        assert hit.frozen_at is None and len(hit.answers) == 4 and " v2\n" in hit.answers[3]
    check_slots(trajs[:5], items[:5], 3)


def test_forward_error_with_error_freezing() -> None:
    task = make_task(2)
    items = items_for(task, [0])
    engine = FakeEngine(Script(), fail_if=lambda r: "down" if system_of(r) is None and "QID-0" in r.messages[-1].content else None)
    trajs = solution_optimization(task, items, forward_engine=engine, config=InnerLoopConfig(steps=2, freeze_when="error"))
    assert trajs[0].frozen_at == 0 and trajs[0].answers == [DEFAULT_TEMPLATE] and trajs[0].score == 0.0
    assert engine.usage.calls == 7 and all(len(b) == 1 for b in engine.batches[1:])
    check_slots(trajs[1:], items[1:], 2)


def test_two_loss_prompts_and_templates_in_one_batch() -> None:
    task = make_task(3)
    a = items_for(task, [0, 1], loss_prompt="LOSS-A judge it", template="TA| ")
    b = items_for(task, [0, 1], loss_prompt="LOSS-B judge it", template="TB| ")
    items = [x for pair in zip(a, b) for x in pair]
    engine = FakeEngine(Script(), shuffle=True)
    trajs = solution_optimization(task, items, forward_engine=engine, config=InnerLoopConfig(steps=2))
    assert engine.usage.calls == 7 and all(len(batch) == 12 for batch in engine.batches)
    check_slots(trajs, items, 2)
    for tr in trajs:
        tag = tr.item.loss_prompt[:6]
        assert all(e.startswith(f"eval[{tag}|") for e in tr.evaluations)
    loss_batch = engine.batches[1]
    assert {system_of(r) for r in loss_batch} == {P.LOSS_SYSTEM_PROMPT}
    heads = [r.messages[-1].content.split("\nQuestion: ")[0] for r in loss_batch]
    assert set(heads) == {"LOSS-A judge it", "LOSS-B judge it"}
    # prefix-cache order: requests with the same loss prompt sit together
    assert heads == sorted(heads)


def test_zero_shot_cot_is_one_call() -> None:
    task = make_task(4)
    items = items_for(task, [0, 1, 2])
    engine = FakeEngine(Script(), shuffle=True)
    trajs = zero_shot_cot(task, items, engine=engine, config=InnerLoopConfig(steps=3, majority_vote=True))
    assert engine.usage.calls == 1 and len(engine.batches[0]) == 12
    check_slots(trajs, items, 0)
    assert metrics.accuracy_by_seed(trajs) == {0: 1.0, 1: 1.0, 2: 1.0}


def test_majority_vote_over_the_trajectory() -> None:
    task = make_task(1)
    words = lambda q, v: GOLD if v < 2 else WRONG  # noqa: E731  (v0, v1 right; v2 wrong)
    items = items_for(task, [0])
    last = solution_optimization(task, items, forward_engine=FakeEngine(Script(words)), config=InnerLoopConfig(steps=2))
    vote = solution_optimization(
        task, items, forward_engine=FakeEngine(Script(words)), config=InnerLoopConfig(steps=2, majority_vote=True)
    )
    assert last[0].score == 0.0 and last[0].extracted == "banana apple"
    assert vote[0].score == 1.0 and vote[0].final_answer == vote[0].answers[1]


def test_freeze_when_unchanged_drops_item_from_later_phases() -> None:
    task = make_task(2)
    engine = FakeEngine(Script(same_update=True))
    trajs = solution_optimization(
        task, items_for(task, [0]), forward_engine=engine, config=InnerLoopConfig(steps=3, freeze_when="unchanged")
    )
    assert all(tr.frozen_at == 1 and len(tr.answers) == 2 for tr in trajs)
    assert engine.usage.calls == 4  # nothing active after step 1: empty phases make no call


@pytest.mark.parametrize("keep", [True, False])
def test_update_that_loses_the_answer_format(keep: bool) -> None:
    task = make_task(2)

    class Formatless(Script):
        def __call__(self, req: GenRequest) -> str:
            if system_of(req) == P.OPTIMIZER_SYSTEM_PROMPT and "QID-0" in variable_of(req):
                return f"The improved variable{P.IMPROVED_VARIABLE_END}"
            return super().__call__(req)

    trajs = solution_optimization(
        task, items_for(task, [0]), forward_engine=FakeEngine(Formatless()),
        config=InnerLoopConfig(steps=1, keep_answer_format=keep),
    )
    if keep:
        assert "no answer in the task's format" in trajs[0].update_errors[0]
        assert trajs[0].answers[1] == trajs[0].answers[0] and trajs[0].score == 1.0
    else:
        assert trajs[0].update_errors[0] is None and trajs[0].answers[1] == "The improved variable"
        assert trajs[0].score == 0.0
    assert trajs[1].update_errors == [None] and " v1\n" in trajs[1].answers[1]


def test_no_items_no_calls() -> None:
    engine = FakeEngine()
    assert solution_optimization(make_task(1), [], forward_engine=engine, config=InnerLoopConfig()) == []
    assert engine.usage.calls == 0


def test_trajectory_to_dict_is_json_ready() -> None:
    import json

    task = make_task(1)
    (tr,) = solution_optimization(task, items_for(task, [3]), forward_engine=FakeEngine(Script()), config=InnerLoopConfig(steps=1))
    d = json.loads(json.dumps(tr.to_dict()))
    assert d["example_id"] == "q0" and d["seed"] == 3 and d["gold"] == GOLD and len(d["answers"]) == 2
    assert d["score"] == 1.0 and d["frozen_at"] is None


@pytest.mark.parametrize(
    "kwargs", [dict(steps=-1), dict(freeze_when="sometimes"), dict(max_tokens=0), dict(temperature=-0.1)]
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        InnerLoopConfig(**kwargs)


def test_metrics() -> None:
    assert metrics.majority_vote([None, "a", "b", "b", "a"]) == 4  # tie -> latest
    assert metrics.majority_vote(["a", "b", "a", None]) == 2
    assert metrics.majority_vote([None, None]) is None
    s = metrics.summarize({0: 0.5, 1: 1.0, 2: 0.0})
    assert s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(0.5) and s["n"] == 3
    assert s["per_seed"] == {"0": 0.5, "1": 1.0, "2": 0.0}
    assert metrics.summarize({}) == {"mean": 0.0, "std": 0.0, "per_seed": {}, "n": 0}
