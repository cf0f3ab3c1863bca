"""The chained (KV-reuse) prompt layout: each phase's prompt extends the previous one.

The inner loop runs on a fake engine behind a recording wrapper; the tests
compare the recorded message lists phase by phase, count the engine calls,
break single requests, and run the protocol and a meta loop with the layout.
"""

from __future__ import annotations

import argparse
import re

import pytest

from engines import GenRequest, Message
from engines.fake_engine import FakeEngine
from meta_fakes import ScriptedMetaEngine, meta_config
from mtg_local.bench.inner_loop_bench import InnerLoopBenchConfig, run_inner_loop_bench
from mtg_local.protocol_flags import add_protocol_args, protocol_from_args
from mtg_local.inner_loop import DEFAULT_TEMPLATE, InnerItem, InnerLoopConfig, solution_optimization
from mtg_local.meta import run_train
from mtg_local.prompts import chained_prompts as C
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.protocol import DEFAULT_PROTOCOL, Protocol, protocol_hash
from mtg_local.tasks import get_task

_LIST = re.compile(r"List: ([a-z' \-]+)")
END = P.IMPROVED_VARIABLE_END


def _words(req: GenRequest) -> list[str]:
    """The word list of the question the request is about (the first user turn)."""
    question = next(m.content for m in req.messages if m.role == "user")
    return _LIST.search(question).group(1).split()


def _respond(req: GenRequest) -> str:
    """Phase-aware answers that depend on the request's own text."""
    last = req.messages[-1]
    words = _words(req)
    if req.response_prefix == P.IMPROVED_VARIABLE_START:  # update
        return f"fixed it.\nAnswer: {' '.join(sorted(words))}{END}"
    if last.content == C.BACKWARD_INSTRUCTION:
        return f"feedback: sort {words[0]} properly"
    if last.content.endswith(C.LOSS_REQUEST):
        return f"evaluation under [{last.content.split(chr(10), 1)[0]}] of {words[0]}"
    # forward: wrong order; the seed keeps each item's requests distinct (identical greedy
    # requests of one batch are generated once, engines.dedup, and would fail together)
    return f"sorting (seed {req.sampling.seed}).\nAnswer: {' '.join(reversed(sorted(words)))}"


def _items(task, n_questions: int = 2, seeds=(0, 1)) -> list[InnerItem]:
    exs = task.splits().test[:n_questions]
    return [InnerItem(ex, s, f"LOSS-{q}: judge the sorting.", DEFAULT_TEMPLATE)
            for q, ex in enumerate(exs) for s in seeds]


class Recorder:
    """Records every ``generate`` call as sent (before the engine folds identical requests)."""

    def __init__(self, inner: FakeEngine) -> None:
        self.inner, self.capabilities, self.batches = inner, inner.capabilities, []

    def generate(self, requests, /, **kwargs):
        self.batches.append(list(requests))
        return self.inner.generate(requests, **kwargs)


def _run(engine, items, task, **kw):
    config = InnerLoopConfig(prompt_layout="chained", **kw)
    rec = Recorder(engine)
    trajs = solution_optimization(task, items, forward_engine=rec, config=config)
    by_id = {r.id: r for batch in rec.batches for r in batch}
    return trajs, by_id, rec


@pytest.mark.parametrize("system_prompt", [None, "You sort words."])
def test_every_phase_extends_the_previous_conversation(system_prompt: str | None) -> None:
    task = get_task("synthetic_word_sorting")
    items = _items(task)
    steps = 2
    trajs, req, _ = _run(FakeEngine(_respond), items, task, steps=steps, system_prompt=system_prompt)
    for i, tr in enumerate(trajs):
        fwd = req[f"fwd-{i}"].messages
        head = ([Message("system", system_prompt)] if system_prompt else []) + [
            Message("user", task.format_question(items[i].example))]
        assert list(fwd) == head and req[f"fwd-{i}"].response_prefix == DEFAULT_TEMPLATE
        assert tr.answers[0].startswith(DEFAULT_TEMPLATE)
        for t in range(1, steps + 1):
            loss, bwd, upd = (req[f"{p}-{t}-{i}"] for p in ("loss", "bwd", "upd"))
            # each step restarts from [system?, question, answer_t]: no earlier critiques
            assert loss.messages[: len(fwd) + 1] == (*fwd, Message("assistant", tr.answers[t - 1]))
            assert len(loss.messages) == len(fwd) + 2 and loss.messages[-1].role == "user"
            assert loss.messages[-1].content == f"{items[i].loss_prompt}\n\n{C.LOSS_REQUEST}"  # theta_L heads it
            assert bwd.messages == (*loss.messages, Message("assistant", tr.evaluations[t - 1]),
                                    Message("user", C.BACKWARD_INSTRUCTION))
            assert upd.messages[: len(bwd.messages) + 1] == (*bwd.messages, Message("assistant", tr.gradients[t - 1]))
            assert len(upd.messages) == len(bwd.messages) + 2
            assert f"<CONSTRAINTS>{task.format_instruction}</CONSTRAINTS>" in upd.messages[-1].content
            assert upd.response_prefix == P.IMPROVED_VARIABLE_START and not loss.response_prefix
        assert tr.answers[1] != tr.answers[0] and tr.answers[2] == tr.answers[1]  # parsed from the tags


def test_results_in_item_order_and_exact_accounting() -> None:
    task = get_task("synthetic_word_sorting")
    items = _items(task)  # 2 questions x 2 seeds, one loss prompt per question
    steps = 2
    engine = FakeEngine(_respond, shuffle=True)
    trajs, req, rec = _run(engine, items, task, steps=steps)
    assert engine.usage.requests == (1 + 3 * steps) * len(items)
    assert engine.usage.calls == 1 + 3 * steps == len(rec.batches)
    assert [len(b) for b in rec.batches] == [len(items)] * (1 + 3 * steps)
    for i, (it, tr) in enumerate(zip(items, trajs)):
        assert tr.item is it
        words = it.example.question.rsplit("List: ", 1)[-1].split()
        assert len(tr.answers) == steps + 1 and len(tr.evaluations) == len(tr.gradients) == steps
        assert tr.evaluations[0] == f"evaluation under [{it.loss_prompt}] of {words[0]}"
        assert tr.gradients[0] == f"feedback: sort {words[0]} properly"
        assert tr.update_errors == [None, None] and tr.errors == []
        assert tr.answers[1] == f"fixed it.\nAnswer: {' '.join(sorted(words))}"
        assert tr.score == 1.0 and tr.extracted is not None
        assert {k: len(v) for k, v in tr.finish_reasons.items()} == {
            "forward": 1, "loss": steps, "backward": steps, "update": steps}


def test_one_failed_loss_and_one_failed_update_spare_the_others() -> None:
    task = get_task("synthetic_word_sorting")
    items = _items(task)
    broken = {"loss-1-0": "loss down", "upd-1-1": "update down"}
    engine = FakeEngine(_respond, fail_if=lambda r: broken.get(r.id))
    trajs, req, rec = _run(engine, items, task, steps=1)
    assert [len(b) for b in rec.batches] == [4, 4, 3, 3]  # item 0 sends no backward/update
    t0, t1 = trajs[0], trajs[1]
    assert t0.errors == ["step 1 loss: loss down"] and t0.update_errors == ["skipped: the loss call failed"]
    assert t0.answers[1] == t0.answers[0] and t0.finish_reasons["loss"] == ["error"]
    assert t0.finish_reasons["backward"] == [] and t0.finish_reasons["update"] == []
    assert "upd-1-0" not in req and "bwd-1-0" not in req
    assert t1.errors == ["step 1 update: optimizer engine error: update down"]
    assert t1.answers[1] == t1.answers[0] and t1.gradients[0].startswith("feedback:")
    for tr in trajs[2:]:
        assert tr.errors == [] and tr.update_errors == [None] and tr.score == 1.0


def test_a_truncated_or_tagless_update_keeps_the_answer() -> None:
    task = get_task("synthetic_word_sorting")
    items = _items(task, 1, (0,))

    def respond(req: GenRequest) -> str:
        return "no tags here" if req.response_prefix else _respond(req)

    trajs, _, _ = _run(FakeEngine(respond), items, task, steps=1, prefill_update_tag=False)
    assert trajs[0].answers[1] == trajs[0].answers[0]
    assert trajs[0].update_errors[0].startswith("no <IMPROVED_VARIABLE> tag")


def test_layout_is_validated_and_default_is_textgrad() -> None:
    assert InnerLoopConfig().prompt_layout == "textgrad"
    with pytest.raises(ValueError, match="prompt_layout must be one of textgrad, chained"):
        InnerLoopConfig(prompt_layout="kv")


# -- protocol -----------------------------------------------------------------------
def test_protocol_field_hash_and_validation() -> None:
    chained = Protocol(prompt_layout="chained")
    assert protocol_hash(chained) != protocol_hash(DEFAULT_PROTOCOL)
    assert chained.inner_config().prompt_layout == "chained"
    assert DEFAULT_PROTOCOL.inner_config().prompt_layout == "textgrad"
    # Hashes of the commit before the field existed (6ca3349): runs that do not use it keep theirs
    # (with the settings of that time; prompts, prefill, parsing and the meta step changed later, issue 19).
    before_19 = dict(prompts="mtg-reworded", prefill_update_tag=True, update_parsing="tolerant",
                     meta_step="direct")
    assert protocol_hash(DEFAULT_PROTOCOL.replace(**before_19)) == "29e6eb4adcc3"
    assert protocol_hash(Protocol(steps=1, seeds=(0,), **before_19)) == "48d9b18c39d4"
    assert "prompt_layout" not in DEFAULT_PROTOCOL.to_dict()
    assert chained.to_dict()["prompt_layout"] == "chained"
    assert Protocol.from_dict(chained.to_dict()) == chained
    assert Protocol.from_dict(DEFAULT_PROTOCOL.to_dict()) == DEFAULT_PROTOCOL
    with pytest.raises(ValueError, match="prompt_layout must be one of textgrad, chained, got 'kv'"):
        Protocol(prompt_layout="kv")


def test_cli_flag_and_docs() -> None:
    parser = argparse.ArgumentParser()
    add_protocol_args(parser)
    assert protocol_from_args(parser.parse_args([])).prompt_layout == "textgrad"
    assert protocol_from_args(parser.parse_args(["--prompt-layout", "chained"])).prompt_layout == "chained"
    with pytest.raises(SystemExit):
        parser.parse_args(["--prompt-layout", "kv"])
    from pathlib import Path

    assert "`prompt_layout`" in (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


# -- consumers ----------------------------------------------------------------------
def test_learned_loss_meta_loop_runs_with_the_chained_layout(tmp_path) -> None:
    engine = ScriptedMetaEngine({(2, "loss_prompt")})
    config = meta_config(out=str(tmp_path / "ll"), method="learned_loss", engine="scripted", seeds=(0, 1),
                         outer_steps=2, minibatch=2, steps=1, limit=3, max_tokens=64, optimizer_max_tokens=64,
                         meta_max_tokens=64, no_cache=True, progress=False, answer_selection="last",
                         keep_answer_format=True, prompt_layout="chained")
    res = run_train(config, engine=engine)
    # Same outcome as the TextGrad layout's test: step 1 reverted, step 2 accepted.
    assert [(h["step"], h["accepted"]) for h in res["history"]] == [(0, True), (1, False), (2, True)]
    assert [h["val_accuracy"] for h in res["history"]] == [0.0, 0.0, 1.0]
    assert res["protocol"]["prompt_layout"] == "chained"
    inner_losses = [r for b in engine.batches for r in b if r.messages[-1].content.endswith(C.LOSS_REQUEST)]
    assert inner_losses and all(r.messages[-2].role == "assistant" for r in inner_losses)
    assert not any(m.content == P.LOSS_SYSTEM_PROMPT for b in engine.batches for r in b for m in r.messages)


def test_bench_runs_the_chained_layout() -> None:
    config = InnerLoopBenchConfig(questions=2, seeds=1, steps=1, prompt_layout="chained")
    rec = run_inner_loop_bench(FakeEngine(), config)
    assert rec["workload"]["prompt_layout"] == "chained" and rec["calls"] == {"a": 4, "b": 8, "c": 4}
    with pytest.raises(ValueError, match="prompt_layout"):
        InnerLoopBenchConfig(prompt_layout="kv")
