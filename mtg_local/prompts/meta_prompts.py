"""Prompt texts of metaTextGrad's outer loops (data, no logic).

* ``META_LOSS_PROMPT`` is the paper's meta loss prompt theta_meta (section 2.1,
  eq. 5) and ``REPTILE_LOSS_PROMPT`` its Reptile loss prompt theta_R (section
  2.2, eq. 8), verbatim, as ``str.format`` templates. The paper's
  "Question 1: ... (more Q&A pairs)" block is the ``{qa_pairs}`` field, filled
  with ``QA_PAIR`` once per wrong answer (numbered from 1) joined by
  ``QA_PAIR_SEPARATOR``.
* Every outer-loop TGD step is TextGrad's own update request, built by the inner
  loop's ``TextualGradientDescent`` (texts from the installed ``textgrad``). What
  its <CONTEXT> holds differs: under protocol ``meta_step="backward"`` (the
  default) the meta-evaluation call and the backward call's feedback; for the
  MAML-style step (eq. 7), and the loss-prompt / Reptile steps under
  ``meta_step="direct"``, the ``*_CONTEXT`` texts below (ours) as the feedback.

One deliberate deviation: the paper's PDF text reads "as general aspossible"
(a lost space from the PDF extraction); it is written "as general as possible".
"""

from __future__ import annotations

from mtg_local.prompts import textgrad_prompts

#: theta_meta (eq. 5). Fields: {qa_pairs}, {loss_prompt}.
META_LOSS_PROMPT = (
    "You are a language model that improves prompts for answering reasoning questions. "
    "You are given some wrong answers generated using the prompt and the standard answers: "
    "{qa_pairs}\n\n"
    "Prompts for evaluation of answers of a reasoning question that must be improved: {loss_prompt}\n\n"
    "Provide concise feedback on how to improve the prompt so it better addresses reasoning "
    "questions. Your suggestions should focus on refining key points related to answering "
    "reasoning questions. Ensure your suggestions are applicable to these types of reasoning "
    "questions as general as possible, not just to the specific examples provided."
)

#: theta_R (eq. 8). Fields: {qa_pairs}, {template}.
REPTILE_LOSS_PROMPT = (
    "You are a language model that improves inference templates for answering reasoning "
    "questions. Here are some wrong responses:\n\n"
    "{qa_pairs}\n\n"
    "Here is the inference template to improve: {template}\n\n"
    "Your task is to improve the inference template (the first few sentences of the response) "
    "so that it can generate better responses. Please keep the inference template concise and "
    "general, and end it with a colon so that it can be used as a prefix for generating responses."
)

#: One wrong answer in the Q&A block. Fields: {i} (1-based), {question}, {response}, {answer}.
QA_PAIR = "Question {i}: {question} Generated Wrong Answer {i}: {response}\n\nStandard Answer {i}: {answer}"
QA_PAIR_SEPARATOR = "\n\n"

# --- TGD step ---------------------------------------------------------------------------
# The outer loop's TGD step is TextGrad's own update request (``mtg_local.textgrad``, texts read
# from the installed package); only the tags are named here, for the lenient meta parser.

IMPROVED_START_TAG = textgrad_prompts.IMPROVED_VARIABLE_START
IMPROVED_END_TAG = textgrad_prompts.IMPROVED_VARIABLE_END

#: Role descriptions of the two learned variables.
LOSS_PROMPT_ROLE = (
    "loss prompt: the instruction given to an evaluator that critiques answers to reasoning "
    "questions, whose critique is used to improve the answers"
)
TEMPLATE_ROLE = (
    "inference template: the first few words of every response to a reasoning question, used as "
    "a prefix when generating responses; it should be concise, general and end with a colon"
)

#: Role of the meta evaluation's output when the meta step back-propagates through it
#: (protocol ``meta_step="backward"``): the backward and TGD calls show the meta-evaluation
#: call as the conversation the variable took part in, and this as what its output is used as.
META_EVALUATION_ROLE = (
    "meta evaluation: a critique of the variable drawn from wrong answers produced with it and "
    "their standard answers"
)

#: <CONTEXT> of a loss-prompt step (eq. 6) or a Reptile step (eq. 9) under
#: ``meta_step="direct"``: the meta evaluation as the feedback itself.
#: Fields: {feedback}.
META_FEEDBACK_CONTEXT = (
    "A meta-evaluator read wrong answers produced with this variable, together with the standard "
    "answers, and gave this feedback:\n\n<FEEDBACK>{feedback}</FEEDBACK>"
)

#: One response's part of the <CONTEXT> of a MAML-style step (eq. 7): the inner loop's last
#: textual gradient w.r.t. a response that started with the template.
#: Fields: {i}, {question}, {response}, {feedback}.
MAML_GRADIENT_CONTEXT = (
    "Response {i} started with the variable.\n"
    "<LM_INPUT>{question}</LM_INPUT>\n"
    "<LM_OUTPUT>{response}</LM_OUTPUT>\n"
    "Here is the feedback we got for this response:\n"
    "<FEEDBACK>{feedback}</FEEDBACK>"
)
MAML_CONTEXT_SEPARATOR = "\n\n"
