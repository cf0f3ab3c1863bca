"""The chained (KV-reuse) layout of the loss, backward and update phases.

Same contract as ``ops.loss`` / ``ops.backward`` / ``TextualGradientDescent``
(one ``engine.generate`` call per phase for the whole list, results in item
order, one item's engine error never stops the others), but each phase's
prompt *extends* the previous phase's conversation instead of quoting it, so
vLLM's prefix cache computes an item's question, answer and evaluation once
per step. The layout and its texts: ``mtg_local.prompts.chained_prompts``.

The conversation travels on the variables: a loss output's
``LossContext.messages`` is the loss call's conversation, a gradient's
``Gradient.messages`` the backward call's.
"""

from __future__ import annotations

from collections.abc import Sequence

from engines.base import Engine, GenRequest, GenResult, Message, SamplingConfig
from mtg_local.prompts import chained_prompts as C
from mtg_local.textgrad.ops import (
    Samplings,
    _check_len,
    backward_with,
    generate_in_prefix_order,
    loss_output,
    per_item,
)
from mtg_local.textgrad.optimizer import TextualGradientDescent
from mtg_local.textgrad.variable import Gradient, LossContext, Variable


def forward_messages(question: str, system_prompt: str | None) -> tuple[Message, ...]:
    """The forward call's messages, built exactly as ``ops.forward`` builds them."""
    messages = GenRequest.chat(question, system=system_prompt).messages
    assert messages is not None
    return messages


def loss(
    engine: Engine,
    variables: Sequence[Variable],
    /,
    *,
    prefixes: Sequence[Sequence[Message]],
    loss_prompts: Sequence[str],
    samplings: Samplings,
    ids: Sequence[str] | None = None,
) -> list[Variable]:
    """Evaluates each answer in its own forward conversation, with theta_L heading the new user turn.

    Args:
        engine: the evaluation engine.
        variables: the answers to judge.
        prefixes: per item, the forward call's messages (``forward_messages``).
        loss_prompts: one loss prompt theta_L per item.
        samplings: one config for all or one per item.
        ids: request ids (default "loss-<i>").

    Returns:
        One evaluation ``Variable`` per item (``requires_grad=False``) whose
        ``loss_context.messages`` is the loss call's conversation; ``error`` is
        set where the engine failed for that item.
    """
    n = len(variables)
    _check_len("prefixes", prefixes, n)
    _check_len("loss_prompts", loss_prompts, n)
    sams = per_item(samplings, n)
    ids = list(ids) if ids is not None else [f"loss-{i}" for i in range(n)]
    convs = []
    for v, pre, lp in zip(variables, prefixes, loss_prompts):
        user = C.LOSS_USER_TEMPLATE.format(loss_prompt=lp, request=C.LOSS_REQUEST)
        convs.append((*pre, Message("assistant", v.value), Message("user", user)))
    requests = [GenRequest(messages=m, sampling=sp, id=rid) for m, sp, rid in zip(convs, sams, ids)]
    results = generate_in_prefix_order(engine, requests)
    out = []
    for v, pre, lp, m, r in zip(variables, prefixes, loss_prompts, convs, results):
        question = next((x.content for x in pre if x.role == "user"), "")
        system = next((x.content for x in pre if x.role == "system"), "")
        ctx = LossContext(
            evaluated=v, loss_prompt=lp, loss_input=m[-1].content, context=question, system_prompt=system, messages=m
        )
        out.append(loss_output(ctx, r))
    return out


def backward(
    engine: Engine,
    losses: Sequence[Variable],
    /,
    *,
    samplings: Samplings,
    ids: Sequence[str] | None = None,
) -> list[str | None]:
    """Asks, in each loss conversation, for feedback on the answer; adds it as the answer's gradient.

    Loss outputs that carry an error, or whose evaluated variable does not
    require a gradient, are skipped (no request).

    Args:
        engine: the backward engine.
        losses: outputs of ``loss`` (each with ``loss_context.messages``).
        samplings: one config for all or one per loss output.
        ids: request ids (default "bwd-<i>").

    Returns:
        Per loss output: None if a gradient was added to its variable, else why not.
    """

    def build(i: int, lv: Variable, sampling: SamplingConfig, rid: str) -> GenRequest:
        if lv.loss_context is None or not lv.loss_context.messages:
            raise ValueError(f"losses[{i}] is not an output of the chained loss (no loss_context.messages)")
        messages = (*lv.loss_context.messages, Message("assistant", lv.value), Message("user", C.BACKWARD_INSTRUCTION))
        return GenRequest(messages=messages, sampling=sampling, id=rid)

    def gradient(lv: Variable, request: GenRequest, result: GenResult) -> Gradient:
        assert request.messages is not None
        return Gradient(text=result.text, response_role=lv.role_description, finish_reason=result.finish_reason,
                        messages=request.messages)  # fmt: skip

    return backward_with(engine, losses, samplings=samplings, ids=ids, build=build, gradient=gradient)


class ChainedGradientDescent(TextualGradientDescent):
    """``TextualGradientDescent`` whose update extends the backward conversation.

    Same constructor, prefill rule, parsing, validation and outcomes as the
    base class; only the request differs. Each parameter that steps must carry
    exactly one gradient from the chained ``backward`` (a conversation can
    extend only one chain); ``contexts`` are not used.
    """

    def _request(self, i: int, *, sampling: SamplingConfig, id: str, response_prefix: str) -> GenRequest:
        var = self.parameters[i]
        if len(var.gradients) != 1 or not var.gradients[0].messages:
            raise ValueError(
                f"parameter {i} needs exactly one gradient from the chained backward, got {len(var.gradients)}"
            )
        g = var.gradients[0]
        cons = self.constraints[i]
        block = C.CONSTRAINTS_TEMPLATE.format(constraints="\n".join(cons)) if cons else ""
        user = C.UPDATE_USER_TEMPLATE.format(constraints_block=block)
        messages = (*g.messages, Message("assistant", g.text), Message("user", user))
        return GenRequest(messages=messages, sampling=sampling, id=id, response_prefix=response_prefix)
