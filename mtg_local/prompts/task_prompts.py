"""Default texts of a task defined by a task file, per answer type (data, no logic).

A task file may set ``format_instruction``, ``role``, ``initial_loss_prompt`` and
``inference_template``; these are what it gets without them (docs/tasks.md says why).

* ``choice`` uses the paper's / TextGrad's multiple-choice texts: simple-evals'
  question template and TextGrad's answer role and constraint, read from the installed
  ``textgrad`` package by ``textgrad_prompts`` (for N options "ABCD" becomes the first N
  letters), and the paper's MMLU initial loss prompt (appendix C, ``MULTIPLE_CHOICE_LOSS_PROMPT``).
* ``exact``, ``number``, ``regex`` and ``python`` use the texts below: **ours**, written
  after the paper's. The format line has the shape of simple-evals' multiple-choice line
  (the answer on a last ``Answer:`` line, which every answer rule here reads); the loss
  prompt is the paper's word-sorting / MMLU loss prompt (appendix C) with the kind of
  question left out; the role is TextGrad's multiple-choice role without "multiple choice".
"""

from __future__ import annotations

#: The paper's initial loss prompt for MMLU (appendix C, verbatim): the default of ``choice``.
MULTIPLE_CHOICE_LOSS_PROMPT = (
    "Below is a multi-choice question and an answer. You are an expert scientist. Your job is to "
    "investigate the answer. Critically go through reasoning steps, consider your knowledge, and "
    "see if the answer is correct or if there are any critical mistakes."
)

#: The paper's word-sorting / MMLU initial loss prompt with the kind of question left out (ours).
GENERIC_LOSS_PROMPT = (
    "Below is a question and an answer. You are an expert scientist. Your job is to "
    "investigate the answer. Critically go through reasoning steps, consider your knowledge, and "
    "see if the answer is correct or if there are any critical mistakes."
)

#: Role of an answer being optimized, for every type but ``choice`` (ours; TextGrad's
#: multiple-choice role without "multiple choice").
GENERIC_ROLE = "creative and precise solution and the prediction for the question"

#: The format line of ``exact`` and ``python`` answers (ours, simple-evals' shape).
ANSWER_LINE_INSTRUCTION = (
    "The last line of your response should be of the following format: 'Answer: $ANSWER' (without quotes) "
    "where ANSWER is the final answer."
)

#: The format line of ``number`` answers (ours, simple-evals' shape).
NUMBER_LINE_INSTRUCTION = (
    "The last line of your response should be of the following format: 'Answer: $NUMBER' (without quotes) "
    "where NUMBER is the final answer as a number, without units."
)

#: ``regex`` gets no format line: only the task's author knows what the pattern reads, so a
#: task file says it in ``format_instruction`` (or the question does).
REGEX_INSTRUCTION = ""
