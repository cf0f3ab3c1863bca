"""The loss, backward and update calls are built the way TextGrad builds them.

TextGrad's test-time loss (``textgrad/loss.py`` ``MultiChoiceTestTime``) frames
the evaluation with a fixed evaluator system prompt and puts the loss prompt
theta_L at the head of the user turn, followed by the question and the answer.
The paper's loss prompts (appendix C: the tasks' initial ones; appendix B: a
learned one) were written for that slot. These tests run the real inner loop
on a fake engine that records every request and check the structure of the
messages; ``test_textgrad_identity.py`` compares them with real TextGrad's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engines import GenRequest
from engines.fake_engine import FakeEngine
from mtg_local.inner_loop import DEFAULT_TEMPLATE, InnerItem, InnerLoopConfig, solution_optimization
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.tasks import get_task

FIX = Path(__file__).parent / "fixtures"

#: Appendix B.1 of the paper: the loss prompt metaTextGrad learned for BBH word sorting (verbatim).
PAPER_LEARNED_WORD_SORTING_LOSS = """Prompt for Evaluating Word Sorting Answers:

Understanding the significance of sorting in reasoning tasks is crucial. This prompt guides you through evaluating the provided answer to a word sorting problem. Follow these steps to enhance clarity and understanding of the sorting process:

1. **Sorting Criteria**: Clearly explain the rules for sorting words alphabetically. What principles should guide the process?

2. **Verification**: List the original words and demonstrate the sorting process step-by-step. Identify any discrepancies between the original and sorted lists.

3. **Identify Errors**: Point out mistakes in the sorting order. Reflect on the reasoning behind these errors and explain why they are incorrect. Provide the correct order with examples.

4. **Correct Order**: Present the accurate alphabetical order of the words clearly.

5. **Learning Application**: Summarize what you learned about sorting and suggest practical ways to reinforce this knowledge, such as sorting different word sets or engaging in related activities.

6. **Real-World Implications**: Discuss how incorrect sorting can impact data organization in fields like databases or libraries. Provide specific examples to illustrate your points.

7. **Encourage Engagement**: Consider discussing your findings with peers or engaging in group evaluations to enhance learning and understanding of sorting principles.

By following these steps, you will not only evaluate the sorting process effectively but also contribute to a deeper understanding of its significance in various contexts."""


def _respond(req: GenRequest) -> str:
    system = req.messages[0].content if req.messages[0].role == "system" else None
    if system == P.LOSS_SYSTEM_PROMPT:
        return "EVALUATION: the order of two words looks wrong."
    if system == P.BACKWARD_SYSTEM_PROMPT:
        return "FEEDBACK: compare the second letters."
    if system == P.OPTIMIZER_SYSTEM_PROMPT:
        start = "" if req.response_prefix else P.IMPROVED_VARIABLE_START
        return f"{start}reasoning again\nAnswer: A{P.IMPROVED_VARIABLE_END}"
    return "we compare the words.\nAnswer: A"


def _tasks():
    return {
        "synthetic_word_sorting": get_task("synthetic_word_sorting"),
        "mmlu_machine_learning": get_task("mmlu_machine_learning", data_file=FIX / "tasks_mmlu_machine_learning.jsonl"),
        "gpqa_diamond": get_task("gpqa_diamond", data_file=FIX / "tasks_gpqa_diamond.csv"),
    }


CASES = [(name, None) for name in ("synthetic_word_sorting", "mmlu_machine_learning", "gpqa_diamond")] + [
    ("synthetic_word_sorting", PAPER_LEARNED_WORD_SORTING_LOSS)
]


@pytest.mark.parametrize("prefill", [False, True], ids=["textgrad", "prefill"])
@pytest.mark.parametrize("task_name, loss_prompt", CASES, ids=["C-word", "C-mmlu", "C-gpqa", "B-learned-word"])
def test_paper_loss_prompts_head_the_loss_user_turn(task_name: str, loss_prompt: str | None, prefill: bool) -> None:
    task = _tasks()[task_name]
    theta_l = loss_prompt or task.initial_loss_prompt
    if loss_prompt is None:  # appendix C prompts all open this way
        assert theta_l.startswith("Below is a")
    ex = task.splits().test[0]
    engine = FakeEngine(_respond)
    items = [InnerItem(ex, seed, theta_l, DEFAULT_TEMPLATE) for seed in (0, 1)]
    config = InnerLoopConfig(steps=1, prefill_update_tag=prefill)
    trajs = solution_optimization(task, items, forward_engine=engine, config=config)
    fwd, loss_batch, bwd_batch, upd_batch = engine.batches
    question = task.format_question(ex)

    for k, req in enumerate(loss_batch):
        answer = trajs[k].answers[0]
        assert [m.role for m in req.messages] == ["system", "user"]
        assert req.messages[0].content == P.LOSS_SYSTEM_PROMPT
        # TextGrad: "{instruction}\nQuestion: {question}\nAnswer by the language model: {prediction}"
        assert req.messages[1].content == f"{theta_l}\nQuestion: {question}\nAnswer by the language model: {answer}"
        assert req.response_prefix == ""

    role = task.answer_role
    for k, req in enumerate(bwd_batch):
        user = req.messages[1].content
        loss_user = loss_batch[k].messages[1].content
        assert req.messages[0].content == P.BACKWARD_SYSTEM_PROMPT
        # TextGrad's CONVERSATION_TEMPLATE of the loss call, tags padded with spaces
        conversation = (
            f"<LM_SYSTEM_PROMPT> {P.LOSS_SYSTEM_PROMPT} </LM_SYSTEM_PROMPT>\n\n"
            f"<LM_INPUT> {loss_user} </LM_INPUT>\n\n"
            f"<LM_OUTPUT> {trajs[k].evaluations[0]} </LM_OUTPUT>\n\n"
        )
        assert user.startswith(f"You will give feedback to a variable with the following role: <ROLE> {role} </ROLE>.")
        # order: conversation, objective, variable span, question to the feedback engine
        pos = [user.index(conversation), user.index("<OBJECTIVE_FUNCTION>"),
               user.index(f"<VARIABLE> {trajs[k].answers[0]} </VARIABLE>")]
        assert pos == sorted(pos)

    for k, req in enumerate(upd_batch):
        user = req.messages[1].content
        assert req.messages[0].content == P.OPTIMIZER_SYSTEM_PROMPT
        assert req.response_prefix == (P.IMPROVED_VARIABLE_START if prefill else "")
        assert user.startswith(f"Here is the role of the variable you will improve: <ROLE>{role}</ROLE>.")
        context = user[user.index("<CONTEXT>"):user.index("</CONTEXT>")]
        assert f"<LM_INPUT> {loss_batch[k].messages[1].content} </LM_INPUT>" in context
        assert f"<LM_OUTPUT> {trajs[k].evaluations[0]} </LM_OUTPUT>" in context
        assert f"The output is used as evaluation of the {role}" in context
        assert f"<FEEDBACK>{trajs[k].gradients[0]}</FEEDBACK>" in context
        pos = [user.index(f"<VARIABLE> {trajs[k].answers[0]} </VARIABLE>"), user.index("<CONTEXT>"),
               user.index("<CONSTRAINTS>"), user.index(P.IMPROVED_VARIABLE_START)]
        assert pos == sorted(pos)
        assert f"<CONSTRAINTS>Constraint 1: {task.tgd_constraint}</CONSTRAINTS>" in user
    assert all(t.answers[1].endswith("Answer: A") for t in trajs)


def test_loss_requests_share_their_prefix_up_to_the_answer() -> None:
    """Prefix caching: same system prompt, theta_L and question come before the per-seed answer."""
    task = get_task("synthetic_word_sorting")
    ex = task.splits().test[0]
    engine = FakeEngine(_respond)
    items = [InnerItem(ex, seed, task.initial_loss_prompt, DEFAULT_TEMPLATE) for seed in range(3)]
    solution_optimization(task, items, forward_engine=engine, config=InnerLoopConfig(steps=1))
    users = [r.messages[1].content for r in engine.batches[1]]
    head = f"{task.initial_loss_prompt}\nQuestion: {task.format_question(ex)}\nAnswer by the language model: "
    assert all(u.startswith(head) for u in users)


def test_backward_and_update_show_the_answer_short_like_textgrad() -> None:
    """TextGrad shows ``variable.get_short_value()`` (first/last 10 words) in the backward and TGD spans."""
    import textgrad.variable as textgrad_variable
    long_answer = " ".join(f"step{i}" for i in range(40)) + "\nAnswer: A"

    def respond(req: GenRequest) -> str:
        return _respond(req) if req.messages[0].role == "system" and req.messages[0].content in (
            P.LOSS_SYSTEM_PROMPT, P.BACKWARD_SYSTEM_PROMPT, P.OPTIMIZER_SYSTEM_PROMPT) else long_answer

    task = get_task("synthetic_word_sorting")
    engine = FakeEngine(respond)
    items = [InnerItem(task.splits().test[0], 0, task.initial_loss_prompt, DEFAULT_TEMPLATE)]
    (traj,) = solution_optimization(task, items, forward_engine=engine, config=InnerLoopConfig(steps=1))
    _, (loss_req,), (bwd_req,), (upd_req,) = engine.batches
    full = traj.answers[0]
    short = textgrad_variable.Variable(full, role_description="answer", requires_grad=True).get_short_value()
    assert short != full and " (...) " in short and short.startswith(DEFAULT_TEMPLATE.split(" ")[0])
    for req in (bwd_req, upd_req):
        user = req.messages[1].content
        assert f"<VARIABLE> {short} </VARIABLE>" in user and f"<VARIABLE> {full} </VARIABLE>" not in user
        # the full answer is still there once: inside the quoted loss call
        assert user.count(full) == 1 and f"<LM_INPUT> {loss_req.messages[1].content} </LM_INPUT>" in user
