"""No silent truncation: every call cut off at max_tokens is recorded and counted.

The fake engine returns at most ``max_tokens`` words and then finish_reason
"length", like a real backend, so each phase can be made to overflow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from engines import GenRequest
from engines.fake_engine import FakeEngine
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
    assert truncation_summary(trajs) == {"forward": 1, "loss": 4, "backward": 0, "update": 4, "total": 9}
    assert truncation_summary([]) == {"forward": 0, "loss": 0, "backward": 0, "update": 0, "total": 0}
    d = ok.to_dict()
    assert d["truncated"] == 4 and d["finish_reasons"]["update"] == ["length", "length"]


def test_eval_results_json_counts_truncation(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = cli.build_parser().parse_args([
        "eval", "--task", "synthetic_word_sorting", "--limit", "2", "--seeds", "0,1", "--steps", "1",
        "--max-tokens", "20", "--optimizer-max-tokens", "20", "--out", str(out), "--no-progress",
    ])
    res = run_eval(args, engine=FakeEngine(_inner_responder))
    assert res["truncated"] == {"forward": 2, "loss": 4, "backward": 0, "update": 4, "total": 10}
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
        text = req.messages[-1].content
        if MP.META_LOSS_PROMPT[:60] in text:
            return " ".join(["critique"] * eval_words)
        if _system(req) == MP.TGD_SYSTEM_PROMPT:
            return "A new loss prompt " + " ".join(["more"] * tgd_words) + MP.IMPROVED_END_TAG
        return "?"
    return respond


def test_truncated_meta_tgd_output_is_never_a_candidate() -> None:
    ex = Example(id="q0", question="Sort the following words alphabetically: List: banana apple", answer="apple banana")
    task = WordSortingTask(Splits((ex,), (ex,), (ex,)))
    trajs = _wrong_trajs(task)
    current = Artifacts(INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE)
    engine = FakeEngine(_meta_responder(tgd_words=50, eval_words=3))
    ctx = MetaContext(task, engine, max_tokens=30, temperature=0.0, max_pairs=8)
    candidates, info = propose([LearnedLoss()], ctx, current, trajs, step=1)
    assert candidates == []
    assert "cut off at max_tokens" in info["loss_prompt"]["skipped"]
    assert info["loss_prompt"]["tgd_truncated"] is True and info["loss_prompt"]["meta_evaluation_truncated"] is False
    assert len(engine.batches) == 2  # meta evaluation + TGD step; no validation follows
    # the same output within the cap is a candidate
    ok_engine = FakeEngine(_meta_responder(tgd_words=5, eval_words=3))
    ok_ctx = MetaContext(task, ok_engine, max_tokens=30, temperature=0.0, max_pairs=8)
    candidates, info = propose([LearnedLoss()], ok_ctx, current, trajs, step=1)
    assert [c.label for c in candidates] == ["loss_prompt"]
    assert candidates[0].artifacts.loss_prompt.startswith("A new loss prompt")


def test_truncated_meta_evaluation_still_feeds_the_step_and_is_recorded() -> None:
    ex = Example(id="q0", question="Sort the following words alphabetically: List: banana apple", answer="apple banana")
    task = WordSortingTask(Splits((ex,), (ex,), (ex,)))
    engine = FakeEngine(_meta_responder(tgd_words=5, eval_words=100))
    ctx = MetaContext(task, engine, max_tokens=30, temperature=0.0, max_pairs=8)
    candidates, info = propose([LearnedLoss()], ctx, Artifacts(INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE),
                               _wrong_trajs(task), step=1)
    assert info["loss_prompt"]["meta_evaluation_truncated"] is True
    assert len(candidates) == 1
    tgd_request = engine.batches[1][0].messages[-1].content
    assert re.search(r"<FEEDBACK>(critique ){29}critique</FEEDBACK>", tgd_request)


def test_truncated_maml_step_is_skipped() -> None:
    ex = Example(id="q0", question="Sort the following words alphabetically: List: banana apple", answer="apple banana")
    task = WordSortingTask(Splits((ex,), (ex,), (ex,)))
    engine = FakeEngine(lambda r: "We sort: " + " ".join(["word"] * 60) + MP.IMPROVED_END_TAG)
    ctx = MetaContext(task, engine, max_tokens=30, temperature=0.0, max_pairs=8)
    trajs = _wrong_trajs(task)
    assert all(t.gradients for t in trajs)
    candidates, info = propose([MAMLTemplate()], ctx, Artifacts(INITIAL_LOSS_PROMPT, DEFAULT_TEMPLATE), trajs, step=1)
    assert candidates == [] and "cut off at max_tokens" in info["template"]["skipped"]
