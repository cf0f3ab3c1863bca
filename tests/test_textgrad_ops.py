"""Batched TextGrad ops on the fake engine: one call per op, slots, robust update parsing."""

from __future__ import annotations

import re

import pytest

from engines import GenRequest, SamplingConfig
from engines.fake_engine import FakeEngine
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.textgrad import (
    Gradient,
    TextualGradientDescent,
    Variable,
    backward,
    forward,
    generate_in_prefix_order,
    loss,
    parse_improved_variable,
    parse_update,
)

S = SamplingConfig(max_tokens=200)


def qid(req: GenRequest) -> str:
    """The last QID-<n> in the request's user message."""
    return re.findall(r"QID-\d+", req.messages[-1].content)[-1]


# -- update parsing -----------------------------------------------------------
@pytest.mark.parametrize(
    "text, value, why",
    [
        ("<IMPROVED_VARIABLE>new</IMPROVED_VARIABLE>", "new", None),
        ("blah <IMPROVED_VARIABLE>\n  new text \n</IMPROVED_VARIABLE> trailing", "new text", None),
        ("<improved_variable>x</ improved_variable >", "x", None),
        ("< IMPROVED_VARIABLE >x</IMPROVED_VARIABLE>", "x", None),
        ("<IMPROVED_VARIABLE><IMPROVED_VARIABLE>twice</IMPROVED_VARIABLE>", "twice", None),
        ("<IMPROVED_VARIABLE>a</IMPROVED_VARIABLE><IMPROVED_VARIABLE>b</IMPROVED_VARIABLE>", "a", None),
        ("no tags at all", None, "no <IMPROVED_VARIABLE> tag"),
        ("</IMPROVED_VARIABLE> only the end", None, "no <IMPROVED_VARIABLE> tag"),
        ("<IMPROVED_VARIABLE>never closed", None, "stopped without it"),
        ("<IMPROVED_VARIABLE>wrong close</VARIABLE> more", None, "closed with </VARIABLE> instead"),
        ("<IMPROVED_VARIABLE>  </IMPROVED_VARIABLE>", None, "empty text"),
        ("", None, "no <IMPROVED_VARIABLE> tag"),
    ],
)
def test_parse_improved_variable(text: str, value: str | None, why: str | None) -> None:
    parsed = parse_improved_variable(text)
    assert parsed.value == value
    if why is None:
        assert parsed.ok and parsed.error is None
    else:
        assert not parsed.ok and why in parsed.error


@pytest.mark.parametrize(
    "text, value",
    [
        ("<IMPROVED_VARIABLE>new</IMPROVED_VARIABLE>", "new"),
        ("<IMPROVED_VARIABLE>a<IMPROVED_VARIABLE>b</IMPROVED_VARIABLE>", "a"),  # text up to the 2nd start tag
        ("<IMPROVED_VARIABLE>never closed, cut off", "never closed, cut off"),  # taken, as TextGrad does
        ("<IMPROVED_VARIABLE>  </IMPROVED_VARIABLE>", ""),  # an empty value, as TextGrad's
        ("<improved_variable>x</improved_variable>", None),  # exact tags only
        ("no tags", None),  # TextGrad raises IndexError
    ],
)
def test_textgrad_parsing_is_textgrads_split(text: str, value: str | None) -> None:
    parsed = parse_update(text, parsing="textgrad")
    assert parsed.value == value
    if value is not None:
        tg_new = text.split(P.IMPROVED_VARIABLE_START)[1].split(P.IMPROVED_VARIABLE_END)[0].strip()
        assert parsed.value == tg_new  # TextualGradientDescent.step's expression
    else:
        assert "IndexError" in parsed.error
    with pytest.raises(ValueError, match="update_parsing must be one of textgrad, tolerant"):
        parse_update(text, parsing="lenient")


def test_step_parsing_rule_decides_an_unclosed_update() -> None:
    def run(parsing: str) -> tuple[str, str | None]:
        engine = FakeEngine(lambda r: "v2 without its end tag")
        (p,) = _params(1)
        (out,) = TextualGradientDescent([p], engine=engine, parsing=parsing).step(samplings=S)
        return p.value, out.error

    assert run("textgrad") == ("v2 without its end tag", None)
    value, why = run("tolerant")
    assert value == "old QID-0" and "stopped without it" in why


def test_parse_reports_truncation() -> None:
    parsed = parse_improved_variable("<IMPROVED_VARIABLE>cut", truncated=True)
    assert parsed.value is None and "max_tokens" in parsed.error


# -- ordering -----------------------------------------------------------------
def test_generate_in_prefix_order_groups_prefixes_and_restores_order() -> None:
    engine = FakeEngine(lambda r: "R:" + qid(r), shuffle=True)
    systems = ["loss B", "loss A", "loss B", "loss A", "loss A"]
    reqs = [GenRequest.chat(f"QID-{i}", system=s, id=f"r{i}") for i, s in enumerate(systems)]
    results = generate_in_prefix_order(engine, reqs)
    assert [r.text for r in results] == [f"R:QID-{i}" for i in range(5)]
    assert [r.id for r in results] == [f"r{i}" for i in range(5)]
    (batch,) = engine.batches
    assert [r.messages[0].content for r in batch] == ["loss A"] * 3 + ["loss B"] * 2
    assert generate_in_prefix_order(engine, []) == [] and len(engine.batches) == 1


# -- forward / loss / backward --------------------------------------------------
def test_forward_prefixes_template_and_keeps_slots() -> None:
    engine = FakeEngine(lambda r: f"answer {qid(r)} seed {r.sampling.seed}", shuffle=True)
    qs = [f"Question QID-{i}" for i in range(6)]
    templates = ["T1: ", "T2: "] * 3
    sams = [S.replace(seed=10 + i) for i in range(6)]
    out = forward(engine, qs, templates=templates, samplings=sams, system_prompts=["sys"] * 6)
    assert len(engine.batches) == 1
    for i, v in enumerate(out):
        assert v.value == f"{templates[i]}answer QID-{i} seed {10 + i}"
        assert v.error is None and v.role_description == P.ANSWER_ROLE
    assert {r.response_prefix for r in engine.batches[0]} == {"T1: ", "T2: "}


def test_loss_with_two_loss_prompts_in_one_call() -> None:
    engine = FakeEngine(lambda r: f"{r.messages[-1].content.split(chr(10))[0]} judged {qid(r)}", shuffle=True)
    answers = [Variable(f"ans QID-{i}", "answer") for i in range(4)]
    prompts = ["LOSS-A", "LOSS-B", "LOSS-A", "LOSS-B"]
    evals = loss(engine, answers, questions=[f"q{i}" for i in range(4)], loss_prompts=prompts, samplings=S)
    assert len(engine.batches) == 1
    assert [e.value for e in evals] == [f"{p} judged QID-{i}" for i, p in enumerate(prompts)]
    assert all(e.loss_context.evaluated is a for e, a in zip(evals, answers))
    assert all(not e.requires_grad for e in evals)


def test_backward_adds_gradients_and_skips_failed_losses() -> None:
    answers = [Variable(f"ans QID-{i}", "answer") for i in range(3)]
    fail_loss = FakeEngine(lambda r: "eval", fail_if=lambda r: "boom" if "QID-1" in r.messages[-1].content else None)
    evals = loss(fail_loss, answers, questions=["q"] * 3, loss_prompts=["L"] * 3, samplings=S)
    assert evals[1].error == "boom"
    engine = FakeEngine(lambda r: f"grad for {qid(r)}", shuffle=True)
    errs = backward(engine, evals, samplings=S)
    assert errs[0] is None and errs[2] is None and "loss failed" in errs[1]
    assert len(engine.batches) == 1 and len(engine.batches[0]) == 2
    assert answers[0].gradient_text() == "grad for QID-0"
    assert answers[1].gradients == []
    assert answers[2].gradients[0].text == "grad for QID-2"


# -- TGD step -------------------------------------------------------------------
def _params(n: int) -> list[Variable]:
    ps = [Variable(f"old QID-{i}", "answer") for i in range(n)]
    for i, p in enumerate(ps):
        p.gradients.append(Gradient(f"fix QID-{i}", "ctx"))
    return ps


def test_step_malformed_update_keeps_previous_and_others_update() -> None:
    def responder(r: GenRequest) -> str:
        q = qid(r)
        return f"no tags for {q}" if q == "QID-1" else f"new {q}{P.IMPROVED_VARIABLE_END}"

    engine = FakeEngine(responder, shuffle=True)
    params = _params(3)
    opt = TextualGradientDescent(params, engine=engine, constraints=["keep the Answer: line"])
    outcomes = opt.step(samplings=S)
    assert len(engine.batches) == 1
    assert [p.value for p in params] == ["new QID-0", "old QID-1", "new QID-2"]
    assert outcomes[0].updated and outcomes[2].updated
    assert not outcomes[1].updated and "stopped without it" in outcomes[1].error
    assert not outcomes[1].engine_error
    req = engine.batches[0][0]
    assert req.response_prefix == P.IMPROVED_VARIABLE_START
    assert req.messages[0].content == P.OPTIMIZER_SYSTEM_PROMPT
    # TextGrad numbers its constraints (TextualGradientDescent.constraint_text)
    assert "<CONSTRAINTS>Constraint 1: keep the Answer: line</CONSTRAINTS>" in req.messages[1].content
    opt.zero_grad()
    assert all(p.gradients == [] for p in params)


def test_step_engine_error_for_one_item() -> None:
    engine = FakeEngine(
        lambda r: f"new {qid(r)}{P.IMPROVED_VARIABLE_END}",
        fail_if=lambda r: "server said no" if "QID-0" in r.messages[-1].content else None,
    )
    params = _params(2)
    outcomes = TextualGradientDescent(params, engine=engine).step(samplings=S)
    assert params[0].value == "old QID-0" and params[1].value == "new QID-1"
    assert outcomes[0].engine_error and "server said no" in outcomes[0].error


def test_step_without_prefill_parses_full_output() -> None:
    engine = FakeEngine(lambda r: f"Sure! {P.IMPROVED_VARIABLE_START}v2{P.IMPROVED_VARIABLE_END}")
    params = _params(1)
    out = TextualGradientDescent(params, engine=engine, prefill_tag=False).step(samplings=S)
    assert out[0].updated and params[0].value == "v2"
    assert engine.batches[0][0].response_prefix == ""


def test_step_validate_hook_rejects_and_keeps_previous() -> None:
    engine = FakeEngine(lambda r: f"new {qid(r)}{P.IMPROVED_VARIABLE_END}")
    params = _params(2)
    seen = []

    def validate(k: int, old: str, new: str) -> str | None:
        seen.append((k, old, new))
        return "rejected: lost the format" if k == 0 else None

    out = TextualGradientDescent(params, engine=engine, validate=validate).step(samplings=S)
    assert [p.value for p in params] == ["old QID-0", "new QID-1"]
    assert out[0].error == "rejected: lost the format" and out[1].updated
    assert sorted(seen) == [(0, "old QID-0", "new QID-0"), (1, "old QID-1", "new QID-1")]


def test_step_skips_parameters_without_gradients() -> None:
    engine = FakeEngine(lambda r: f"x{P.IMPROVED_VARIABLE_END}")
    p = Variable("v", "answer")
    out = TextualGradientDescent([p], engine=engine).step(samplings=S)
    assert engine.batches == [] and not out[0].updated and p.value == "v"


def test_samplings_length_is_checked() -> None:
    with pytest.raises(ValueError, match="one per item"):
        forward(FakeEngine(), ["a", "b"], templates=["", ""], samplings=[S])
