"""Fixed instruction texts of the chained (KV-reuse) inner-loop prompt layout.

In the TextGrad layout (``textgrad_prompts``) every phase is a fresh
conversation with its own system prompt, and the backward and update prompts
repeat the question, the answer and the evaluation inside tags. vLLM's prefix
cache reuses only a common *prefix*, so there each item's answer is read again
in every phase.

In the chained layout one step of one item is one growing conversation:

* forward: ``[system?, user: question]`` -> the answer (as the forward call sent it);
* loss: that, ``assistant: answer``, ``user: LOSS_USER_TEMPLATE`` (theta_L first)
  -> the evaluation;
* backward: the loss conversation, ``assistant: evaluation``,
  ``user: BACKWARD_INSTRUCTION`` -> the feedback (the textual gradient);
* update: the backward conversation, ``assistant: feedback``,
  ``user: UPDATE_USER_TEMPLATE`` -> the improved answer between
  ``<IMPROVED_VARIABLE>`` tags (same tags and parser as the TextGrad layout).

Each phase's prompt extends the previous one, so the engine computes an item's
question, answer and evaluation once per step and the ``[system, question]``
prefix once for all steps. Every step restarts from
``[system?, question, answer_t]``: a step's loss sees only the question and the
current answer, as in TextGrad, not earlier critiques.

theta_L heads the loss user turn, as in the TextGrad layout, so a learned loss
prompt plays the same part in both layouts. Templates are ``str.format``
strings with the named fields shown.
"""

from mtg_local.prompts.textgrad_prompts import IMPROVED_VARIABLE_END, IMPROVED_VARIABLE_START

#: Appended to theta_L in the loss user turn: what to evaluate and what not to do.
#: The question and the answer are the turns above (not repeated).
LOSS_REQUEST = (
    "Apply this to the question and the answer above in this conversation. Evaluate that answer: "
    "examine its reasoning and its final answer, and point out the mistakes and weaknesses it may "
    "have. Do not solve the problem yourself and do not write a new answer. No reference answer is "
    "available."
)

#: User turn of the loss call. Fields: loss_prompt (theta_L), request (``LOSS_REQUEST``).
LOSS_USER_TEMPLATE = "{loss_prompt}\n\n{request}"

#: User turn of the backward call (after the evaluation as the assistant's turn).
BACKWARD_INSTRUCTION = (
    "Using the evaluation you just wrote, give concrete feedback on how the answer to the question "
    "should change: name each step or statement that is wrong or weak, say why, and say what to do "
    "instead. Do not rewrite the answer: that is the next turn's job. If the answer is already "
    "right, say so and suggest no changes."
)

#: User turn of the update call (after the feedback as the assistant's turn). Fields:
#: constraints_block (``CONSTRAINTS_TEMPLATE`` or ""). Same tags as the TextGrad layout,
#: so ``update_parsing`` reads both.
UPDATE_USER_TEMPLATE = (
    "Now write the complete improved answer to the question, using the feedback above: keep what is "
    "right and fix what is wrong. The text between the tags replaces the answer exactly as written, "
    "so put nothing else between them.\n"
    "{constraints_block}"
    f"Start it with {IMPROVED_VARIABLE_START} and end it with {IMPROVED_VARIABLE_END}."
)

#: Fields: constraints (one per line, e.g. the task's answer format). "" when there are none.
CONSTRAINTS_TEMPLATE = "The improved answer must follow these constraints:\n<CONSTRAINTS>{constraints}</CONSTRAINTS>\n"
