"""The outer loop's revert rule with real numbers, and meta-level update parsing.

* Revert rule: fractional validation accuracies, a tie at a non-zero accuracy (rejected:
  a candidate must be strictly better, as TextGrad's validation revert), a rejection after
  an earlier accept (the next step starts from the accepted artifacts), and
  ``accepted == (val > best_val_before)`` for every step.
* Parsing: ``parse_improved`` unit cases (tags, open tag only, untagged, empty) and scripted
  runs where the optimizer misbehaves (empty, unchanged, cut off at max tokens): the step is
  skipped with a reason and no validation call is spent on it.
"""

from __future__ import annotations

import re

import pytest

from engines.base import GenRequest
from meta_fakes import META_FEEDBACK, META_GRADIENT, ScriptedMetaEngine, is_meta_backward, is_meta_eval, meta_config
from meta_fakes import meta_tgd_target, request_text, tgd_variable
from mtg_local.inner_loop import DEFAULT_TEMPLATE
from mtg_local.meta import run_train
from mtg_local.meta.meta_update import parse_improved
from mtg_local.meta.outer_loop import OuterLoop
from mtg_local.prompts import meta_prompts as P
from mtg_local.tasks import get_task

N, SEEDS = 8, (0, 1)
# The level a candidate template of outer step s carries; a template's level is its last LVL marker.
LEVELS = {1: 2, 2: 2, 3: 1, 4: 3}
_LIST = re.compile(r"List: ([a-z' \-]+)")


def right_at(level: int, words: list[str]) -> bool:
    """A question is answered right at ``level`` when its letter count mod 4 is below it."""
    return sum(map(len, words)) % 4 < level


def level_responder(req: GenRequest) -> str:
    text = request_text(req)
    if is_meta_eval(req):
        return META_FEEDBACK
    if is_meta_backward(req):
        return META_GRADIENT
    if (target := meta_tgd_target(req)) is not None:
        step = req.sampling.seed
        variable = tgd_variable(req, target)
        return f"{variable} [v{step}] LVL{LEVELS[step]}{P.IMPROVED_END_TAG}"
    levels = re.findall(r"LVL(\d)", req.response_prefix)
    level = int(levels[-1]) if levels else 1
    words = _LIST.search(text).group(1).split()
    return "Answer: " + " ".join(sorted(words) if right_at(level, words) else sorted(words, reverse=True))


def expected_accuracy(split: str, level: int) -> float:
    examples = get_task("synthetic_word_sorting").splits().limited(N).get(split)
    return sum(right_at(level, e.answer.split()) for e in examples) / len(examples)


def test_revert_rule_with_fractional_accuracies_ties_and_reject_after_accept(tmp_path):
    acc = {lv: expected_accuracy("val", lv) for lv in (1, 2, 3)}
    assert 0 < acc[1] < acc[2] < acc[3] < 1 and acc[2] not in (0.5,)  # really fractional, distinct levels
    engine = ScriptedMetaEngine()
    engine.responder = level_responder
    cfg = meta_config(out=str(tmp_path / "run"), method="reptile", engine="scripted", seeds=SEEDS, outer_steps=4,
                      minibatch=N, steps=0, limit=N, max_tokens=64, optimizer_max_tokens=64, meta_max_tokens=256,
                      answer_selection="last", keep_answer_format=True, no_cache=True, progress=False)
    res = run_train(cfg, engine=engine)
    hist = res["history"]
    assert [h["step"] for h in hist] == [0, 1, 2, 3, 4]
    assert [h["val_accuracy"] for h in hist] == [acc[1], acc[2], acc[2], acc[1], acc[3]]
    assert [h["accepted"] for h in hist] == [True, True, False, False, True]  # step 2: tie at acc[2] > 0
    for h in hist[1:]:
        assert h["accepted"] == (h["val_accuracy"] > h["best_val_before"]), h["step"]
    assert [h["best_val_before"] for h in hist[1:]] == [acc[1], acc[2], acc[2], acc[2]]
    # Steps 2, 3 and 4 all started from step 1's accepted template, never from a rejected one.
    start = DEFAULT_TEMPLATE.strip()
    tgd_vars = [tgd_variable(r, t) for b in engine.batches for r in b if (t := meta_tgd_target(r))]
    assert tgd_vars == [start, f"{start} [v1] LVL2", f"{start} [v1] LVL2", f"{start} [v1] LVL2"]
    assert res["learned"]["template"].strip() == f"{start} [v1] LVL2 [v4] LVL3"
    assert res["best_step"] == 4 and res["best_val_accuracy"] == acc[3] and res["initial_val_accuracy"] == acc[1]
    assert res["test_accuracy"]["mean"] == expected_accuracy("test", 3)


# ------------------------------------------------------------------------------------ parsing
S, E = P.IMPROVED_START_TAG, P.IMPROVED_END_TAG


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"{S}new value{E}", ("new value", "tags")),
        (f"{S} new value {E} trailing chatter", ("new value", "tags")),
        (f"{S}{S}twice prefilled{E}", ("twice prefilled", "tags")),
        (f"{S}open tag only, no end", ("open tag only, no end", "open_tag")),
        ("no tags at all", ("no tags at all", "untagged")),
        (f"{S}   {E}", (None, "empty")),
        (f"{S}", (None, "empty")),
        ("", (None, "empty")),
    ],
)
def test_parse_improved_cases(text, expected):
    assert parse_improved(text) == expected


@pytest.fixture
def calls_at_checkpoints(monkeypatch):
    """len(engine.batches) at every checkpoint (one per outer step, one after the test)."""
    marks: list[int] = []
    engines: list[ScriptedMetaEngine] = []
    original = OuterLoop._checkpoint

    def spy(self):
        marks.append(len(engines[0].batches))
        original(self)

    monkeypatch.setattr(OuterLoop, "_checkpoint", spy)
    return marks, engines


def misbehaving(tgd_output):
    """The scripted meta engine, but every meta TGD step answers ``tgd_output(variable)``."""
    engine = ScriptedMetaEngine()
    inner = engine.responder

    def respond(req: GenRequest) -> str:
        if (target := meta_tgd_target(req)) is not None:
            return tgd_output(tgd_variable(req, target))
        return inner(req)

    engine.responder = respond
    return engine


def _run(tmp_path, engine, **kw):
    cfg = meta_config(**{**dict(out=str(tmp_path / "run"), method="learned_loss", engine="scripted", seeds=(0,),
                                outer_steps=1, minibatch=2, steps=1, limit=3, max_tokens=64, optimizer_max_tokens=64,
                                meta_max_tokens=64, answer_selection="last", keep_answer_format=True, no_cache=True,
                                progress=False), **kw})
    return run_train(cfg, engine=engine)


INNER = 1 + 3 * 1  # calls of one inner loop with T = 1
META = 3  # meta calls of a learned-loss step: evaluation, backward, TGD step (meta_step="backward")


@pytest.mark.parametrize(
    "name, output, reason",
    [
        ("empty", lambda v: f" {E}", "empty value"),
        ("only whitespace, untagged", lambda v: "   ", "empty value"),
        ("unchanged", lambda v: f"{v}{E}", "unchanged value"),
    ],
)
def test_misbehaving_optimizer_step_is_skipped_without_validation(tmp_path, calls_at_checkpoints, name, output, reason):
    marks, engines = calls_at_checkpoints
    engines.append(engine := misbehaving(output))
    res = _run(tmp_path, engine)
    step1 = res["history"][1]
    assert step1["label"] is None and step1["accepted"] is False and step1["val_accuracy"] is None
    assert reason in step1["info"]["loss_prompt"]["skipped"]
    # step 1 spent only its meta calls (evaluation, backward, TGD step): no validation inner loop
    assert [b - a for a, b in zip([0] + marks, marks)] == [INNER, META, INNER]
    assert res["learned"]["loss_prompt"] == res["history"][0]["candidate"]["loss_prompt"]


def _cut_off_run(tmp_path, calls_at_checkpoints):
    marks, engines = calls_at_checkpoints
    # A long proposal, cut at meta_max_tokens=6 words by the engine (finish_reason "length").
    engines.append(engine := misbehaving(lambda v: f"{v} and many more words of a long rewrite here {E}"))
    res = _run(tmp_path, engine, meta_max_tokens=6)
    return res, marks, engine


def test_cut_off_proposal_is_really_cut_off(tmp_path, calls_at_checkpoints):
    res, _, engine = _cut_off_run(tmp_path, calls_at_checkpoints)
    tgd = [r for b in engine.batches for r in b if meta_tgd_target(r)]
    assert len(tgd) == 1 and tgd[0].sampling.max_tokens == 6
    info = res["history"][1]["info"]  # a candidate's own record, or per target when skipped
    output = info.get("loss_prompt", info)["tgd_output"]
    assert E not in output and "rewrite" not in output and len(output.split()) <= 7  # cut at 6 words


def test_cut_off_proposal_is_skipped_without_validation(tmp_path, calls_at_checkpoints):
    res, marks, _ = _cut_off_run(tmp_path, calls_at_checkpoints)
    step1 = res["history"][1]
    assert step1["label"] is None and step1["val_accuracy"] is None
    assert re.search(r"cut off|max_tokens|length", step1["info"]["loss_prompt"]["skipped"])
    assert [b - a for a, b in zip([0] + marks, marks)] == [INNER, META, INNER]
