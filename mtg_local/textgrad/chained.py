"""The chained (KV-reuse) prompt layout: each phase extends the previous phase's conversation.

Same phases and contract as the TextGrad layout (``mtg_local.textgrad.layout``),
but instead of quoting the question, answer and evaluation in tags, each
request continues the item's conversation, so vLLM's prefix cache computes an
item's question, answer and evaluation once per step. Not TextGrad's prompts
(its own protocol hash); the texts: ``mtg_local.prompts.chained_prompts``.

The conversation travels on the variables: a loss output's
``LossContext.messages`` is the loss call's conversation, a gradient's
``Gradient.messages`` the backward call's.
"""

from __future__ import annotations

from collections.abc import Sequence

from engines.base import GenRequest, GenResult, Message, SamplingConfig
from mtg_local.prompts import chained_prompts as C
from mtg_local.textgrad.layout import PromptLayout
from mtg_local.textgrad.variable import Gradient, LossContext, Variable


def forward_messages(question: str, system_prompt: str | None) -> tuple[Message, ...]:
    """The forward call's messages, built exactly as ``ops.forward`` builds them."""
    messages = GenRequest.chat(question, system=system_prompt).messages
    assert messages is not None
    return messages


class ChainedLayout(PromptLayout):
    """Loss, backward and update as turns of one growing conversation per item and step.

    * loss: ``[system?, question]`` as the forward call sent it, ``assistant:
      answer``, ``user: theta_L + LOSS_REQUEST`` (each step restarts from the
      current answer: no earlier critiques);
    * backward: that, ``assistant: evaluation``, ``user: BACKWARD_INSTRUCTION``;
    * update: that, ``assistant: feedback``, ``user: UPDATE_USER_TEMPLATE``
      (one gradient per parameter: a conversation extends one chain).
    """

    name = "chained"

    def loss_request(self, answer: Variable, *, question: str, loss_prompt: str, system_prompt: str | None,
                     sampling: SamplingConfig, id: str) -> tuple[GenRequest, LossContext]:  # fmt: skip
        user = C.LOSS_USER_TEMPLATE.format(loss_prompt=loss_prompt, request=C.LOSS_REQUEST)
        messages = (*forward_messages(question, system_prompt), Message("assistant", answer.value), Message("user", user))
        context = LossContext(evaluated=answer, loss_prompt=loss_prompt, loss_input=user, context=question,
                              system_prompt=system_prompt or "", messages=messages)  # fmt: skip
        return GenRequest(messages=messages, sampling=sampling, id=id), context

    def backward_request(self, loss_output: Variable, *, sampling: SamplingConfig, id: str) -> GenRequest:
        ctx = loss_output.loss_context
        if ctx is None or not ctx.messages:
            raise ValueError("not an output of the chained loss (no loss_context.messages)")
        messages = (*ctx.messages, Message("assistant", loss_output.value), Message("user", C.BACKWARD_INSTRUCTION))
        return GenRequest(messages=messages, sampling=sampling, id=id)

    def gradient(self, loss_output: Variable, request: GenRequest, result: GenResult) -> Gradient:
        assert request.messages is not None
        return Gradient(text=result.text, response_role=loss_output.role_description,
                        finish_reason=result.finish_reason, messages=request.messages)  # fmt: skip

    def update_request(self, variable: Variable, *, constraints: Sequence[str], context: str | None,
                       sampling: SamplingConfig, id: str, response_prefix: str) -> GenRequest:  # fmt: skip
        if len(variable.gradients) != 1 or not variable.gradients[0].messages:
            raise ValueError(f"the chained update needs exactly one gradient from the chained backward, "
                             f"got {len(variable.gradients)}")  # fmt: skip
        if context is not None:
            raise ValueError("the chained update continues the backward conversation; it takes no plain context")
        g = variable.gradients[0]
        block = C.CONSTRAINTS_TEMPLATE.format(constraints="\n".join(constraints)) if constraints else ""
        user = C.UPDATE_USER_TEMPLATE.format(constraints_block=block)
        messages = (*g.messages, Message("assistant", g.text), Message("user", user))
        return GenRequest(messages=messages, sampling=sampling, id=id, response_prefix=response_prefix)
