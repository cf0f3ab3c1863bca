"""Prompt texts of the baselines (data, no logic).

* ``DSPY_*``: field descriptions of the DSPy program that COPRO and MIPROv2
  optimize (``question -> answer`` with chain of thought). As in the paper's
  appendix B prompts, the answer field's description carries the task's answer
  format ("The answer to the question. The last line of your response ...").
* ``PROMPT_OPT_*``: TextGrad prompt optimization, where the forward system
  prompt is the trained variable. The initial prompt and the role description
  follow TextGrad's BBH prompt-optimization example; the evaluation (loss),
  feedback (backward) wording is our own, in TextGrad's tag vocabulary. The
  TGD step itself uses ``textgrad_prompts`` (shared with solution optimization).
"""

from __future__ import annotations

# -- DSPy program (COPRO, MIPROv2) -------------------------------------------
#: Description of the input field.
DSPY_QUESTION_DESC = "The question to answer."

#: Description of the output field. Field: format_instruction (the task's).
DSPY_ANSWER_DESC_TEMPLATE = "The answer to the question. {format_instruction}"

# -- TextGrad prompt optimization ---------------------------------------------
#: The starting system prompt (TextGrad's BBH example, without its numeric answer format:
#: our tasks put their answer format in the user message).
PROMPT_OPT_INITIAL_SYSTEM_PROMPT = "You will answer a reasoning question. Think step by step."

#: Role of the trained variable (TextGrad's wording).
PROMPT_OPT_SYSTEM_ROLE = (
    "structured system prompt to a somewhat capable language model that specifies the behavior "
    "and strategies for the QA task"
)

#: Constraint shown to the TGD step.
PROMPT_OPT_CONSTRAINTS = (
    "The system prompt is used for every question of the task: keep it general and never put the "
    "answer to a particular question in it.",
)

#: System prompt of the per-example evaluation (the loss), which sees the ground truth.
PROMPT_OPT_LOSS_SYSTEM = (
    "You evaluate a language model's answer to a reasoning question. You are given the question, "
    "the model's full response, the correct answer and whether the response's final answer matched "
    "it. Explain briefly and concretely what in the response led to the right or wrong final answer: "
    "mistakes in the reasoning, in following the answer format, or in the final line."
)

#: User message of the evaluation. Fields: question, answer, gold, verdict.
PROMPT_OPT_LOSS_TEMPLATE = (
    "**Question:**\n{question}\n\n"
    "**Model response:**\n{answer}\n\n"
    "**Correct answer:** {gold}\n"
    "**Result:** the final answer was {verdict}."
)

#: System prompt of the backward step (feedback on the system prompt from a minibatch).
PROMPT_OPT_BACKWARD_SYSTEM = (
    "You are the feedback step of a system that improves the system prompt of a language model. "
    "You are shown the current system prompt (<VARIABLE>) and, for a few questions, the model's "
    "response under that prompt with an evaluation of it (<EXAMPLES>). The objective is that the "
    "model answers more questions of this kind correctly. Explain how the system prompt should "
    "change to meet the objective: which strategies, checks or formatting rules it should state. "
    "Give feedback only; do not write the new system prompt. Be specific and brief."
)

#: User message of the backward step. Fields: role, variable, examples.
PROMPT_OPT_BACKWARD_TEMPLATE = (
    "The variable is a <ROLE>{role}</ROLE>\n\n"
    "<VARIABLE>{variable}</VARIABLE>\n\n"
    "<EXAMPLES>\n{examples}\n</EXAMPLES>\n\n"
    "<OBJECTIVE_FUNCTION>More correct final answers on questions like these.</OBJECTIVE_FUNCTION>\n\n"
    "How should the system prompt change?"
)

#: One example inside <EXAMPLES>. Fields: index, question, answer, evaluation, verdict.
PROMPT_OPT_EXAMPLE_TEMPLATE = (
    "Example {index} ({verdict}):\n"
    "<LM_INPUT>{question}</LM_INPUT>\n"
    "<LM_OUTPUT>{answer}</LM_OUTPUT>\n"
    "<EVALUATION>{evaluation}</EVALUATION>"
)

#: Separator between examples.
PROMPT_OPT_EXAMPLE_SEPARATOR = "\n\n"

#: Context of the system prompt shown to the TGD step.
PROMPT_OPT_CONTEXT = (
    "The system prompt is given to the model before every question of the task; it answered a "
    "minibatch of training questions under it, and the feedback comes from their evaluations."
)
