"""``mtg baseline --method prompt_opt`` sends TextGrad's requests, phase by phase and step by step.

TextGrad's ``evaluation/prompt_optimization.py`` loop (``tests/prompt_opt_script.py``,
real ``textgrad`` objects on ``TextGradEngine`` over a recording ``FakeEngine``) and
ours (phase-batched, on a ``FakeEngine``) run on the same questions with the same
scripted model, TextGrad's engines at the protocol's sampling. Every phase of every
step must send the same full requests, each as many times (``textgrad_script.full``:
every message with its role, the response prefix, temperature, top_p, max_tokens,
stop): the forward answers, the backward through each loss to its answer, the
backward through each forward call to the system prompt, the one TGD step with all
B feedbacks, and the validation pass; the kept prompt and validation accuracy after
each step (the revert rule) and the 12 steps must agree too. One named difference:
with the paper's template, our answers start with it as a response prefix (protocol
``inference_template``), which TextGrad cannot send; TextGrad's forward requests are
compared with that prefix added. Seeds are each side's own (TextGrad's calls carry none).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from engines.base import GenRequest
from engines.coalescer import CoalescerConfig
from engines.fake_engine import FakeEngine
from mtg_local.inner_loop import DEFAULT_TEMPLATE
from mtg_local.prompts import baseline_prompts as BP
from mtg_local.protocol import Protocol
from mtg_local.tasks import get_task
from tests.prompt_opt_script import continuing, flat, pairs, textgrad_prompt_optimization, words_in
from tests.textgrad_script import assert_same_requests

from engines.adapters.textgrad_engine import TextGradEngine  # noqa: E402  (sets TEXTGRAD_LOG_DIR first)
import textgrad as tg  # noqa: E402
from textgrad.autograd.llm_backward_prompts import BACKWARD_SYSTEM_PROMPT  # noqa: E402
from textgrad.autograd.string_based_ops import StringBasedFunction  # noqa: E402

from mtg_local.baselines import prompt_opt_requests as R  # noqa: E402
from mtg_local.baselines.prompt_optimization import PromptOptConfig, optimize_system_prompt  # noqa: E402

B, N_VAL, STEPS = 3, 4, 12
#: One TGD output per step: GOOD prompts answer every question right, HALF ones those with an
#: even number of words, others none -- so steps are accepted (better), kept on a tie, reverted.
CANDIDATES = [
    "GOOD: compare the first letters, then the next ones on a tie.",
    "BAD: sort by length.",
    "HALF: sort when the list is short.",
    "GOOD: " + " ".join(f"rule{i} compares letters" for i in range(12)),  # > 20 words: short value in prompts
    "BAD: reverse the list.",
    "GOOD: alphabetical order, letter by letter.",
    "HALF: alphabetical order when even.",
    "GOOD: check every neighbouring pair.",
    "BAD: keep the input order.",
    "GOOD: write the sorted words on the last line.",
    "GOOD: " + " ".join(f"step{i}" for i in range(30)),
    "BAD: no sorting.",
]


def _tgd_system_prompt() -> str:
    variable = tg.Variable("v", role_description="r")
    return tg.TextualGradientDescent(parameters=[variable], engine=object()).optimizer_system_prompt


class _Sending(FakeEngine):
    """A ``FakeEngine`` that also records every call's requests as the caller sent them (``.sent``).

    (``.batches`` holds what reached the backend: identical requests of one call are generated once.)
    """

    def __init__(self, respond: Any) -> None:
        super().__init__(respond)
        self.sent: list[list[GenRequest]] = []

    def generate(self, requests: Any, /, **kwargs: Any) -> Any:
        self.sent.append(list(requests))
        return super().generate(requests, **kwargs)


def _model(template: str) -> _Sending:
    """The scripted model both sides talk to (a fresh one per side: the TGD outputs are consumed in order)."""
    steps = iter(CANDIDATES)
    tgd_system = _tgd_system_prompt()

    def full(req: GenRequest) -> str:
        ((system, user),) = pairs([req])
        if system == tgd_system:
            return f"<IMPROVED_VARIABLE>{next(steps)}</IMPROVED_VARIABLE>"
        if system == BACKWARD_SYSTEM_PROMPT:
            return f"feedback {hashlib.sha256(user.encode()).hexdigest()[:12]}: compare letters one by one"
        ws = sorted(words_in(user))
        right = "GOOD" in system or ("HALF" in system and len(ws) % 2 == 0)
        return f"{template}we compare the words.\nAnswer: " + " ".join(ws if right else ws[::-1])

    return _Sending(continuing(full))


def _with_prefix(requests: list[GenRequest], prefix: str) -> list[GenRequest]:
    """TextGrad's answer requests as ours send them: the template as the response prefix (``inference_template``)."""
    return [dataclasses.replace(r, response_prefix=prefix) for r in requests]


@pytest.fixture(scope="module")
def task():
    return get_task("synthetic_word_sorting")


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, ""], ids=["paper-template", "textgrad-forward"])
def test_prompt_opt_sends_textgrads_requests(task, template):
    sp = task.splits()
    train, val = sp.train[:13], sp.val[:N_VAL]  # 13: every epoch has a 5th minibatch the break skips
    protocol = Protocol(seeds=(0,), temperature=0.3, top_p=0.9, max_tokens=300, optimizer_temperature=0.1,
                        optimizer_max_tokens=400)
    initial = R.initial_system_prompt()

    # -- ours: phase-batched, forward and optimizer engines apart
    ours_fwd, ours_opt = _model(template), _model(template)
    res = optimize_system_prompt(
        task, train, val, forward_engine=ours_fwd, optimizer_engine=ours_opt, protocol=protocol,
        config=PromptOptConfig(seed=42, template=template),
    )

    # -- TextGrad's loop on the same data, its loss a StringBasedFunction over the task's scoring
    by_gold = {ex.answer: ex for ex in [*train, *val]}
    assert len(by_gold) == len(train) + len(val)
    eval_fn = StringBasedFunction(
        lambda prediction, ground_truth_answer: int(task.score(prediction.value, by_gold[ground_truth_answer.value])),
        function_purpose=R.string_function_purpose(),
    )
    tg_fwd, tg_opt = _model(template), _model(template)
    fast = CoalescerConfig(window_s=0)
    # TextGrad's engines at the protocol's sampling (its script: ChatOpenAI's per-call defaults)
    test_engine = TextGradEngine(tg_fwd, coalescer_config=fast, temperature=protocol.temperature,
                                 top_p=protocol.top_p, max_tokens=protocol.max_tokens)  # fmt: skip
    eval_engine = TextGradEngine(tg_opt, coalescer_config=fast, temperature=protocol.optimizer_temperature,
                                 top_p=protocol.top_p, max_tokens=protocol.optimizer_max_tokens)  # fmt: skip
    xy = lambda examples: [(task.format_question(ex), ex.answer) for ex in examples]  # noqa: E731
    try:
        results = textgrad_prompt_optimization(
            xy(train), xy(val),
            eval_fn, test_engine=test_engine, eval_engine=eval_engine, starting_prompt=initial,
            role=BP.PROMPT_OPT_SYSTEM_ROLE, gold_role=BP.PROMPT_OPT_GOLD_ROLE, seed=42,
        )
    finally:
        test_engine.close()
        eval_engine.close()

    # 12 steps (3 epochs, break after the 4th minibatch), each: forward + validation on the forward
    # engine, loss backward + prompt backward + TGD on the optimizer engine -- one call per phase for us.
    h = res.history
    assert [e["step"] for e in h] == list(range(STEPS + 1)) and len(results["prompt"]) == STEPS + 1
    assert [len(b) for b in ours_fwd.sent] == [N_VAL] + [B, N_VAL] * STEPS
    assert [len(b) for b in ours_opt.sent] == [B, B, 1] * STEPS
    theirs_f, theirs_o = flat(tg_fwd.sent), flat(tg_opt.sent)
    assert len(theirs_f) == N_VAL + STEPS * (B + N_VAL) and len(theirs_o) == STEPS * (2 * B + 1)

    assert_same_requests(ours_fwd.sent[0], _with_prefix(theirs_f[:N_VAL], template), "initial validation")
    for s in range(STEPS):
        f = _with_prefix(theirs_f[N_VAL + s * (B + N_VAL):][: B + N_VAL], template)
        o = theirs_o[s * (2 * B + 1):][: 2 * B + 1]  # TextGrad interleaves: loss bwd, prompt bwd per example
        phases = {
            "forward": (ours_fwd.sent[1 + 2 * s], f[:B]),
            "loss backward": (ours_opt.sent[3 * s], o[0:2 * B:2]),
            "prompt backward": (ours_opt.sent[3 * s + 1], o[1:2 * B:2]),
            "TGD step": (ours_opt.sent[3 * s + 2], o[2 * B:]),
            "validation": (ours_fwd.sent[2 + 2 * s], f[B:]),
        }
        for name, (ours, theirs) in phases.items():
            assert_same_requests(ours, theirs, f"step {s + 1} {name}")

    # The revert rule: the same prompt kept and the same validation accuracy after every step.
    kept, acc = [], []
    current, current_acc = h[0]["candidate"], h[0]["val_accuracy"]
    for e in h[1:]:
        if e["accepted"]:
            current, current_acc = e["candidate"], e["val_accuracy"]
        kept.append(current)
        acc.append(current_acc)
    assert results["prompt"] == [initial, *kept]
    assert [float(sum(results["validation_acc"][0]) / N_VAL), *map(float, results["validation_acc"][1:])] == [
        h[0]["val_accuracy"], *acc]
    assert [e["accepted"] for e in h[1:4]] == [True, False, False] and h[4]["accepted"] is True
    assert h[4]["val_accuracy"] == h[1]["val_accuracy"] == 1.0  # a tie keeps the new prompt
    assert res.system_prompt == CANDIDATES[10] and res.val_accuracy == 1.0

    # Sampling comes from the protocol; the answer starts with the template; the TGD tag is not
    # prefilled (the protocol's default, as TextGrad).
    for r in flat(ours_fwd.sent):
        assert (r.sampling.temperature, r.sampling.top_p, r.sampling.max_tokens) == (0.3, 0.9, 300)
        assert r.response_prefix == template
    for r in flat(ours_opt.sent):
        assert (r.sampling.temperature, r.sampling.top_p, r.sampling.max_tokens) == (0.1, 0.9, 400)
    assert {r.response_prefix for b in ours_opt.sent[2::3] for r in b} == {""}
    # Every request has a system message (the prompt being optimized, TextGrad's backward / TGD ones).
    assert all(r.messages[0].role == "system" and r.messages[0].content for r in [*theirs_f, *theirs_o])


def test_texts_textgrad_holds_outside_constants(tmp_path):
    """The starting prompt and the loss's purpose are read from textgrad; the script's roles are pinned."""
    for split in ("train", "val", "test"):
        (tmp_path / "object_counting").mkdir(exist_ok=True)
        (tmp_path / "object_counting" / f"{split}.csv").write_text(",x,y\n0,How many apples?,3\n")
    from textgrad.tasks import load_task

    train_set, _, _, eval_fn = load_task("BBH_object_counting", evaluation_api=None, root=str(tmp_path))
    assert eval_fn.function_purpose == R.string_function_purpose()
    description = train_set.get_task_description()
    start = R.initial_system_prompt()
    assert description.startswith(start + " ") and "'Answer: $VALUE'" in description[len(start):]
    assert "Answer" not in start
    # SHA-256 of the role descriptions in evaluation/prompt_optimization.py (zou-group/textgrad 75e912e),
    # which is not installed with the package: a changed role fails here.
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    assert sha(BP.PROMPT_OPT_SYSTEM_ROLE) == "8bf273864b665cd6151e24008c17dd2c85dc9cf5b3e56f0a46c68da568d018de"
    assert sha(BP.PROMPT_OPT_GOLD_ROLE) == "17573eefa84a1e819e9383f10b85b4ab190dd65c0e5cf8b18c3edde4e963a8dc"
