"""Prompt texts of the batched TextGrad operations (forward, loss, backward, TGD step).

Written for this project: the roles and the tags (``<ROLE>``, ``<LM_SYSTEM_PROMPT>``,
``<LM_INPUT>``, ``<LM_OUTPUT>``, ``<OBJECTIVE_FUNCTION>``, ``<VARIABLE>``,
``<FEEDBACK>``, ``<CONSTRAINTS>``, ``<IMPROVED_VARIABLE>``) are TextGrad's, the words
are our own. Templates are ``str.format`` strings with the named fields shown.

Shared text comes first in every template (system prompt, role, constraints,
loss prompt, question) and per-item text last, so requests of one phase share
long prefixes in vLLM's prefix cache.
"""

#: Tags around the improved variable in a TGD step's output.
IMPROVED_VARIABLE_START = "<IMPROVED_VARIABLE>"
IMPROVED_VARIABLE_END = "</IMPROVED_VARIABLE>"

#: Role of the answer variable that solution optimization improves.
ANSWER_ROLE = "solution to the question: step-by-step reasoning that ends with the final answer line"

#: Role of the loss output (an evaluation in natural language).
EVALUATION_ROLE = "evaluation of the solution"

# -- loss --------------------------------------------------------------------
#: User message of the loss call; the loss prompt theta_L is the system prompt.
#: Fields: question, answer. No ground truth: it is not available at inference.
LOSS_INPUT_TEMPLATE = "**Question:**\n{question}\n\n**Answer:**\n{answer}"

# -- backward ----------------------------------------------------------------
BACKWARD_SYSTEM_PROMPT = (
    "You are the feedback step of a system that improves text with language models. The text "
    "being improved is called the variable. You are shown how the variable was evaluated: the "
    "instructions the evaluator got (<LM_SYSTEM_PROMPT>), what it read (<LM_INPUT>) and what it "
    "said (<LM_OUTPUT>). Your only job is to explain how the variable inside <VARIABLE> should "
    "change so that the evaluation in <OBJECTIVE_FUNCTION> improves: point to concrete mistakes "
    "and say what to do instead. Do not write the improved variable yourself, give feedback only. "
    "Be specific and brief."
)

#: Fields: role, loss_prompt, loss_input, evaluation, variable.
BACKWARD_USER_TEMPLATE = (
    "You give feedback on a variable whose role is: <ROLE>{role}</ROLE>\n\n"
    "The variable was evaluated by a language model with these instructions:\n"
    "<LM_SYSTEM_PROMPT>{loss_prompt}</LM_SYSTEM_PROMPT>\n\n"
    "It read:\n<LM_INPUT>{loss_input}</LM_INPUT>\n\n"
    "It answered:\n<LM_OUTPUT>{evaluation}</LM_OUTPUT>\n\n"
    "<OBJECTIVE_FUNCTION>Use the evaluation above to criticise the variable. The only goal is a "
    "better evaluation of the variable.</OBJECTIVE_FUNCTION>\n\n"
    "Give feedback on this text:\n<VARIABLE>{variable}</VARIABLE>\n\n"
    "How should the {role} change to meet the objective?"
)

# -- TGD step ----------------------------------------------------------------
OPTIMIZER_SYSTEM_PROMPT = (
    "You are the update step of a system that improves text (the variable): solutions to "
    "problems, prompts, code or other text. You get the variable, its role and feedback on it. "
    "Feedback can be noisy: keep what is right, fix what is wrong, and respect the role of the "
    "variable and the context it is used in. Reply with the complete improved variable between "
    f"{IMPROVED_VARIABLE_START} and {IMPROVED_VARIABLE_END} tags. The text between the tags "
    "replaces the variable exactly as written, so put nothing else between them."
)

#: Fields: role, constraints_block, context, variable, feedback. No placeholder
#: text between example tags: a 135M model copied "the improved variable" verbatim.
OPTIMIZER_USER_TEMPLATE = (
    "Role of the variable to improve: <ROLE>{role}</ROLE>\n\n"
    "{constraints_block}"
    "Context the variable is used in:\n<CONTEXT>{context}</CONTEXT>\n\n"
    "Current value of the variable:\n<VARIABLE>{variable}</VARIABLE>\n\n"
    "Feedback on the variable:\n<FEEDBACK>{feedback}</FEEDBACK>\n\n"
    "Now write the complete improved variable ({role}). "
    f"Start it with {IMPROVED_VARIABLE_START} and end it with {IMPROVED_VARIABLE_END}."
)

#: Fields: constraints (one per line). Empty string when there are none.
CONSTRAINTS_TEMPLATE = (
    "The improved variable must follow these constraints:\n<CONSTRAINTS>{constraints}</CONSTRAINTS>\n\n"
)

#: Separator between several gradients of one variable in <FEEDBACK>.
FEEDBACK_SEPARATOR = "\n\n---\n\n"

#: Context of an answer variable (field: question).
QUESTION_CONTEXT_TEMPLATE = "The variable answers this question:\n{question}"
