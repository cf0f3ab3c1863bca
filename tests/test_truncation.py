"""No silent truncation: every call cut off at max_tokens or by the context is recorded and counted.

The fake engine returns at most ``max_tokens`` words and then finish_reason
"length", like a real backend, so each phase can be made to overflow; given a
``max_model_len`` it lowers the cap to the room left and reports a cut there as
"context_length", as the real engines do (the real-engine tests are in
tests/test_vllm_engine.py and tests/test_openai_engine.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from types import SimpleNamespace

import pytest

from engines import GenRequest, SamplingConfig
from engines.base import context_finish_reason, is_cut_off
from engines.fake_engine import FakeEngine
from engines.vllm_engine import result_from_output
from mtg_local import cli
from mtg_local.commands.eval import run_eval
from mtg_local.evaluation import truncation_summary
from mtg_local.inner_loop import DEFAULT_TEMPLATE, InnerItem, InnerLoopConfig, solution_optimization
from mtg_local.meta.learned_loss import LearnedLoss
from mtg_local.meta.maml_template import MAMLTemplate
from mtg_local.meta.meta_update import Artifacts, MetaContext, propose
from mtg_local.prompts import meta_prompts as MP
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.tasks.base import Example, Splits
from mtg_local.tasks.word_sorting import INITIAL_LOSS_PROMPT, WordSortingTask

LONG = " ".join(["word"] * 40)


def _system(req: GenRequest) -> str | None:
    return req.messages[0].content if req.messages[0].role == "system" else None


def _inner_responder(req: GenRequest) -> str:
    """Forward: seed 1 rambles past the cap; loss always; backward never; update always."""
    system = _system(req)
    if system == P.LOSS_SYSTEM_PROMPT:
        return "the answer " + LONG
    if system == P.BACKWARD_SYSTEM_PROMPT:
        return "check the order"
    if system == P.OPTIMIZER_SYSTEM_PROMPT:
        return "new answer " + LONG + P.IMPROVED_VARIABLE_END  # the end tag lies past the cap
    return ("x " + LONG if req.sampling.seed == 1 else "x") + "\nAnswer: apple banana"


def test_every_inner_loop_phase_records_its_truncation() -> None:
    ex = Example(id="q0", question="Sort the following words alphabetically: List: banana apple", answer="apple banana")
    task = WordSortingTask(Splits((ex,), (ex,), (ex,)))
    items = [InnerItem(ex, s, INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE) for s in (0, 1)]
    config = InnerLoopConfig(steps=2, max_tokens=20, optimizer_max_tokens=20)
    trajs = solution_optimization(task, items, forward_engine=FakeEngine(_inner_responder), config=config)
    ok, cut = trajs
    assert ok.finish_reasons == {"forward": ["stop"], "loss": ["length"] * 2, "backward": ["stop"] * 2,
                                 "update": ["length"] * 2}
    assert cut.finish_reasons["forward"] == ["length"]
    assert (ok.truncated, cut.truncated) == (4, 5)
    # the cut-off updates never replaced the answers
    assert all("cut off at max_tokens" in e for t in trajs for e in t.update_errors)
    assert ok.answers[-1] == ok.answers[0] and ok.score == 1.0
    assert cut.score == 0.0  # its Answer: line fell past the cap
    assert truncation_summary(trajs) == {"forward": 1, "loss": 4, "backward": 0, "update": 4, "total": 9, "context": 0}
    assert truncation_summary([]) == {"forward": 0, "loss": 0, "backward": 0, "update": 0, "total": 0, "context": 0}
    d = ok.to_dict()
    assert d["truncated"] == 4 and d["finish_reasons"]["update"] == ["length", "length"]


def test_eval_results_json_counts_truncation(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = cli.build_parser().parse_args([
        "eval", "--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0,1", "--steps", "1",
        "--max-tokens", "20", "--optimizer-max-tokens", "20", "--out", str(out), "--no-progress",
    ])
    res = run_eval(args, engine=FakeEngine(_inner_responder))
    assert res["truncated"] == {"forward": 2, "loss": 4, "backward": 0, "update": 4, "total": 10, "context": 0}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["truncated"] == res["truncated"]
    trajs = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert sum(t["truncated"] for t in trajs) == 10


def _wrong_trajs(task: WordSortingTask):
    ex = task.splits().train[0]
    items = [InnerItem(ex, s, INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE) for s in (0, 1)]
    engine = FakeEngine(lambda r: "x\nAnswer: banana apple" if _system(r) is None else "fine " + P.IMPROVED_VARIABLE_END)
    return solution_optimization(task, items, forward_engine=engine, config=InnerLoopConfig(steps=1))


def _meta_responder(tgd_words: int, eval_words: int):
    def respond(req: GenRequest) -> str:
        system, text = _system(req), req.messages[-1].content
        if system == P.OPTIMIZER_SYSTEM_PROMPT:
            return "A new loss prompt " + " ".join(["more"] * tgd_words) + MP.IMPROVED_END_TAG
        if system == P.BACKWARD_SYSTEM_PROMPT:
            return "ask for the order letter by letter"
        if MP.META_LOSS_PROMPT[:60] in text:
            return " ".join(["critique"] * eval_words)
        return "?"
    return respond


#: engine calls of one learned-loss meta step: evaluation (+ backward) + TGD step
META_CALLS = {"backward": 3, "direct": 2}


@pytest.mark.parametrize("meta_step", ["backward", "direct"])
def test_truncated_meta_tgd_output_is_never_a_candidate(meta_step: str) -> None:
    ex = Example(id="q0", question="Sort the following words alphabetically: List: banana apple", answer="apple banana")
    task = WordSortingTask(Splits((ex,), (ex,), (ex,)))
    trajs = _wrong_trajs(task)
    current = Artifacts(INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE)
    engine = FakeEngine(_meta_responder(tgd_words=50, eval_words=3))
    ctx = MetaContext(task, engine, max_tokens=30, temperature=0.0, max_pairs=8, meta_step=meta_step)
    candidates, info = propose([LearnedLoss()], ctx, current, trajs, step=1)
    assert candidates == []
    assert "cut off at max_tokens" in info["loss_prompt"]["skipped"]
    assert info["loss_prompt"]["tgd_truncated"] is True and info["loss_prompt"]["meta_evaluation_truncated"] is False
    assert len(engine.batches) == META_CALLS[meta_step]  # no validation follows
    # the same output within the cap is a candidate
    ok_engine = FakeEngine(_meta_responder(tgd_words=5, eval_words=3))
    ok_ctx = MetaContext(task, ok_engine, max_tokens=30, temperature=0.0, max_pairs=8, meta_step=meta_step)
    candidates, info = propose([LearnedLoss()], ok_ctx, current, trajs, step=1)
    assert [c.label for c in candidates] == ["loss_prompt"]
    assert candidates[0].artifacts.loss_prompt.startswith("A new loss prompt")


@pytest.mark.parametrize("meta_step", ["backward", "direct"])
def test_truncated_meta_evaluation_still_feeds_the_step_and_is_recorded(meta_step: str) -> None:
    ex = Example(id="q0", question="Sort the following words alphabetically: List: banana apple", answer="apple banana")
    task = WordSortingTask(Splits((ex,), (ex,), (ex,)))
    engine = FakeEngine(_meta_responder(tgd_words=5, eval_words=100))
    ctx = MetaContext(task, engine, max_tokens=30, temperature=0.0, max_pairs=8, meta_step=meta_step)
    candidates, info = propose([LearnedLoss()], ctx, Artifacts(INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE),
                               _wrong_trajs(task), step=1)
    assert info["loss_prompt"]["meta_evaluation_truncated"] is True
    assert info["loss_prompt"]["finish_reasons"]["meta_evaluation"] == "length"
    assert len(candidates) == 1
    cut = "critique " * 29 + "critique"
    if meta_step == "direct":
        tgd_request = engine.batches[1][0].messages[-1].content
        assert re.search(rf"<FEEDBACK>{cut}</FEEDBACK>", tgd_request)
    else:  # the cut-off evaluation is the output of the call the backward and TGD steps quote
        backward, tgd = engine.batches[1][0].messages[-1].content, engine.batches[2][0].messages[-1].content
        assert cut in backward and cut in tgd and "critique " * 30 + "critique" not in backward
        assert info["loss_prompt"]["meta_backward_truncated"] is False


def test_truncated_maml_step_is_skipped() -> None:
    ex = Example(id="q0", question="Sort the following words alphabetically: List: banana apple", answer="apple banana")
    task = WordSortingTask(Splits((ex,), (ex,), (ex,)))
    engine = FakeEngine(lambda r: "We sort: " + " ".join(["word"] * 60) + MP.IMPROVED_END_TAG)
    ctx = MetaContext(task, engine, max_tokens=30, temperature=0.0, max_pairs=8)
    trajs = _wrong_trajs(task)
    assert all(t.gradients for t in trajs)
    candidates, info = propose([MAMLTemplate()], ctx, Artifacts(INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE), trajs, step=1)
    assert candidates == [] and "cut off at max_tokens" in info["template"]["skipped"]


# -- cut off by the context (finish_reason "context_length") -------------------------------------
def test_context_cut_is_its_own_finish_reason_on_the_fake_engine() -> None:
    engine = FakeEngine(lambda r: " ".join(["w"] * 50), max_model_len=40)
    prompt = " ".join(["p"] * 30)  # 30 words: 10 left for the answer
    cut, capped, none_left = engine.generate([
        GenRequest.chat(prompt, id="cut", sampling=SamplingConfig(max_tokens=20)),
        GenRequest.chat(prompt, id="capped", sampling=SamplingConfig(max_tokens=5)),
        GenRequest.chat(" ".join(["p"] * 40), id="none-left", sampling=SamplingConfig(max_tokens=5)),
    ])
    assert (cut.finish_reason, cut.completion_tokens) == ("context_length", 10)
    assert (capped.finish_reason, capped.completion_tokens) == ("length", 5)  # its own cap came first
    assert not none_left.ok and "max_model_len" in none_left.error
    assert is_cut_off(cut.finish_reason) and is_cut_off(capped.finish_reason) and not is_cut_off("stop")
    u = engine.usage
    assert (u.context_truncated, u.errors) == (1, 1) and u.to_dict()["context_truncated"] == 1


def test_shared_finish_reason_rule() -> None:
    assert context_finish_reason("length", 10, 20) == "context_length"  # stopped short of its cap
    assert context_finish_reason("length", 20, 20) == "length"
    assert context_finish_reason("length", 0, 20) == "length"  # count unknown: not guessed
    assert context_finish_reason("stop", 3, 20) == "stop"


def test_vllm_result_builder_reports_the_context_cut() -> None:
    """The one builder of both vLLM engines' results: max_tokens lowered to the room left -> context_length."""
    req = GenRequest.chat("q", id="a", sampling=SamplingConfig(max_tokens=64))
    out = lambda n, why: SimpleNamespace(outputs=[SimpleNamespace(text="x" * n, finish_reason=why,  # noqa: E731
                                                                  token_ids=[1] * n)],
                                         prompt_token_ids=[0] * 4090, num_cached_tokens=32)
    assert result_from_output(req, out(6, "length"), [0] * 4090).finish_reason == "context_length"
    assert result_from_output(req, out(64, "length"), [0] * 4090).finish_reason == "length"
    assert result_from_output(req, out(6, "stop"), [0] * 4090).finish_reason == "stop"


def _context_responder(req: GenRequest) -> str:
    """Forward: seed 1 rambles; every other call answers in a few words, updates keep the answer."""
    system = _system(req)
    if system == P.LOSS_SYSTEM_PROMPT:
        return "the order is wrong"
    if system == P.BACKWARD_SYSTEM_PROMPT:
        return "check the order"
    if system == P.OPTIMIZER_SYSTEM_PROMPT:
        return "Sorted.\nAnswer: apple banana" + P.IMPROVED_VARIABLE_END
    return ("x " + " ".join(["word"] * 2000) if req.sampling.seed == 1 else "x") + "\nAnswer: apple banana"


def test_a_context_cut_is_recorded_counted_and_never_a_full_answer(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = cli.build_parser().parse_args([
        "eval", "--task", "synthetic_word_sorting", "--limit", "1", "--seeds", "0,1", "--steps", "1",
        "--max-tokens", "990", "--optimizer-max-tokens", "990", "--out", str(out), "--no-progress", "--no-cache",
    ])
    # Caps below the 1000-word context (the up-front check passes) but above the room a prompt leaves.
    engine = FakeEngine(_context_responder, max_model_len=1000)
    res = run_eval(args, engine=engine)
    trajs = {t["seed"]: t for t in map(json.loads, (out / "trajectories.jsonl").read_text().splitlines())}
    cut, ok = trajs[1], trajs[0]
    assert cut["finish_reasons"]["forward"] == ["context_length"]  # the ramble ran into the context
    assert cut["truncated"] == 1 and cut["extracted"] is None  # its Answer: line lay past the context
    # The cut answer fills the context: the loss call that quotes it has no room and fails alone.
    assert cut["finish_reasons"]["loss"] == ["error"] and "max_model_len" in cut["errors"][0]
    assert ok["truncated"] == 0 and not ok["errors"] and ok["extracted"] == "apple banana"
    assert res["truncated"] == {"forward": 1, "loss": 0, "backward": 0, "update": 0, "total": 1, "context": 1}
    assert res["engine_usage"]["context_truncated"] == 1 and res["engine_usage"]["errors"] == 1
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["truncated"]["context"] == 1 and on_disk["engine_usage"]["context_truncated"] == 1


def test_an_update_cut_by_the_context_never_replaces_the_answer() -> None:
    ex = Example(id="q0", question="Sort the following words alphabetically: List: banana apple", answer="apple banana")
    task = WordSortingTask(Splits((ex,), (ex,), (ex,)))

    def respond(req: GenRequest) -> str:
        if _system(req) == P.OPTIMIZER_SYSTEM_PROMPT:  # a long rewrite whose end tag lies past the context
            return "Sorted. " + " ".join(["word"] * 600) + "\nAnswer: apple banana" + P.IMPROVED_VARIABLE_END
        return _context_responder(req)

    items = [InnerItem(ex, 0, INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE)]
    # under both update rules: TextGrad's (the protocol default) would take a cut-off body, but an API
    # refuses a request that does not fit its context, so TextGrad never reads a context cut
    for parsing in ("tolerant", "textgrad"):
        [t] = solution_optimization(task, items, forward_engine=FakeEngine(respond, max_model_len=900),
                                    config=InnerLoopConfig(steps=1, update_parsing=parsing))
        assert t.finish_reasons["update"] == ["context_length"], parsing
        assert t.answers[-1] == t.answers[0] and "cut off by the context" in t.update_errors[0], parsing


def test_a_meta_tgd_output_cut_by_the_context_is_not_a_candidate() -> None:
    ex = Example(id="q0", question="Sort the following words alphabetically: List: banana apple", answer="apple banana")
    task = WordSortingTask(Splits((ex,), (ex,), (ex,)))
    engine = FakeEngine(_meta_responder(tgd_words=2000, eval_words=3), max_model_len=1200)
    ctx = MetaContext(task, engine, max_tokens=2000, temperature=0.0, max_pairs=8)
    candidates, info = propose([LearnedLoss()], ctx, Artifacts(INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE),
                               _wrong_trajs(task), step=1)
    rec = info["loss_prompt"]
    assert candidates == [] and rec["skipped"] == "TGD step output cut off at the context" and rec["tgd_truncated"]
    assert rec["finish_reasons"]["meta_tgd"] == "context_length"
    assert rec["finish_reasons"]["meta_evaluation"] == rec["finish_reasons"]["meta_backward"] == "stop"
