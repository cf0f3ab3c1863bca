"""Request identity: the batched inner loop sends, request for request, what real TextGrad sends.

Real ``textgrad`` 0.1.8 runs the per-item loop of its
``evaluation/solution_optimization.py`` (``tests/textgrad_script.py``) and
this project runs ``mtg eval --method solution_opt`` on the same questions,
both on one scripted engine that answers the same text with the same text.
Every request is keyed by (phase, step, item) and compared: system message,
user message, response prefix, temperature, top_p and max_tokens.

* ``--protocol textgrad``: every request identical, the forward call included.
* the default protocol: loss, backward and update identical; the forward call
  differs exactly by the protocol's named fields (``forward_system_prompt``,
  ``inference_template``, ``temperature``).

MMLU questions come from TextGrad's own ``MMLUInstanceDataset`` (its question
template and test-time loss) over the fixture rows; word sorting, which that
script lacks, uses ``MultiChoiceTestTime`` with the paper's loss prompt and
this project's role and constraint. Mutating a text, role, constraint or order
on our side must make the comparison fail (the last tests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engines.adapters.common import import_textgrad

import_textgrad()  # textgrad is a core dependency; imported the project's way (never ./logs)

from engines.fake_engine import FakeEngine  # noqa: E402
from mtg_local.cli import build_parser  # noqa: E402
from mtg_local.commands.eval import run_eval  # noqa: E402
from mtg_local.inner_loop import DEFAULT_TEMPLATE  # noqa: E402
from mtg_local.prompts import textgrad_prompts as P  # noqa: E402
from mtg_local.protocol import FORWARD_SYSTEM_PROMPTS, PRESETS, Protocol  # noqa: E402
from mtg_local.tasks import get_task  # noqa: E402
from mtg_local.tasks.word_sorting import FORMAT_INSTRUCTION as WORD_SORTING_CONSTRAINT  # noqa: E402
from tests.textgrad_script import (  # noqa: E402
    Sent,
    assert_same,
    assert_same_requests,
    compare,
    requests,
    run_test_time_training,
    scripted_engine,
    sent,
    textgrad_engine,
)

FIX = Path(__file__).parent / "fixtures"
MMLU_FILE = FIX / "tasks_mmlu_machine_learning.jsonl"
WORDS_FILE = FIX / "tasks_bbh_word_sorting.jsonl"
GPQA_FILE = FIX / "tasks_gpqa_diamond.csv"
STEPS = 2  # T
QUESTIONS = 3
TASKS = {"mmlu_machine_learning": MMLU_FILE, "word_sorting": WORDS_FILE, "gpqa_diamond": GPQA_FILE}
Key = tuple[str, int, int]  # (phase, step, item)
PHASE_OF_ID = {"fwd": "forward", "loss": "loss", "bwd": "backward", "upd": "update"}


def _key(request_id: str) -> Key:
    """"fwd-3" -> ("forward", 0, 3); "loss-2-3" -> ("loss", 2, 3)."""
    parts = request_id.split("-")
    return (PHASE_OF_ID[parts[0]], 0, int(parts[1])) if len(parts) == 2 else (PHASE_OF_ID[parts[0]], int(parts[1]), int(parts[2]))


def ours(task_name: str, protocol_args: list[str], out: Path, *, task: Any = None,
         raw: list | None = None) -> tuple[dict[Key, Sent], dict]:  # fmt: skip
    """``mtg eval --method solution_opt`` on the first questions of the test split, on the scripted engine.

    ``raw`` gets every request as sent.
    """
    fake = scripted_engine()
    args = build_parser().parse_args([
        "eval", "--method", "solution_opt", "--task", task_name, "--data-file", str(TASKS[task_name]),
        "--limit", str(QUESTIONS), "--steps", str(STEPS), "--out", str(out), "--no-progress", "--no-cache",
        *protocol_args,
    ])  # fmt: skip
    if task is None:
        res = run_eval(args, engine=fake)
    else:  # a task object changed by a test
        import mtg_local.commands.eval as eval_cmd

        orig = eval_cmd.load_task
        eval_cmd.load_task = lambda *a, **k: task
        try:
            res = run_eval(args, engine=fake)
        finally:
            eval_cmd.load_task = orig
    if raw is not None:
        raw += requests(fake)
    return {_key(r.id): sent(r) for r in requests(fake)}, res


def textgrad(task_name: str, protocol: Protocol, *, raw: list | None = None) -> dict[Key, Sent]:
    """Real TextGrad's ``run_test_time_training`` on the same items (question-major, as ``make_items``).

    Its loss prompt is TextGrad's instance task's under ``loss_prompt_source="textgrad"`` (the
    preset), and the protocol's otherwise (the paper's, put in TextGrad's ``MultiChoiceTestTime``).
    """
    task = get_task(task_name, data_file=TASKS[task_name], **protocol.task_kwargs())
    examples = task.splits().limited(protocol.limit).test[:QUESTIONS]
    fake = scripted_engine()
    engine = textgrad_engine(fake)
    out: dict[Key, Sent] = {}
    item = 0
    try:
        for ex in examples:
            question, objective, role, constraint = _textgrad_sample(task_name, task, ex, engine, protocol)
            for _seed in protocol.seeds:
                before = len(requests(fake))
                run_test_time_training(
                    question, objective, engine=engine, steps=STEPS, role=role, constraint=constraint,
                    system_prompt=P.SIMPLE_EVALS_SYSTEM_PROMPT,
                    answer_start=DEFAULT_TEMPLATE if protocol.inference_template else "",
                )  # fmt: skip
                calls = requests(fake)[before:]
                keys = [("forward", 0, item)] + [(p, t, item) for t in range(1, STEPS + 1)
                                                 for p in ("loss", "backward", "update")]  # fmt: skip
                assert len(calls) == len(keys), "TextGrad sends 1 + 3T requests per item"
                out.update(zip(keys, map(sent, calls)))
                item += 1
    finally:
        engine.close()
    if raw is not None:
        raw += requests(fake)
    return out


#: TextGrad's script has no word-sorting task: its multiple-choice role with the kind of question
#: changed (docs/protocol.md), derived here from the script's role so a change to our copy is caught.
TEXTGRAD_SIDE_WORD_SORTING_ROLE = P.MULTIPLE_CHOICE_ROLE.replace("multiple choice", "word sorting")


def _textgrad_sample(task_name: str, task: Any, ex: Any, engine: Any,
                     protocol: Protocol) -> tuple[str, Any, str, str]:  # fmt: skip
    """(question, test-time objective, role, constraint) of one question, TextGrad's way."""
    own_loss = protocol.loss_prompt_source == "textgrad"
    if task_name == "mmlu_machine_learning" and own_loss:
        from textgrad.tasks.mmlu import MMLUInstanceDataset

        rows = [json.loads(line) for line in MMLU_FILE.read_text().splitlines()]
        dataset = MMLUInstanceDataset.__new__(MMLUInstanceDataset)  # its rows: the fixture, not the Hub
        dataset.data, dataset.evaluation_api = rows, engine
        question, _answer, objective, _eval_fn = dataset[ex.meta["row"]]
        return question, objective, P.MULTIPLE_CHOICE_ROLE, P.MULTIPLE_CHOICE_CONSTRAINT
    if task_name == "gpqa_diamond" and own_loss:
        from textgrad.tasks.gpqa import GPQAInstanceDataset

        # The question is ours (TextGrad's loader gives every row one option order: docs/protocol.md);
        # the test-time objective is its GPQA_diamond instance task's.
        question = task.format_question(ex)
        dataset = GPQAInstanceDataset.__new__(GPQAInstanceDataset)
        dataset.evaluation_api = engine
        return question, dataset._get_instance_test_time_objective(question), P.MULTIPLE_CHOICE_ROLE, \
            P.MULTIPLE_CHOICE_CONSTRAINT
    from textgrad.loss import MultiChoiceTestTime

    if task_name != "word_sorting":  # a multiple-choice task under the paper's loss prompt
        question = task.format_question(ex)
        loss = MultiChoiceTestTime(task.initial_loss_prompt, engine=engine)
        return question, lambda instance: loss(question, instance), P.MULTIPLE_CHOICE_ROLE, \
            P.MULTIPLE_CHOICE_CONSTRAINT

    question = task.format_question(ex)  # no TextGrad task: the question is ours on both sides
    loss = MultiChoiceTestTime(task.initial_loss_prompt, engine=engine)
    return question, lambda instance: loss(question, instance), TEXTGRAD_SIDE_WORD_SORTING_ROLE, WORD_SORTING_CONSTRAINT


# -- the preset: every request ---------------------------------------------------------------
@pytest.mark.parametrize("task_name", list(TASKS))
def test_textgrad_preset_sends_textgrads_requests(task_name: str, tmp_path: Path) -> None:
    raw_mine: list = []
    raw_theirs: list = []
    mine, res = ours(task_name, ["--protocol", "textgrad"], tmp_path / "run", raw=raw_mine)
    theirs = textgrad(task_name, PRESETS["textgrad"].replace(steps=STEPS), raw=raw_theirs)
    assert len(theirs) == QUESTIONS * len(PRESETS["textgrad"].seeds) * (1 + 3 * STEPS)
    assert_same(mine, theirs)
    assert_same_requests(raw_mine, raw_theirs, "every request")  # full requests, as a multiset
    first = mine[("forward", 0, 0)]
    assert first.system == P.SIMPLE_EVALS_SYSTEM_PROMPT and first.response_prefix == "" and first.temperature == 0
    assert res["protocol"]["forward_system_prompt"] == "simple-evals" and res["protocol"]["inference_template"] is False
    assert res["protocol"]["loss_prompt_source"] == "textgrad"


def test_textgrads_gpqa_loss_prompt_is_the_papers_but_for_one_line_break() -> None:
    """TextGrad's GPQA instruction has a newline before "Use the Janusian Process", the paper's appendix C
    text a space (its PDF's line joined): the default protocol sends the paper's, the preset TextGrad's."""
    import yaml

    from mtg_local.protocol import load_task
    from mtg_local.tasks import builtin

    # the paper's appendix C text, as the shipped task file holds it
    INITIAL_LOSS_PROMPT = yaml.safe_load((Path(builtin.__file__).parent / "gpqa_diamond.yaml").read_text())[
        "initial_loss_prompt"]

    theirs = P.task_loss_prompt("gpqa_diamond")
    assert theirs != INITIAL_LOSS_PROMPT and theirs.replace("\nUse the Janusian", " Use the Janusian") == INITIAL_LOSS_PROMPT
    assert load_task("gpqa_diamond", PRESETS["default"], data_file=GPQA_FILE).initial_loss_prompt == INITIAL_LOSS_PROMPT
    assert load_task("gpqa_diamond", PRESETS["textgrad"], data_file=GPQA_FILE).initial_loss_prompt == theirs
    mmlu = load_task("mmlu_machine_learning", PRESETS["textgrad"], data_file=MMLU_FILE)
    assert mmlu.initial_loss_prompt == get_task("mmlu_machine_learning", data_file=MMLU_FILE).initial_loss_prompt
    words = load_task("word_sorting", PRESETS["textgrad"], data_file=WORDS_FILE)  # TextGrad has none: the paper's
    assert words.initial_loss_prompt == get_task("word_sorting", data_file=WORDS_FILE).initial_loss_prompt


# -- the default protocol: loss, backward, update; the forward call by its named fields ---------
@pytest.mark.parametrize("task_name", list(TASKS))
def test_default_protocol_sends_textgrads_loss_backward_and_update(task_name: str, tmp_path: Path) -> None:
    mine, res = ours(task_name, ["--seeds", "0,1"], tmp_path / "run")
    protocol = Protocol.from_dict(res["protocol"])
    assert protocol == PRESETS["default"].replace(seeds=(0, 1), steps=STEPS, limit=QUESTIONS)
    theirs = textgrad(task_name, protocol)
    optimizer = {k for k in theirs if k[0] != "forward"}
    assert len(optimizer) == QUESTIONS * 2 * 3 * STEPS
    assert_same({k: mine[k] for k in optimizer}, {k: theirs[k] for k in optimizer})
    # The forward call differs by the protocol's named fields, and by nothing else.
    forward = {k for k in theirs if k[0] == "forward"}
    assert_same({k: mine[k] for k in forward}, {k: theirs[k] for k in forward}, fields=("user", "top_p", "max_tokens"))
    for k in forward:
        assert mine[k].system == FORWARD_SYSTEM_PROMPTS[protocol.forward_system_prompt] is None
        assert theirs[k].system == P.SIMPLE_EVALS_SYSTEM_PROMPT
        assert (mine[k].response_prefix, theirs[k].response_prefix) == (DEFAULT_TEMPLATE, "")  # inference_template
        assert (mine[k].temperature, theirs[k].temperature) == (protocol.temperature, 0.0) == (0.7, 0.0)


# -- the comparison notices a change -----------------------------------------------------------
def _mutated_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> list[str]:
    """Our preset run with one thing changed, compared with TextGrad's: the difference lines."""
    task = get_task("mmlu_machine_learning", data_file=MMLU_FILE)
    if change == "role":
        monkeypatch.setattr(task, "answer_role", P.MULTIPLE_CHOICE_ROLE.replace("creative", "careful"), raising=False)
    elif change == "constraint":
        monkeypatch.setattr(P, "MULTIPLE_CHOICE_CONSTRAINT", P.MULTIPLE_CHOICE_CONSTRAINT + " Think step by step.")
    elif change == "system prompt":
        monkeypatch.setattr(P, "BACKWARD_SYSTEM_PROMPT", P.BACKWARD_SYSTEM_PROMPT.replace("feedback", "critique", 1))
    elif change == "order":  # the question before theta_L in the loss call
        monkeypatch.setattr(P, "loss_user", lambda lp, q, a: f"Question: {q}\n{lp}\nAnswer by the language model: {a}")
    mine, _ = ours("mmlu_machine_learning", ["--protocol", "textgrad"], tmp_path / change.replace(" ", "_"), task=task)
    monkeypatch.undo()
    return compare(mine, textgrad("mmlu_machine_learning", PRESETS["textgrad"].replace(steps=STEPS)))


@pytest.mark.parametrize("change, first_step_phases", [
    ("role", {"backward", "update"}), ("constraint", {"update"}), ("system prompt", {"backward", "update"}),
    ("order", {"loss", "backward", "update"}),  # the backward and update calls quote the loss call
])  # fmt: skip
def test_a_changed_text_role_constraint_or_order_is_caught(change: str, first_step_phases: set[str],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    diffs = _mutated_run(tmp_path, monkeypatch, change)
    assert diffs, f"changing the {change} went unnoticed"
    # step 1 shows where the change is; later steps differ too (their inputs are step 1's outputs)
    step1 = {line.split("'")[1] for line in diffs if line.split(", ")[1] == "1"}
    assert step1 == first_step_phases, diffs[:3]


# -- the texts themselves ------------------------------------------------------------------------
#: sha256 of the texts that exist only in TextGrad's evaluation/solution_optimization.py
#: (zou-group/textgrad at 75e912e), taken from that script's syntax tree (STARTING_SYSTEM_PROMPT,
#: the answer's role_description, the TGD constraint): both sides of the identity tests read
#: this project's copies, so these digests are what catches a change to them.
SCRIPT_TEXT_SHA256 = {
    "SIMPLE_EVALS_SYSTEM_PROMPT": "13e485d7ad3adac88e2c6b8dc7563be134d07ed976bbbbb33ae17e3b7f400e1e",
    "MULTIPLE_CHOICE_ROLE": "658597164b5de0b217035cb4cb744607f799d74c59f51ac13fb575ce8394a639",
    "MULTIPLE_CHOICE_CONSTRAINT": "fe92421dceb01dee7071610ec80110032f71f6fe6079c92bbf7c27ba863a2576",
}


@pytest.mark.parametrize("name", list(SCRIPT_TEXT_SHA256))
def test_texts_of_textgrads_script_are_the_scripts(name: str) -> None:
    import hashlib

    assert hashlib.sha256(getattr(P, name).encode()).hexdigest() == SCRIPT_TEXT_SHA256[name], name


#: sha256 of this project's word-sorting format line, the word-sorting TGD constraint on both sides
#: of the identity tests (TextGrad has no word-sorting script to compare it with): a change to it
#: is a change of the protocol's requests and must be made here too.
WORD_SORTING_CONSTRAINT_SHA256 = "3fe0ebdadd0f233a58e9cbac85234642c0ebabf7c2dc4fa645b5937814ea7358"


def test_word_sorting_role_and_constraint_are_pinned() -> None:
    import hashlib

    assert P.WORD_SORTING_ROLE == TEXTGRAD_SIDE_WORD_SORTING_ROLE
    assert hashlib.sha256(WORD_SORTING_CONSTRAINT.encode()).hexdigest() == WORD_SORTING_CONSTRAINT_SHA256


def test_texts_come_from_the_installed_package() -> None:
    import textgrad
    from textgrad.autograd import llm_backward_prompts
    from textgrad.loss import DEFAULT_TEST_TIME
    from textgrad.tasks import gpqa, mmlu

    assert textgrad.__version__ == "0.1.8" and P.textgrad() is textgrad
    assert P.LOSS_SYSTEM_PROMPT is DEFAULT_TEST_TIME
    assert P.BACKWARD_SYSTEM_PROMPT is llm_backward_prompts.BACKWARD_SYSTEM_PROMPT
    tgd = textgrad.TextualGradientDescent(parameters=[], engine=P._engine())
    assert P.OPTIMIZER_SYSTEM_PROMPT == tgd.optimizer_system_prompt
    assert [P.IMPROVED_VARIABLE_START, P.IMPROVED_VARIABLE_END] == tgd.new_variable_tags
    assert P.QUERY_TEMPLATE_MULTICHOICE is mmlu.QUERY_TEMPLATE_MULTICHOICE == gpqa.QUERY_TEMPLATE_MULTICHOICE
    # the script's constraint is the template's answer-line sentence
    assert f" {P.MULTIPLE_CHOICE_CONSTRAINT} " in P.QUERY_TEMPLATE_MULTICHOICE
    long = " ".join(f"w{i}" for i in range(30))
    assert P.short_value(long) == textgrad.Variable(long, role_description="x").get_short_value()


def test_gpqa_questions_are_textgrads_template() -> None:
    from textgrad.tasks.gpqa import QUERY_TEMPLATE_MULTICHOICE

    task = get_task("gpqa_diamond", data_file=FIX / "tasks_gpqa_diamond.csv")
    for ex in task.splits().test[:3]:
        stem = ex.question.rsplit("\n\nA) ", 1)[0]
        expected = QUERY_TEMPLATE_MULTICHOICE.format(Question=stem, **dict(zip("ABCD", ex.choices)))
        assert task.format_question(ex) == expected


def test_multiple_choice_text_keeps_whitespace_where_textgrads_loaders_do(tmp_path: Path) -> None:
    import csv

    from textgrad.tasks.gpqa import QUERY_TEMPLATE_MULTICHOICE
    from textgrad.tasks.mmlu import MMLUInstanceDataset

    rows = [{"question": f"  Question {i} ends in a newline?\n", "subject": "machine_learning",
             "choices": [f" a{i}", f"b{i} ", f"c{i}", f"d{i}\n"], "answer": i % 4} for i in range(8)]  # fmt: skip
    (tmp_path / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("mmlu_machine_learning", data_file=tmp_path / "mmlu.jsonl")
    dataset = MMLUInstanceDataset.__new__(MMLUInstanceDataset)
    dataset.data, dataset.evaluation_api = rows, P._engine()
    splits = task.splits()
    for ex in (*splits.train, *splits.val, *splits.test):
        assert task.format_question(ex) == dataset[ex.meta["row"]][0]
    # GPQA: TextGrad strips the options, not the question (its option order is its own: docs/tasks.md)
    with open(FIX / "tasks_gpqa_diamond.csv", newline="") as f:
        gpqa_rows = list(csv.DictReader(f))
    for r in gpqa_rows:
        r["Question"] = f" {r['Question']}\n"
    with open(tmp_path / "gpqa.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(gpqa_rows[0]))
        writer.writeheader()
        writer.writerows(gpqa_rows)
    gpqa = get_task("gpqa_diamond", data_file=tmp_path / "gpqa.csv")
    for ex in gpqa.splits().test:
        raw = gpqa_rows[ex.meta["row"]]["Question"]
        expected = QUERY_TEMPLATE_MULTICHOICE.format(Question=raw, **dict(zip("ABCD", ex.choices)))
        assert gpqa.format_question(ex) == expected and all(c == c.strip() for c in ex.choices)


def test_a_loss_prompt_with_braces_is_kept_as_written() -> None:
    # TextGrad would format the loss prompt twice (a KeyError here); its text is kept verbatim.
    user = P.loss_user('Reply as JSON {"ok": true}.', "Q?", "A.")
    assert user == 'Reply as JSON {"ok": true}.\nQuestion: Q?\nAnswer by the language model: A.'


def _clear_text_caches() -> None:
    for fn in (P.textgrad, P.tgd, P.loss_format):
        fn.cache_clear()


#: Every way into TextGrad's texts: each must go through the fingerprint check.
TEXT_ENTRIES = {
    "textgrad": lambda: P.textgrad(),
    "loss_user": lambda: P.loss_user("L", "Q", "A"),
    "loss_format": lambda: P.loss_format(),
    "short_value": lambda: P.short_value("a b c"),
    "tgd": lambda: P.tgd(),
    "task_loss_prompt": lambda: P.task_loss_prompt("gpqa_diamond"),
}


@pytest.mark.parametrize("entry", list(TEXT_ENTRIES))
def test_a_different_textgrad_wording_is_refused(entry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import textgrad.loss

    _clear_text_caches()
    monkeypatch.setattr(textgrad.loss, "DEFAULT_TEST_TIME", textgrad.loss.DEFAULT_TEST_TIME + " Be brief.")
    try:
        with pytest.raises(RuntimeError, match="words the TextGrad layout's prompts differently"):
            TEXT_ENTRIES[entry]()
    finally:
        monkeypatch.undo()
        _clear_text_caches()
    assert P.textgrad() is textgrad
    TEXT_ENTRIES[entry]()  # the package as installed passes


def test_engine_adapter_default_system_prompt_is_textgrads() -> None:
    from textgrad.engine.base import EngineLM

    from engines.adapters.textgrad_engine import DEFAULT_SYSTEM_PROMPT, TextGradEngine

    assert DEFAULT_SYSTEM_PROMPT is EngineLM.system_prompt
    fake = FakeEngine()
    llm = TextGradEngine(fake)
    llm.generate("hi", system_prompt="")  # ChatOpenAI: an empty system prompt means the default
    llm.close()
    assert fake.batches[-1][0].messages[0].content == EngineLM.system_prompt
