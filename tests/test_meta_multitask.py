"""Multi-task meta-training (``mtg train --task A,B``) with scripted engines.

* Minibatches draw from every task (the draw itself, and what a run's minibatch inner loops ran).
* The revert rule compares the MEAN of the per-task validation accuracies: a candidate better on
  that mean is kept even when the accuracy pooled over all validation items fell, a tie is
  rejected, and the per-task accuracies are in the history.
* Every item of a mixed batch sends exactly the requests its own task sends alone (question,
  answer-format constraint of the update).
* Per-task test results; resume after a stop gives the uninterrupted run's results; CLI parsing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engines.base import GenRequest
from engines.errors import UserError
from engines.fake_engine import FakeEngine
from meta_fakes import META_FEEDBACK, META_GRADIENT, ScriptedMetaEngine, is_meta_backward, is_meta_eval, meta_config
from meta_fakes import meta_tgd_target, request_text, tgd_variable
from mtg_local import cli
from mtg_local.commands.eval import EvalConfig, run_eval
from mtg_local.commands.train import config_from_args
from mtg_local.meta import Preempted, StopFlag, run_train
from mtg_local.meta.outer_loop import sample_task_minibatch
from mtg_local.prompts import meta_prompts as P
from mtg_local.tasks import get_task
from mtg_local.tasks.answer_types import LETTERS
from mtg_local.tasks.word_sorting import INITIAL_LOSS_PROMPT as WS_LOSS_PROMPT

FIXTURES = Path(__file__).parent / "fixtures"
BBH = str(FIXTURES / "tasks_bbh_word_sorting.jsonl")
MMLU = str(FIXTURES / "tasks_mmlu_machine_learning.jsonl")
WS, MC = "synthetic_word_sorting", "mmlu_machine_learning"


def test_task_minibatch_is_pure_and_shares_the_size_out_across_tasks():
    trains = {"a": [f"a{i}" for i in range(5)], "b": [f"b{i}" for i in range(5)], "c": [f"c{i}" for i in range(5)]}
    mb = {step: sample_task_minibatch(trains, 4, 0, step) for step in range(1, 7)}
    assert mb[1] == sample_task_minibatch(trains, 4, 0, 1) != sample_task_minibatch(trains, 4, 1, 1)
    for step, items in mb.items():
        counts = {t: sum(x.startswith(t) for x in items) for t in trains}
        assert sorted(counts.values()) == [1, 1, 2]  # 4 over 3 tasks: every task, one gets the extra
        assert counts["abc"[(step - 1) % 3]] == 2  # ... in rotation
        assert [x[0] for x in items[:3]] == ["a", "b", "c"]  # interleaved: every task early
    # fewer questions than tasks: each step covers some tasks, the rotation covers all of them
    assert [sorted(x[0] for x in sample_task_minibatch(trains, 1, 0, s)) for s in (1, 2, 3)] == [["a"], ["b"], ["c"]]
    small = sample_task_minibatch({"a": ["a0"], "b": trains["b"]}, 4, 0, 1)  # a task with fewer questions than
    assert small[0] == "a0" and len(small) == 3 and all(x[0] == "b" for x in small[1:])  # its share gives them all


def multi_cfg(out: Path, **kw):
    base = dict(out=str(out), task=f"{WS},word_sorting", data_files={"word_sorting": BBH}, method="learned_loss",
                engine="scripted", seeds=(0, 1), outer_steps=3, minibatch=2, steps=1, limit=3, max_tokens=64,
                optimizer_max_tokens=64, meta_max_tokens=64, progress=False, answer_selection="last",
                keep_answer_format=True)
    base.update(kw)
    return meta_config(**base)


def test_minibatches_draw_from_every_task(tmp_path: Path):
    res = run_train(multi_cfg(tmp_path / "run"), engine=ScriptedMetaEngine({(2, "loss_prompt")}))
    steps = [h for h in res["history"] if h["step"] > 0]
    assert [h["step"] for h in steps] == [1, 2, 3]
    for h in steps:
        assert {i.split("/", 1)[0] for i in h["minibatch"]} == {WS, "word_sorting"}, h["minibatch"]
        assert set(h["train_accuracy_per_task"]) == {WS, "word_sorting"}
        if h["val_accuracy"] is not None:  # (a step with nothing to propose validates nothing)
            assert set(h["val_accuracy_per_task"]) == {WS, "word_sorting"}
    assert res["tasks"] == [WS, "word_sorting"] and res["task"] == f"{WS},word_sorting"
    assert set(res["per_task"]) == {WS, "word_sorting"}
    for name, r in res["per_task"].items():
        assert r["test_accuracy"]["mean"] == 1.0 and r["n_questions"] == 3, name  # step 2's GOOD prompt won
    assert res["test_accuracy"]["mean"] == 1.0 and res["n_questions"] == 6
    assert res["learned"]["loss_prompt"].startswith(WS_LOSS_PROMPT)  # started from the FIRST task's prompt
    trajs = [json.loads(x) for x in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    assert {t["example_id"].split("/")[0] for t in trajs} == {WS, "word_sorting"} and len(trajs) == 12


# -- the revert rule on the mean of the per-task accuracies --------------------------------------------
def mc_answers() -> dict[str, str]:
    s = get_task(MC, data_file=MMLU).splits()
    return {e.question: e.answer for e in (*s.train, *s.val, *s.test)}


def right(marker: int, task: str, words: list[str]) -> bool:
    """M1: word sorting only; M2 and M4: 3-word lists and multiple choice; M3: multiple choice only."""
    if task == "ws":
        return marker == 1 or (marker in (2, 4) and len(words) == 3)
    return marker in (2, 3, 4)


def level_responder(answers: dict[str, str]):
    def respond(req: GenRequest) -> str:
        text = request_text(req)
        if is_meta_eval(req):
            return META_FEEDBACK
        if is_meta_backward(req):
            return META_GRADIENT
        if (target := meta_tgd_target(req)) is not None:
            variable = tgd_variable(req, target)
            return f"{variable} [v{req.sampling.seed}] M{req.sampling.seed}{P.IMPROVED_END_TAG}"
        marks = re.findall(r"\bM(\d)\b", req.response_prefix)
        marker = int(marks[-1]) if marks else 0
        m = re.search(r"List: ([a-z' \-]+)", text)
        if m:
            words = m.group(1).split()
            return "Answer: " + " ".join(sorted(words, reverse=not right(marker, "ws", words)))
        letter = next(a for q, a in answers.items() if q in text)
        return "Answer: " + (letter if right(marker, "mc", []) else LETTERS[(LETTERS.index(letter) + 1) % 4])

    return respond


def test_revert_uses_the_mean_of_the_per_task_validation_accuracies(tmp_path: Path):
    ws_val = get_task(WS).splits().limited(4).val
    f = sum(len(e.answer.split()) == 3 for e in ws_val) / len(ws_val)
    n_ws, n_mc = len(ws_val), len(get_task(MC, data_file=MMLU).splits().limited(4).val)
    pooled = {1: n_ws / (n_ws + n_mc), 2: (f * n_ws + n_mc) / (n_ws + n_mc)}
    assert 0 < f < 1 and pooled[2] < pooled[1]  # the pooled accuracy would reject step 2; the mean keeps it
    engine = FakeEngine(level_responder(mc_answers()), name="levels")
    cfg = meta_config(out=str(tmp_path / "run"), task=f"{WS},{MC}", data_files={MC: MMLU}, method="reptile",
                      engine="fake", seeds=(0, 1), outer_steps=4, minibatch=2, steps=0, limit=4, max_tokens=64,
                      optimizer_max_tokens=64, meta_max_tokens=256, answer_selection="last", no_cache=True,
                      progress=False)
    res = run_train(cfg, engine=engine)
    hist = res["history"]
    assert [h["step"] for h in hist] == [0, 1, 2, 3, 4]
    per_task = [h["val_accuracy_per_task"] for h in hist]
    assert per_task == [{WS: 0.0, MC: 0.0}, {WS: 1.0, MC: 0.0}, {WS: f, MC: 1.0}, {WS: 0.0, MC: 1.0},
                        {WS: f, MC: 1.0}]
    assert [h["val_accuracy"] for h in hist] == [sum(p.values()) / 2 for p in per_task]
    assert [h["accepted"] for h in hist] == [True, True, True, False, False]  # step 4: a tie with the best
    for h in hist[1:]:
        assert h["accepted"] == (h["val_accuracy"] > h["best_val_before"])
    assert res["best_step"] == 2 and "M2" in res["learned"]["template"]
    ws_test = get_task(WS).splits().limited(4).test
    expect_ws = sum(len(e.answer.split()) == 3 for e in ws_test) / len(ws_test)
    assert {t: r["test_accuracy"]["mean"] for t, r in res["per_task"].items()} == {WS: expect_ws, MC: 1.0}
    assert res["test_accuracy"]["mean"] == pytest.approx((expect_ws + 1.0) / 2)
    for step in (1, 2, 3, 4):  # every minibatch drew from both tasks
        (h,) = [h for h in hist if h["step"] == step]
        assert {i.split("/")[0] for i in h["minibatch"]} == {WS, MC}


def test_each_item_sends_the_requests_of_its_own_task(tmp_path: Path):
    """The test phase of a mixed run: the multiple-choice items' requests are exactly a
    single-task eval's (same question, same answer-format constraint in the update)."""
    engine = FakeEngine()
    cfg = meta_config(out=str(tmp_path / "multi"), task=f"{WS},{MC}", data_files={MC: MMLU}, engine="fake",
                      seeds=(0, 1), outer_steps=0, steps=1, limit=3, max_tokens=32, optimizer_max_tokens=32,
                      no_cache=True, progress=False)
    run_train(cfg, engine=engine)
    multi = engine.batches[-4:]  # the test inner loop: forward, loss, backward, update
    alone = FakeEngine()
    run_eval(EvalConfig(out=str(tmp_path / "alone"), task=MC, data_file=MMLU, engine="fake", no_cache=True,
                        loss_prompt=WS_LOSS_PROMPT, protocol=cfg.protocol, progress=False), engine=alone)
    assert len(alone.batches) == 4

    def content(reqs):
        return sorted(repr((r.messages, r.sampling, r.response_prefix)) for r in reqs)

    for phase, (mixed, single) in enumerate(zip(multi, alone.batches)):
        mc = [r for r in mixed if "\nA) " in request_text(r)]  # a multiple-choice question's options
        assert single and len(mixed) > len(mc), phase  # (identical requests of one batch are sent once)
        assert content(mc) == content(single), phase


def test_resume_after_a_stop_matches_the_uninterrupted_run(tmp_path: Path):
    full = run_train(multi_cfg(tmp_path / "full"), engine=ScriptedMetaEngine({(2, "loss_prompt")}))
    stop = StopFlag()
    engine = ScriptedMetaEngine({(2, "loss_prompt")}, on_meta_tgd=lambda s: stop.set(0) if s == 2 else None)
    with pytest.raises(Preempted):
        run_train(multi_cfg(tmp_path / "cut"), engine=engine, stop=stop)
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["completed_step"] == 1
    resumed = run_train(multi_cfg(tmp_path / "cut"), engine=ScriptedMetaEngine({(2, "loss_prompt")}), resume=True)
    for key in ("learned", "history", "test_accuracy", "per_task", "tasks", "best_step"):
        assert resumed[key] == full[key], key
    assert resumed["resumed"] is True and resumed["engine_usage"]["cache_hits"] > 0


def parse_train(*argv: str):
    return config_from_args(cli.build_parser().parse_args(["train", "--out", "/tmp/x-never-written", *argv]))[0]


def test_cli_task_list_and_data_files():
    cfg = parse_train("--task", f"{WS},mmlu_machine_learning", "--data-file", f"mmlu_machine_learning={MMLU}")
    assert cfg.tasks == [WS, MC] and cfg.data_files == ((MC, MMLU),) and cfg.data_file is None
    assert cfg.data_file_of(MC) == MMLU and cfg.data_file_of(WS) is None
    assert cfg.to_dict()["data_files"] == {MC: MMLU}
    single = parse_train("--task", "word_sorting", "--data-file", f"word_sorting={BBH}")
    assert single.data_file == BBH and single.data_files == ()  # the single-task form
    assert parse_train("--task", "word_sorting", "--data-file", BBH).data_file == BBH
    for argv, message in (
        (["--task", f"{WS},{MC}", "--data-file", MMLU], "give each file's task"),
        (["--task", f"{WS},word_sorting", "--data-file", f"{MC}={MMLU}"], "not in --task"),
        (["--task", f"{WS},{WS}"], "names a task twice"),
        (["--task", "word_sorting,bbh_word_sorting"], "names a task twice"),
        (["--task", "word_sorting", "--data-file", BBH, "--data-file", BBH], "one plain FILE"),
    ):
        with pytest.raises(UserError, match=message):
            parse_train(*argv)
