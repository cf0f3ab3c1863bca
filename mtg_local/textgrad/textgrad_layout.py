"""TextGrad's own prompt layout: the requests real TextGrad 0.1.8 sends, built with its code.

Per item, each phase is a fresh two-message conversation (system, user), as
TextGrad's ``evaluation/solution_optimization.py`` makes them:

* loss -- ``MultiChoiceTestTime(theta_L)(question, answer)``: system
  ``DEFAULT_TEST_TIME``, user ``theta_L\\nQuestion: ...\\nAnswer by the language
  model: ...``; the output's role is "evaluation of the <answer role>";
* backward -- ``LLMCall._backward_through_llm_base``: system
  ``BACKWARD_SYSTEM_PROMPT``, user ``_construct_llm_base_backward_prompt`` of the
  loss call (its system prompt, input and output), the answer's role and its
  short value; the gradient keeps the quoted conversation as its context;
* update -- ``TextualGradientDescent.step``: system ``optimizer_system_prompt``,
  user ``construct_tgd_prompt`` over ``get_gradient_and_context_text`` and
  ``constraint_text`` (``Constraint 1: ...``).

Every text and formatting function comes from the installed package
(``mtg_local.prompts.textgrad_prompts``); ``tests/test_textgrad_identity.py``
runs real TextGrad beside the batched loop and compares every request.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from engines.base import GenRequest, GenResult, SamplingConfig
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.textgrad.layout import PromptLayout
from mtg_local.textgrad.variable import Gradient, LossContext, Variable


class TextGradLayout(PromptLayout):
    """TextGrad's requests (see the module docstring)."""

    name = "textgrad"

    def __init__(self) -> None:
        P.textgrad()  # imported and checked once, before the first request
        self._llm_ops = importlib.import_module("textgrad.autograd.llm_ops")
        self._optimizer = importlib.import_module("textgrad.optimizer.optimizer")
        self._prompts = importlib.import_module("textgrad.optimizer.optimizer_prompts")

    def loss_request(self, answer: Variable, *, question: str, loss_prompt: str, system_prompt: str | None,
                     sampling: SamplingConfig, id: str) -> tuple[GenRequest, LossContext]:  # fmt: skip
        system = P.LOSS_SYSTEM_PROMPT
        user = P.loss_user(loss_prompt, question, answer.value)
        context = LossContext(evaluated=answer, loss_prompt=loss_prompt, loss_input=user, context=question,
                              system_prompt=system)  # fmt: skip
        return GenRequest.chat(user, system=system, sampling=sampling, id=id), context

    def backward_request(self, loss_output: Variable, *, sampling: SamplingConfig, id: str) -> GenRequest:
        user = self._llm_ops.LLMCall._construct_llm_base_backward_prompt(_backward_info(loss_output))
        return GenRequest.chat(user, system=P.BACKWARD_SYSTEM_PROMPT, sampling=sampling, id=id)

    def gradient(self, loss_output: Variable, request: GenRequest, result: GenResult) -> Gradient:
        context = P.CONVERSATION_TEMPLATE.format(**_backward_info(loss_output))
        return Gradient(text=result.text, context=context, response_role=loss_output.role_description,
                        finish_reason=result.finish_reason)  # fmt: skip

    def update_request(self, variable: Variable, *, constraints: Sequence[str], context: str | None,
                       sampling: SamplingConfig, id: str, response_prefix: str) -> GenRequest:  # fmt: skip
        tgd = P.tgd(tuple(constraints))
        var = _textgrad_variable(variable, context)
        start, end = tgd.new_variable_tags
        # the arguments of TextualGradientDescent._update_prompt (no in-context examples, no memory)
        user = self._prompts.construct_tgd_prompt(
            do_constrained=tgd.do_constrained, do_in_context_examples=False, do_gradient_memory=False,
            variable_desc=var.get_role_description(), variable_value=var.value,
            variable_grad=self._optimizer.get_gradient_and_context_text(var), variable_short=var.get_short_value(),
            constraint_text=tgd.constraint_text, new_variable_start_tag=start, new_variable_end_tag=end,
            in_context_examples="", gradient_memory="",
        )
        return GenRequest.chat(user, system=tgd.optimizer_system_prompt, sampling=sampling, id=id,
                               response_prefix=response_prefix)  # fmt: skip


def _backward_info(loss_output: Variable) -> dict[str, str]:
    """``backward_info`` of ``_backward_through_llm_base`` for the variable a loss output judged."""
    ctx = loss_output.loss_context
    if ctx is None or ctx.messages:
        raise ValueError("not an output of the TextGrad layout's loss (no loss_context, or a chained one)")
    return {
        "response_desc": loss_output.role_description,
        "response_value": loss_output.value,
        "prompt": ctx.loss_input,
        "system_prompt": ctx.system_prompt,
        "variable_desc": ctx.evaluated.role_description,
        "variable_short": ctx.evaluated.short_value(),
    }


def _textgrad_variable(variable: Variable, context: str | None) -> Any:
    """``variable`` as a ``textgrad.Variable`` with its gradients and their contexts.

    A gradient from a judged conversation carries TextGrad's context dict (the
    conversation, the output's role, the variable's role); other feedback is a
    bare gradient, shown as its text. The gradients stay in their order (TextGrad
    keeps them in a set, whose order is arbitrary when there are several).
    """
    tg = P.textgrad()
    var = tg.Variable(variable.value, requires_grad=True, role_description=variable.role_description)
    if context is not None:
        text = P.PLAIN_CONTEXT_TEMPLATE.format(context=context, feedback=variable.gradient_text(P.FEEDBACK_SEPARATOR))
        var.gradients = [tg.Variable(text, requires_grad=False, role_description="feedback")]
        return var
    grads = []
    for g in variable.gradients:
        text = P.PLAIN_CONTEXT_TEMPLATE.format(context=g.context, feedback=g.text) if g.context and not g.response_role else g.text
        grad = tg.Variable(text, requires_grad=False, role_description="feedback")
        if g.response_role:
            var.gradients_context[grad] = {"context": g.context, "response_desc": g.response_role,
                                           "variable_desc": variable.role_description}  # fmt: skip
        grads.append(grad)
    var.gradients = grads
    return var
