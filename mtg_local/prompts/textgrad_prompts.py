"""Prompt texts of the batched TextGrad operations (forward, loss, backward, TGD step).

Written for this project: the call structure, the roles and the tags
(``<ROLE>``, ``<LM_SYSTEM_PROMPT>``, ``<LM_INPUT>``, ``<LM_OUTPUT>``,
``<OBJECTIVE_FUNCTION>``, ``<VARIABLE>``, ``<CONVERSATION>``, ``<CONTEXT>``,
``<FEEDBACK>``, ``<CONSTRAINTS>``, ``<IMPROVED_VARIABLE>``) are TextGrad's, the
words are our own. Templates are ``str.format`` strings with the named fields
shown. The structure follows TextGrad (version in the venv):

* loss -- ``textgrad/loss.py`` ``MultiChoiceTestTime``: a fixed evaluator
  system prompt (``DEFAULT_TEST_TIME``) and the user turn
  ``"{instruction}\nQuestion: {question}\nAnswer by the language model: {prediction}"``
  with the loss prompt theta_L as the instruction;
* backward -- ``textgrad/autograd/llm_ops.py`` ``_backward_through_llm_base``
  with ``textgrad/autograd/llm_backward_prompts.py``: the evaluator's
  conversation (system prompt, input, output), the objective, then the
  variable span -- TextGrad's ``variable_short`` (``Variable.short_value``:
  first and last 10 words), the full value being in the conversation;
* TGD step -- ``textgrad/optimizer/optimizer_prompts.py``: role, variable
  (short, as in the backward call), context (per gradient, the conversation it came from and its feedback,
  ``GRADIENT_TEMPLATE``), the improve instruction, constraints, the output
  format.

Within that structure shared text comes first (system prompts, role, theta_L,
question) and per-item text last, so requests of one phase share long
prefixes in vLLM's prefix cache.
"""

#: Tags around the improved variable in a TGD step's output.
IMPROVED_VARIABLE_START = "<IMPROVED_VARIABLE>"
IMPROVED_VARIABLE_END = "</IMPROVED_VARIABLE>"

#: Role of the answer variable that solution optimization improves.
ANSWER_ROLE = "solution to the question: step-by-step reasoning that ends with the final answer line"

#: Role of the loss output (an evaluation in natural language).
EVALUATION_ROLE = "evaluation of the solution"

# -- loss --------------------------------------------------------------------
#: Fixed system prompt of every loss call: the evaluator's role (TextGrad's
#: DEFAULT_TEST_TIME in our words). theta_L is NOT here: it heads the user turn.
LOSS_SYSTEM_PROMPT = (
    "You are the evaluator inside an optimization system that improves answers written by a "
    "language model. You will be shown a problem and the answer the model gave. Examine the "
    "reasoning and the final answer. Do not solve the problem yourself: only point out the issues "
    "and mistakes the answer may have. Look at it from several angles and be strict and critical."
)

#: User turn of the loss call (TextGrad's MultiChoiceTestTime layout). Fields:
#: loss_prompt (theta_L, the evaluation instruction), question, answer. No
#: ground truth: it is not available at inference.
LOSS_INPUT_TEMPLATE = "{loss_prompt}\nQuestion: {question}\nAnswer by the language model: {answer}"

# -- backward ----------------------------------------------------------------
BACKWARD_SYSTEM_PROMPT = (
    "You are the feedback step of a system that improves text with language models. The text "
    "being improved is called the variable: a solution to a problem, a prompt, code or any other "
    "text. Your only job is to criticise the variable with respect to the objective given in "
    "<OBJECTIVE_FUNCTION>: point to concrete mistakes, explain why they hurt the objective and "
    "say what to change. Keep in mind the role of the variable and the context it is used in; "
    "it will be used in a similar context again. Do not write a new version of the variable: "
    "that is the next step's job. If the variable already works well, say so and give no "
    "feedback.\n\n"
    "Tags you will see:\n"
    "<LM_SYSTEM_PROMPT>: the system prompt of a language model call.\n"
    "<LM_INPUT>: what that call read.\n"
    "<LM_OUTPUT>: what it answered.\n"
    "<OBJECTIVE_FUNCTION>: the goal of the optimization.\n"
    "<VARIABLE>: the span of text to give feedback on.\n"
    "<ROLE>: the role of the variable."
)

#: One language-model call as the backward and TGD steps show it (TextGrad's
#: CONVERSATION_TEMPLATE). Fields: system_prompt, input, output.
CONVERSATION_TEMPLATE = (
    "<LM_SYSTEM_PROMPT>{system_prompt}</LM_SYSTEM_PROMPT>\n\n"
    "<LM_INPUT>{input}</LM_INPUT>\n\n"
    "<LM_OUTPUT>{output}</LM_OUTPUT>"
)

#: User turn of the backward call (TextGrad's CONVERSATION_START_INSTRUCTION_BASE +
#: OBJECTIVE_INSTRUCTION_BASE + EVALUATE_VARIABLE_INSTRUCTION). Fields: role,
#: conversation (``CONVERSATION_TEMPLATE`` of the loss call), variable.
BACKWARD_USER_TEMPLATE = (
    "You give feedback on a variable whose role is: <ROLE>{role}</ROLE>. "
    "A language model evaluated the variable in this call:\n\n"
    "{conversation}\n\n"
    "<OBJECTIVE_FUNCTION>Criticise the variable using the evaluation output above. The only goal "
    "is a better evaluation of the variable.</OBJECTIVE_FUNCTION>\n\n"
    "Give feedback on this span of text, the {role}:\n\n<VARIABLE>{variable}</VARIABLE>\n\n"
    "Given the call above, how should the {role} change to improve the objective? Be specific, "
    "critical and concrete."
)

# -- TGD step ----------------------------------------------------------------
OPTIMIZER_SYSTEM_PROMPT = (
    "You are the update step of a system that improves text (the variable): solutions to "
    "problems, prompts, code or other text. You get the variable, its role, the context it was "
    "used in and feedback on it. Feedback can be noisy: keep what is right, fix what is wrong, "
    "and respect the role of the variable and the context it is used in. Reply with the complete "
    f"improved variable between {IMPROVED_VARIABLE_START} and {IMPROVED_VARIABLE_END} tags. The "
    "text between the tags replaces the variable exactly as written, so put nothing else between "
    "them.\n\n"
    "Tags you will see:\n"
    "<LM_SYSTEM_PROMPT>, <LM_INPUT>, <LM_OUTPUT>: a language model call's system prompt, input "
    "and output.\n"
    "<CONVERSATION>: a call the variable took part in.\n"
    "<FEEDBACK>: feedback on the variable.\n"
    "<ROLE>: the role of the variable."
)

#: User turn of the TGD step (TextGrad's TGD_PROMPT_PREFIX + CONSTRAINT_PROMPT_ADDITION +
#: TGD_PROMPT_SUFFIX). Fields: role, variable, context (one ``GRADIENT_CONTEXT_TEMPLATE``
#: or ``PLAIN_CONTEXT_TEMPLATE`` per gradient), constraints_block. No placeholder text
#: between example tags: a 135M model copied "the improved variable" verbatim.
OPTIMIZER_USER_TEMPLATE = (
    "Role of the variable to improve: <ROLE>{role}</ROLE>\n\n"
    "The variable is the text in this span: <VARIABLE>{variable}</VARIABLE>\n\n"
    "Context and feedback for the variable:\n\n<CONTEXT>{context}</CONTEXT>\n\n"
    "Improve the variable ({role}) using the feedback in the <FEEDBACK> tags.\n"
    "{constraints_block}"
    "Write the complete improved variable. "
    f"Start it with {IMPROVED_VARIABLE_START} and end it with {IMPROVED_VARIABLE_END}."
)

#: Fields: constraints (one per line). Empty string when there are none.
CONSTRAINTS_TEMPLATE = (
    "The improved variable must follow these constraints:\n\n<CONSTRAINTS>{constraints}</CONSTRAINTS>\n\n"
)

#: One gradient that came from a language-model call (TextGrad's GRADIENT_TEMPLATE).
#: Fields: conversation (``CONVERSATION_TEMPLATE``), response_role, variable_role, feedback.
GRADIENT_CONTEXT_TEMPLATE = (
    "The variable took part in this call:\n\n<CONVERSATION>{conversation}</CONVERSATION>\n\n"
    "The call's output is used as: {response_role}.\n\n"
    "Feedback on the {variable_role} in this call:\n\n<FEEDBACK>{feedback}</FEEDBACK>"
)

#: Gradients without a conversation (e.g. prompt optimization's summed feedback), with a
#: plain context text. Fields: context, feedback.
PLAIN_CONTEXT_TEMPLATE = "{context}\n\n<FEEDBACK>{feedback}</FEEDBACK>"

#: Separator between the blocks of several gradients of one variable in <CONTEXT>.
FEEDBACK_SEPARATOR = "\n\n---\n\n"
