"""Control flow of the outer loops on a scripted fake engine: revert, accept, exact call counts."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engines.errors import UserError
from engines.fake_engine import FakeEngine
from meta_fakes import META_FEEDBACK, META_GRADIENT, ScriptedMetaEngine, is_meta_backward, is_meta_eval, meta_config
from meta_fakes import meta_tgd_target
from mtg_local.inner_loop import DEFAULT_TEMPLATE
from mtg_local.textgrad import ops
from mtg_local.textgrad.optimizer import TextualGradientDescent
from mtg_local.textgrad.variable import LossContext, Variable

from mtg_local.meta import MetaConfig, run_train
from mtg_local.meta.outer_loop import OuterLoop, sample_minibatch
from mtg_local.prompts import meta_prompts as P
from mtg_local.prompts import textgrad_prompts as TP
from mtg_local.tasks.word_sorting import INITIAL_LOSS_PROMPT

N, SEEDS, M, T = 3, (0, 1), 2, 1  # questions per split, seeds, minibatch, inner steps
INNER = 1 + 3 * T  # engine calls of one inner loop
#: meta calls per outer step: meta_step="backward" (the default): evaluation, backward, TGD step;
#: "direct": evaluation, TGD step. MAML has no evaluation: one TGD step either way.
META_CALLS = {"backward": {"learned_loss": 3, "maml": 1, "reptile": 3, "joint": 3},
              "direct": {"learned_loss": 2, "maml": 1, "reptile": 2, "joint": 2}}


def config(tmp_path, method, **kw) -> MetaConfig:
    # The scripted engine is written for last-iterate answers with format keeping.
    base = dict(out=str(tmp_path / method), method=method, engine="scripted", seeds=SEEDS, outer_steps=2,
                minibatch=M, steps=T, limit=N, max_tokens=64, optimizer_max_tokens=64, meta_max_tokens=64,
                no_cache=True, progress=False, answer_selection="last", keep_answer_format=True)
    base.update(kw)
    return meta_config(**base)


@pytest.fixture
def calls_at_checkpoints(monkeypatch):
    """Records len(engine.batches) at every checkpoint (one per step, one after the test)."""
    marks: list[int] = []
    engines: list[ScriptedMetaEngine] = []
    original = OuterLoop._checkpoint

    def spy(self):
        marks.append(len(engines[0].batches))
        original(self)

    monkeypatch.setattr(OuterLoop, "_checkpoint", spy)
    return marks, engines


def is_meta(req) -> bool:
    """A meta call: evaluation, backward through it, or meta TGD step."""
    return is_meta_eval(req) or is_meta_backward(req) or meta_tgd_target(req) is not None


def deltas(marks: list[int]) -> list[int]:
    return [b - a for a, b in zip([0] + marks, marks)]


@pytest.mark.parametrize("meta_step", ["backward", "direct"])
@pytest.mark.parametrize("method,target", [("learned_loss", "loss_prompt"), ("maml", "template"),
                                           ("reptile", "template")])
def test_revert_then_accept_with_exact_calls(tmp_path, calls_at_checkpoints, method, target, meta_step):
    marks, engines = calls_at_checkpoints
    engine = ScriptedMetaEngine({(2, target)})
    engines.append(engine)
    res = run_train(config(tmp_path, method, meta_step=meta_step), engine=engine)

    # step 0 (initial val + step-1 minibatch, one inner loop); step 1 (meta + val); step 2 (mb + meta + val); test
    meta = META_CALLS[meta_step][method]
    assert deltas(marks) == [INNER, meta + INNER, INNER + meta + INNER, INNER]
    assert len(engine.batches) == res["engine_usage"]["calls"] == 5 * INNER + 2 * meta
    # the first inner-loop call batches the initial validation and step 1's minibatch
    assert len(engine.batches[0]) == N * len(SEEDS) + M * len(SEEDS)

    hist = res["history"]
    assert [(h["step"], h["accepted"]) for h in hist] == [(0, True), (1, False), (2, True)]
    assert [h["val_accuracy"] for h in hist] == [0.0, 0.0, 1.0]
    assert res["initial_val_accuracy"] == 0.0 and res["best_val_accuracy"] == 1.0 and res["best_step"] == 2
    start = INITIAL_LOSS_PROMPT if target == "loss_prompt" else DEFAULT_TEMPLATE.rstrip()
    learned = res["learned"][target]
    assert learned.strip() == f"{start} [v2] GOOD"  # step 1 reverted: step 2 started from the initial value
    other = "template" if target == "loss_prompt" else "loss_prompt"
    assert res["learned"][other] is None
    assert res["test_accuracy"]["mean"] == 1.0 and res["test_accuracy"]["n"] == len(SEEDS)
    assert hist[1]["candidate"][target].strip() == f"{start} [v1]"

    rd = tmp_path / method
    fname = "learned_loss_prompt.txt" if target == "loss_prompt" else "learned_template.txt"
    assert (rd / fname).read_text() == learned + "\n"
    for f in ("config.json", "events.jsonl", "checkpoint.json", "results.json", "trajectories.jsonl"):
        assert (rd / f).exists(), f
    assert json.loads((rd / "results.json").read_text())["status"] == "complete"
    assert len((rd / "trajectories.jsonl").read_text().splitlines()) == N * len(SEEDS)


def test_meta_requests_carry_the_paper_prompts(tmp_path):
    engine = ScriptedMetaEngine({(2, "loss_prompt")})
    run_train(config(tmp_path, "learned_loss", outer_steps=1, meta_step="direct"), engine=engine)
    evals = [r for b in engine.batches for r in b if is_meta_eval(r)]
    tgds = [r for b in engine.batches for r in b if meta_tgd_target(r)]
    assert len(evals) == 1 and len(tgds) == 1
    text = evals[0].messages[-1].content
    assert text.startswith(P.META_LOSS_PROMPT.split("{qa_pairs}")[0])
    assert "Question 1: Sort the following words alphabetically" in text and "Standard Answer 1: " in text
    assert f"must be improved: {INITIAL_LOSS_PROMPT}\n\n" in text
    assert META_FEEDBACK in tgds[0].messages[-1].content
    assert tgds[0].response_prefix == P.IMPROVED_START_TAG
    assert tgds[0].messages[0].content == TP.OPTIMIZER_SYSTEM_PROMPT  # TextGrad's update request


@pytest.mark.parametrize("method,target", [("learned_loss", "loss_prompt"), ("reptile", "template")])
def test_backward_meta_step_is_the_inner_loops_backward_and_tgd(tmp_path, method, target):
    """meta_step="backward" (eqs. 6, 9): a backward call on theta_L / y_T through the meta-evaluation
    call, then a TGD step quoting that conversation and the feedback -- request for request what the
    batched TextGrad ops send for that call (so their texts are the meta step's texts)."""
    engine = ScriptedMetaEngine()
    res = run_train(config(tmp_path, method, outer_steps=1), engine=engine)
    batches = [b for b in engine.batches if any(is_meta(r) for r in b)]
    assert len(batches) == 3  # one call per stage
    (ev,), (bwd,), (tgd,) = batches
    assert is_meta_eval(ev) and is_meta_backward(bwd) and meta_tgd_target(tgd) == target
    # The same requests, built by the inner loop's ops from the meta-evaluation call.
    start = INITIAL_LOSS_PROMPT if target == "loss_prompt" else DEFAULT_TEMPLATE.strip()
    role = P.LOSS_PROMPT_ROLE if target == "loss_prompt" else P.TEMPLATE_ROLE
    variable = Variable(start, role)
    call = LossContext(evaluated=variable, loss_prompt=ev.messages[-1].content, loss_input=ev.messages[-1].content,
                       system_prompt="")
    evaluation = Variable(META_FEEDBACK, P.META_EVALUATION_ROLE, requires_grad=False, loss_context=call)
    ref = FakeEngine(lambda r: META_GRADIENT)
    assert ops.backward(ref, [evaluation], samplings=bwd.sampling, ids=[bwd.id]) == [None]
    TextualGradientDescent([variable], engine=ref).step(samplings=tgd.sampling, ids=[tgd.id])
    assert ref.batches == [[bwd], [tgd]]
    assert META_FEEDBACK in bwd.messages[-1].content and ev.messages[-1].content in bwd.messages[-1].content
    assert META_GRADIENT in tgd.messages[-1].content and META_FEEDBACK in tgd.messages[-1].content
    info = res["history"][1]["info"]  # the candidate's record
    assert info["meta_feedback"] == META_FEEDBACK and info["meta_gradient"] == META_GRADIENT
    assert info["finish_reasons"] == {"meta_evaluation": "stop", "meta_backward": "stop", "meta_tgd": "stop"}
    assert res["history"][1]["candidate"][target].strip() == f"{start} [v1]"


def test_maml_uses_last_gradients_and_reptile_theta_r(tmp_path):
    maml = ScriptedMetaEngine()
    run_train(config(tmp_path, "maml", outer_steps=1), engine=maml)
    tgd = [r for b in maml.batches for r in b if meta_tgd_target(r) == "template"]
    assert len(tgd) == 1 and not any(is_meta_eval(r) for b in maml.batches for r in b)
    assert "Here is the feedback we got for this response:" in tgd[0].messages[-1].content

    rep = ScriptedMetaEngine()
    run_train(config(tmp_path, "reptile", outer_steps=1), engine=rep)
    ev = [r for b in rep.batches for r in b if is_meta_eval(r)]
    assert len(ev) == 1 and ev[0].messages[-1].content.startswith(P.REPTILE_LOSS_PROMPT.split("{qa_pairs}")[0])
    assert f"template to improve: {DEFAULT_TEMPLATE.strip()}\n\n" in ev[0].messages[-1].content


def test_joint_validates_three_candidates_in_one_inner_loop(tmp_path, calls_at_checkpoints):
    marks, engines = calls_at_checkpoints
    engine = ScriptedMetaEngine({(2, "template")})
    engines.append(engine)
    res = run_train(config(tmp_path, "joint"), engine=engine)
    assert deltas(marks) == [INNER, 3 + INNER, INNER + 3 + INNER, INNER]
    # meta evaluations of both updates share one call, backward calls another, TGD steps a third
    meta_batches = [b for b in engine.batches if any(is_meta(r) for r in b)]
    assert [len(b) for b in meta_batches] == [2, 2, 2] * 2
    val_first = engine.batches[INNER + 3]  # step 1 validation, forward phase
    # Three candidates in one call: "template" and "both" carry the same new template, so
    # their forward requests are identical and reach the backend once (engines.dedup):
    # N*S requests per distinct template, two templates.
    assert len(val_first) == 2 * N * len(SEEDS)
    assert len({r.response_prefix for r in val_first}) == 2
    step = lambda s: [(h["label"], h["val_accuracy"], h["accepted"]) for h in res["history"] if h["step"] == s]
    assert step(1) == [("loss_prompt", 0.0, False), ("template", 0.0, False), ("both", 0.0, False)]
    # template and both tie at 1.0: the first (template) wins
    assert step(2) == [("loss_prompt", 0.0, False), ("template", 1.0, True), ("both", 1.0, False)]
    assert res["learned"]["template"].strip().endswith("[v2] GOOD")
    assert res["learned"]["loss_prompt"] == INITIAL_LOSS_PROMPT
    # truncation is recorded for the test phase, every minibatch and every candidate's validation
    zero = {"forward": 0, "loss": 0, "backward": 0, "update": 0, "total": 0, "context": 0}
    assert res["truncated"] == zero
    assert all(h["truncated"] == zero for h in res["history"] if h["step"] > 0)
    assert all(h["val_truncated"] == zero for h in res["history"] if h["step"] > 0)


def test_joint_maml_sends_both_tgd_steps_in_one_call(tmp_path):
    """The loss prompt's TGD step (after its backward call) and the MAML template step (straight from
    the inner loop's gradients, eq. 7) are different requests in the same one TGD call."""
    engine = ScriptedMetaEngine()
    res = run_train(config(tmp_path, "joint", joint_template="maml", outer_steps=1), engine=engine)
    meta = [b for b in engine.batches if any(is_meta(r) for r in b)]
    assert [len(b) for b in meta] == [1, 1, 2]  # theta_meta evaluation, its backward, both TGD steps
    tgds = {meta_tgd_target(r): r for r in meta[2]}
    assert tgds["template"].messages[0].content == tgds["loss_prompt"].messages[0].content == TP.OPTIMIZER_SYSTEM_PROMPT
    assert "Here is the feedback we got for this response:" in tgds["template"].messages[-1].content
    assert "Here is the feedback we got for this response:" not in tgds["loss_prompt"].messages[-1].content
    assert META_GRADIENT in tgds["loss_prompt"].messages[-1].content
    assert {h["label"] for h in res["history"] if h["step"] == 1} == {"loss_prompt", "template", "both"}


def test_skipped_step_when_no_wrong_answers(tmp_path, calls_at_checkpoints):
    marks, engines = calls_at_checkpoints
    engine = ScriptedMetaEngine()
    engines.append(engine)
    res = run_train(config(tmp_path, "learned_loss", initial_template="GOOD start: "), engine=engine)
    assert deltas(marks) == [INNER, 0, INNER, INNER]  # no meta calls, nothing to validate
    assert [h["label"] for h in res["history"]] == ["initial", None, None]
    assert res["history"][1]["info"]["loss_prompt"]["skipped"] == "no wrong answers in the minibatch"


def test_zero_outer_steps_only_validates_and_tests(tmp_path, calls_at_checkpoints):
    marks, engines = calls_at_checkpoints
    engines.append(engine := ScriptedMetaEngine())
    res = run_train(config(tmp_path, "reptile", outer_steps=0), engine=engine)
    assert deltas(marks) == [INNER, INNER] and len(engine.batches[0]) == N * len(SEEDS)
    assert res["learned"]["template"] == DEFAULT_TEMPLATE


def test_minibatches_depend_only_on_seed_and_step():
    train = list(range(20))
    assert sample_minibatch(train, 3, 0, 1) == sample_minibatch(train, 3, 0, 1)
    assert sample_minibatch(train, 3, 0, 1) != sample_minibatch(train, 3, 0, 2)
    assert sample_minibatch(train[:2], 3, 0, 1) in ([0, 1], [1, 0])


def test_occupied_run_dir_and_bad_config(tmp_path):
    run_train(config(tmp_path, "maml", outer_steps=0), engine=ScriptedMetaEngine())
    with pytest.raises(UserError, match="--resume"):
        run_train(config(tmp_path, "maml", outer_steps=0), engine=ScriptedMetaEngine())
    with pytest.raises(UserError, match="other settings"):
        run_train(config(tmp_path, "maml", outer_steps=1), engine=ScriptedMetaEngine(), resume=True)
    with pytest.raises(UserError, match="method"):
        config(tmp_path, "sgd")
    with pytest.raises(ValueError, match="seeds"):  # a bad Protocol; the CLI turns it into a UserError
        config(tmp_path, "maml", seeds=())


@pytest.mark.parametrize("prefill", [True, False])
def test_meta_tgd_prefill_is_the_protocols_meta_prefill_update_tag(tmp_path, prefill):
    """The meta TGD step prefills <IMPROVED_VARIABLE> under meta_prefill_update_tag (default on, ours);
    the inner loop's updates follow prefill_update_tag (default off, as TextGrad)."""
    engine = ScriptedMetaEngine({(1, "loss_prompt")})
    res = run_train(config(tmp_path, "learned_loss", outer_steps=1, meta_prefill_update_tag=prefill), engine=engine)
    tgds = [r for b in engine.batches for r in b if meta_tgd_target(r)]
    assert len(tgds) == 1 and tgds[0].response_prefix == (P.IMPROVED_START_TAG if prefill else "")
    inner_updates = [r for b in engine.batches for r in b
                     if r.messages[0].content == TP.OPTIMIZER_SYSTEM_PROMPT and not meta_tgd_target(r)]  # fmt: skip
    assert inner_updates and {r.response_prefix for r in inner_updates} == {""}
    assert res["history"][1]["accepted"] is True  # the step works either way
    assert res["protocol"].get("meta_prefill_update_tag", True) is prefill  # recorded (left out at its default)


# -- the meta step against TextGrad's own backward and TGD -----------------------------------------
def _textgrad_meta_step(ev_text: str, target: str, sampling) -> list:
    """TextGrad's own ``FormattedLLMCall`` (the meta evaluation), backward and TGD step on a recording
    engine; returns the requests it sent (meta evaluation, backward, TGD)."""
    from engines.adapters.common import import_textgrad
    from engines.adapters.textgrad_engine import TextGradEngine
    from engines.coalescer import CoalescerConfig
    from tests.textgrad_script import ScriptedEngine

    tg = import_textgrad()
    from textgrad.autograd.llm_ops import FormattedLLMCall

    def respond(req):
        system = req.messages[0].content if req.messages[0].role == "system" else None
        if system == TP.BACKWARD_SYSTEM_PROMPT:
            return META_GRADIENT
        if system == TP.OPTIMIZER_SYSTEM_PROMPT:
            return f"{TP.IMPROVED_VARIABLE_START}new value{TP.IMPROVED_VARIABLE_END}"
        return META_FEEDBACK

    fake = ScriptedEngine()
    fake.responder = respond
    engine = TextGradEngine(fake, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_tokens, coalescer_config=CoalescerConfig(window_s=0))  # fmt: skip
    fmt, field, start = ((P.META_LOSS_PROMPT, "loss_prompt", INITIAL_LOSS_PROMPT) if target == "loss_prompt" else
                         (P.REPTILE_LOSS_PROMPT, "template", DEFAULT_TEMPLATE.strip()))  # fmt: skip
    head, rest = fmt.split("{qa_pairs}")
    block = ev_text[len(head):ev_text.index(rest.split("{")[0])]  # the wrong answers ours showed
    role = P.LOSS_PROMPT_ROLE if target == "loss_prompt" else P.TEMPLATE_ROLE
    variable = tg.Variable(start, requires_grad=True, role_description=role)
    pairs = tg.Variable(block, requires_grad=False, role_description="wrong answers and standard answers")
    call = FormattedLLMCall(engine, fmt, {"qa_pairs": None, field: None})
    evaluation = call({"qa_pairs": pairs, field: variable}, response_role_description=P.META_EVALUATION_ROLE)
    evaluation.backward(engine)
    tg.TextualGradientDescent(engine=engine, parameters=[variable]).step()
    engine.close()
    return list(fake.sent)


@pytest.mark.parametrize("method,target", [("learned_loss", "loss_prompt"), ("reptile", "template")])
def test_meta_step_sends_textgrads_backward_and_tgd_but_for_the_named_differences(tmp_path, method, target):
    """The meta step under meta_step="backward" against real TextGrad's backward and TGD through the same
    meta-evaluation call: every request equal once the differences docs/protocol.md names as ours are
    undone -- (1) the meta evaluation has no system message (TextGrad's engine sends its default one),
    (2) so the backward and TGD calls quote its system prompt as empty (TextGrad's ``FormattedLLMCall``
    quotes Python's ``None``), (3) the TGD answer starts with the prefilled tag (meta_prefill_update_tag)."""
    from engines.adapters.textgrad_engine import DEFAULT_SYSTEM_PROMPT
    from tests.textgrad_script import assert_same_requests

    engine = ScriptedMetaEngine()
    run_train(config(tmp_path, method, outer_steps=1), engine=engine)
    (ev,), (bwd,), (tgd,) = [b for b in engine.batches if any(is_meta(r) for r in b)]
    theirs = _textgrad_meta_step(ev.messages[-1].content, target, ev.sampling)
    assert len(theirs) == 3

    # (1) the meta evaluation: TextGrad's call carries its engine's default system prompt
    assert [m.role for m in ev.messages] == ["user"]
    assert [(m.role, m.content) for m in theirs[0].messages] == [("system", DEFAULT_SYSTEM_PROMPT),
                                                                 ("user", ev.messages[-1].content)]  # fmt: skip
    # (2) the quoted system prompt: ours empty, TextGrad's "None"
    none, empty = "<LM_SYSTEM_PROMPT> None </LM_SYSTEM_PROMPT>", "<LM_SYSTEM_PROMPT>  </LM_SYSTEM_PROMPT>"
    assert all(none in r.messages[-1].content and empty not in r.messages[-1].content for r in theirs[1:])
    assert all(empty in r.messages[-1].content for r in (bwd, tgd))

    def undone(req, prefix=""):
        msgs = tuple(dataclasses.replace(m, content=m.content.replace(none, empty)) for m in req.messages)
        return dataclasses.replace(req, messages=msgs, response_prefix=prefix)

    # (3) the prefilled tag; everything else -- texts, roles, sampling -- is TextGrad's
    assert tgd.response_prefix == P.IMPROVED_START_TAG
    assert_same_requests([ev], [dataclasses.replace(theirs[0], messages=theirs[0].messages[1:])], "meta evaluation")
    assert_same_requests([bwd], [undone(theirs[1])], "meta backward")
    assert_same_requests([tgd], [undone(theirs[2], P.IMPROVED_START_TAG)], "meta TGD step")
