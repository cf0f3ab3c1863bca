"""Prompt texts of the baselines (data, no logic).

* ``DSPY_*``: field descriptions of the DSPy program that COPRO and MIPROv2
  optimize (``question -> answer`` with chain of thought). As in the paper's
  appendix B prompts, the answer field's description carries the task's answer
  format ("The answer to the question. The last line of your response ...").
* ``PROMPT_OPT_*``: TextGrad prompt optimization, where the forward system
  prompt is the trained variable: the two role descriptions TextGrad's
  evaluation script gives its variables (its texts come from the package).
"""

from __future__ import annotations

# -- DSPy program (COPRO, MIPROv2) -------------------------------------------
#: Description of the input field.
DSPY_QUESTION_DESC = "The question to answer."

#: Description of the output field. Field: format_instruction (the task's).
DSPY_ANSWER_DESC_TEMPLATE = "The answer to the question. {format_instruction}"

# -- TextGrad prompt optimization ---------------------------------------------
# Every message of prompt optimization is built by the installed ``textgrad``
# package's own code (``mtg_local.baselines.prompt_opt_requests``); TextGrad's
# texts are not copied here. The two role descriptions below are arguments that
# TextGrad's ``evaluation/prompt_optimization.py`` passes to ``tg.Variable``;
# that script is not part of the installed package, so nothing can import them:
# they are held here as settings of the method, with the script as their source.

#: Role of the trained system prompt (``evaluation/prompt_optimization.py``, the
#: ``system_prompt`` variable of the optimized model).
PROMPT_OPT_SYSTEM_ROLE = (
    "structured system prompt to a somewhat capable language model that specifies the behavior "
    "and strategies for the QA task"
)

#: Role of the ground-truth answer (``evaluation/prompt_optimization.py``, the ``y``
#: variable); the loss's backward prompt names it.
PROMPT_OPT_GOLD_ROLE = "correct answer for the query"
