"""TextGrad's prompt texts, read from the installed ``textgrad`` package (no copy here).

The default prompt layout (``mtg_local.textgrad.textgrad_layout``) sends what
TextGrad 0.1.8 sends: its texts and the functions that assemble them come
from the package, imported on first use (``import textgrad`` takes seconds,
so importing this module does not import it):

* ``LOSS_SYSTEM_PROMPT`` -- ``textgrad.loss.DEFAULT_TEST_TIME``, the system
  prompt of ``MultiChoiceTestTime``; its user turn is that class's format
  string (``loss_format``);
* ``BACKWARD_SYSTEM_PROMPT`` -- ``textgrad.autograd.llm_backward_prompts``;
  the backward user turn is ``LLMCall._construct_llm_base_backward_prompt``;
* ``OPTIMIZER_SYSTEM_PROMPT`` -- ``textgrad.optimizer.optimizer_prompts``,
  formatted with the tags as ``TextualGradientDescent`` does; the update user
  turn is ``construct_tgd_prompt`` over ``get_gradient_and_context_text``;
* ``QUERY_TEMPLATE_MULTICHOICE`` -- ``textgrad.tasks.mmlu`` (simple-evals'
  multiple-choice question);
* ``short_value`` -- ``Variable.get_short_value``;
* ``task_loss_prompt`` -- the evaluation instruction of TextGrad's instance
  tasks (``textgrad.tasks.load_instance_task``: MMLU, GPQA), the loss prompt
  its ``evaluation/solution_optimization.py`` runs with.

A few texts exist only in TextGrad's evaluation scripts, not in the package,
so they cannot be imported; they are kept below with their source. On first
use the rendered texts are checked against ``PROMPTS_FINGERPRINT``: another
textgrad version that words them differently stops with an error instead of
silently sending other prompts under the same ``prompts`` protocol setting.
Every public function and name of this module that reads the package goes
through that check (``textgrad()``); the ``_``-prefixed readers the check
itself renders do not.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from types import ModuleType
from typing import Any

#: The protocol's ``prompts`` value for these texts.
PROMPTS = "textgrad-0.1.8"

#: Tags around the improved variable in a TGD step's output: TextGrad's default
#: ``new_variable_tags`` (checked against the package on first use).
IMPROVED_VARIABLE_START = "<IMPROVED_VARIABLE>"
IMPROVED_VARIABLE_END = "</IMPROVED_VARIABLE>"

# -- texts of TextGrad's evaluation scripts (repository zou-group/textgrad, not in the package) --
#: ``evaluation/solution_optimization.py``, ``get_zeroshot_answer``'s ``STARTING_SYSTEM_PROMPT``
#: (that script cites openai/simple-evals ``sampler/chat_completion_sampler.py``).
SIMPLE_EVALS_SYSTEM_PROMPT = (
    "You are ChatGPT, a large language model trained by OpenAI, based on the GPT-4 architecture."
    "\nKnowledge cutoff: 2023-12\nCurrent date: 2024-04-01"
)
#: ``evaluation/solution_optimization.py``, ``run_test_time_training``: role of the optimized answer.
MULTIPLE_CHOICE_ROLE = "creative and precise solution and the prediction for the multiple choice question"
#: ``evaluation/solution_optimization.py``, ``run_test_time_training``: the TGD constraint.
MULTIPLE_CHOICE_CONSTRAINT = (
    "The last line of your response should be of the following format: 'Answer: $LETTER' (without quotes) "
    "where LETTER is one of ABCD."
)

# -- ours ---------------------------------------------------------------------------------------
#: Role of a word-sorting answer. TextGrad's solution-optimization script has no BBH task; this
#: is its multiple-choice role with the kind of question changed (docs/protocol.md).
WORD_SORTING_ROLE = "creative and precise solution and the prediction for the word sorting question"
#: Role of an answer variable when the task names none.
ANSWER_ROLE = MULTIPLE_CHOICE_ROLE
#: A gradient that came with a plain context instead of a conversation (prompt optimization's
#: summed feedback; TextGrad has no such gradient). Fields: context, feedback.
PLAIN_CONTEXT_TEMPLATE = "{context}\n\n<FEEDBACK>{feedback}</FEEDBACK>"
#: Separator between several feedbacks folded into one plain context.
FEEDBACK_SEPARATOR = "\n\n---\n\n"

#: TextGrad's instance tasks by this project's task name: (module, class) of the dataset whose
#: ``_get_instance_test_time_objective`` holds the task's loss prompt (``task_loss_prompt``).
INSTANCE_TASKS = {
    "mmlu_machine_learning": ("textgrad.tasks.mmlu", "MMLUInstanceDataset"),
    "gpqa_diamond": ("textgrad.tasks.gpqa", "GPQAInstanceDataset"),
}

#: sha256 of the texts this module reads from textgrad 0.1.8, rendered on a fixed probe
#: (``_fingerprint``); recomputed and compared on first use.
PROMPTS_FINGERPRINT = "bc6055c495faf425190ad139792925d0a0868294381b4e957c003a1a035b8a99"

#: Starts the instruction slot of ``loss_format``'s probe (no text of a real loss prompt).
_SLOT = "\x00theta_L\x00"


class _NoEngine:
    """Stands in for the engine TextGrad's constructors insist on; never called here."""

    system_prompt = ""
    model_string = "mtg-local/none"

    def generate(self, *args: Any, **kwargs: Any) -> str:
        raise RuntimeError("mtg-local builds TextGrad's prompts only; its engine is never called")

    __call__ = generate


@functools.cache
def textgrad() -> ModuleType:
    """The ``textgrad`` package, imported the project's way and checked against ``PROMPTS_FINGERPRINT``.

    Raises:
        RuntimeError: the installed textgrad words these prompts differently from 0.1.8.
    """
    from engines.adapters.common import import_textgrad

    tg = import_textgrad()
    got = _fingerprint()
    if got != PROMPTS_FINGERPRINT:
        raise RuntimeError(
            f"the installed textgrad {getattr(tg, '__version__', '?')} words the TextGrad layout's prompts "
            f"differently from textgrad 0.1.8 (protocol prompts={PROMPTS!r}; fingerprint {got[:12]}, expected "
            f"{PROMPTS_FINGERPRINT[:12]}): install textgrad==0.1.8"
        )
    return tg


def _module(name: str) -> ModuleType:
    from engines.adapters.common import import_textgrad

    import_textgrad()
    return importlib.import_module(name)


@functools.cache
def tgd(constraints: tuple[str, ...] = ()) -> Any:
    """A ``textgrad.TextualGradientDescent`` with these constraints (its texts only; never stepped)."""
    textgrad()
    return _tgd(constraints)


def _tgd(constraints: tuple[str, ...]) -> Any:
    opt = _module("textgrad.optimizer.optimizer")
    return opt.TextualGradientDescent(parameters=[], engine=_engine(), constraints=list(constraints))


@functools.cache
def _engine() -> Any:
    base = _module("textgrad.engine.base")
    return type("NoEngine", (_NoEngine, base.EngineLM), {})()


@functools.cache
def loss_format() -> str:
    """``MultiChoiceTestTime``'s user-turn format with the instruction slot at its head.

    ``str.format`` fields ``question`` and ``prediction``; the text starts with
    the slot, which ``loss_user`` replaces by the loss prompt.
    """
    textgrad()
    return _loss_format()


def _loss_format() -> str:
    loss = _module("textgrad.loss")
    fmt = loss.MultiChoiceTestTime(_SLOT, engine=_engine()).format_string
    if not fmt.startswith(_SLOT):
        raise RuntimeError("textgrad's MultiChoiceTestTime no longer starts its prompt with the instruction")
    return fmt


def loss_user(loss_prompt: str, question: str, prediction: str) -> str:
    """The user turn of ``MultiChoiceTestTime(loss_prompt)(question, prediction)``.

    TextGrad formats the loss prompt into its template and then formats the
    template again, so braces in a loss prompt break its call; here the loss
    prompt is put in as written (identical text wherever TextGrad's works).
    """
    return loss_prompt + loss_format().format(question=question, prediction=prediction)[len(_SLOT):]


def _loss_user(loss_prompt: str, question: str, prediction: str) -> str:
    return loss_prompt + _loss_format().format(question=question, prediction=prediction)[len(_SLOT):]


def evaluation_role(role: str) -> str:
    """The role of a loss output judging a variable of role ``role`` (``MultiChoiceTestTime.forward``)."""
    return f"evaluation of the {role}"


def short_value(text: str, n_words_offset: int = 10) -> str:
    """``textgrad.Variable(text).get_short_value(n_words_offset)``: first and last words of a long text."""
    textgrad()
    return _short_value(text, n_words_offset)


def _short_value(text: str, n_words_offset: int = 10) -> str:
    variable = _module("textgrad.variable")
    return variable.Variable(text, requires_grad=False, role_description="").get_short_value(n_words_offset)


def task_loss_prompt(task_name: str) -> str | None:
    """The loss prompt TextGrad's instance task ``task_name`` runs with, or None if TextGrad has none.

    ``load_instance_task`` (what ``evaluation/solution_optimization.py`` loads) gives
    each question a ``MultiChoiceTestTime`` whose evaluation instruction is this text
    (``INSTANCE_TASKS``); TextGrad's solution optimization has no word-sorting task.
    """
    textgrad()
    return _task_loss_prompt(task_name)


class _Recorder:
    """An engine for TextGrad's loss modules that records the prompts it is sent and answers nothing."""

    system_prompt = ""
    model_string = "mtg-local/recorder"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
        self.prompts.append(prompt)
        return ""

    __call__ = generate


def _task_loss_prompt(task_name: str) -> str | None:
    if task_name not in INSTANCE_TASKS:
        return None
    module, name = INSTANCE_TASKS[task_name]
    cls = getattr(_module(module), name)
    base = _module("textgrad.engine.base")
    recorder = type("Recorder", (_Recorder, base.EngineLM), {})()
    dataset = cls.__new__(cls)  # its rows are not needed: only its test-time objective
    dataset.evaluation_api = recorder
    objective = dataset._get_instance_test_time_objective("")
    objective(_module("textgrad.variable").Variable("", requires_grad=False, role_description=""))
    (prompt,) = recorder.prompts
    tail = _loss_user("", "", "")  # what MultiChoiceTestTime puts after its instruction, on an empty probe
    if not prompt.endswith(tail):
        raise RuntimeError(f"textgrad's {name} no longer sends its instruction as MultiChoiceTestTime's head")
    return prompt[: len(prompt) - len(tail)]


def _fingerprint() -> str:
    """sha256 of every text the TextGrad layout reads from the package, on a fixed probe."""
    bp = _module("textgrad.autograd.llm_backward_prompts")
    llm_ops = _module("textgrad.autograd.llm_ops")
    op = _module("textgrad.optimizer.optimizer_prompts")
    mmlu = _module("textgrad.tasks.mmlu")
    info = {"response_desc": "R", "response_value": "V", "prompt": "P", "system_prompt": "S",
            "variable_desc": "D", "variable_short": "X"}  # fmt: skip
    opt = _tgd(("C1", "C2"))
    parts = [
        _module("textgrad.loss").DEFAULT_TEST_TIME, _loss_user("L", "Q", "A"), evaluation_role("D"),
        bp.BACKWARD_SYSTEM_PROMPT, llm_ops.LLMCall._construct_llm_base_backward_prompt(info),
        bp.CONVERSATION_TEMPLATE.format(**info), opt.optimizer_system_prompt, opt.constraint_text,
        *opt.new_variable_tags,
        op.construct_tgd_prompt(do_constrained=True, variable_desc="D", variable_value="V", variable_grad="G",
                                variable_short="X", constraint_text="C", new_variable_start_tag="<S>",
                                new_variable_end_tag="</S>", in_context_examples="", gradient_memory=""),
        op.GRADIENT_TEMPLATE.format(context="C", response_desc="R", variable_desc="D", feedback="F"),
        mmlu.QUERY_TEMPLATE_MULTICHOICE, _short_value(" ".join(str(i) for i in range(30))),
        *(str(_task_loss_prompt(name)) for name in INSTANCE_TASKS),
    ]
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()


#: Names read from the package on first access (module ``__getattr__``).
_LAZY = {
    "LOSS_SYSTEM_PROMPT": lambda: _module("textgrad.loss").DEFAULT_TEST_TIME,
    "BACKWARD_SYSTEM_PROMPT": lambda: _module("textgrad.autograd.llm_backward_prompts").BACKWARD_SYSTEM_PROMPT,
    "CONVERSATION_TEMPLATE": lambda: _module("textgrad.autograd.llm_backward_prompts").CONVERSATION_TEMPLATE,
    "OPTIMIZER_SYSTEM_PROMPT": lambda: tgd().optimizer_system_prompt,
    "QUERY_TEMPLATE_MULTICHOICE": lambda: _module("textgrad.tasks.mmlu").QUERY_TEMPLATE_MULTICHOICE,
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        textgrad()  # checked once
        value = _LAZY[name]()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
