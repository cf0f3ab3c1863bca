"""Batched TextGrad operations: forward, loss and backward over lists of variables.

Each function makes exactly **one** ``engine.generate`` call for its whole
list (none for an empty list), whatever mix of loss prompts, templates or
system prompts the items carry. What each item's request says is the prompt
layout's business (``mtg_local.textgrad.layout``; default: TextGrad's own). Within the call, requests are ordered so that
shared prefixes sit together (lexicographic order of the messages, which puts
requests with a common prefix next to each other) for vLLM's prefix cache;
results are mapped back to item order. An engine error for one item never
stops the others: it is recorded on that item's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engines.base import Engine, GenRequest, GenResult, SamplingConfig
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.textgrad.layout import PromptLayout, get_layout
from mtg_local.textgrad.variable import Gradient, LossContext, Variable

Samplings = SamplingConfig | Sequence[SamplingConfig]


def per_item(samplings: Samplings, n: int) -> list[SamplingConfig]:
    """One sampling config per item: the same for all, or a list of ``n`` paired ones."""
    if isinstance(samplings, SamplingConfig):
        return [samplings] * n
    out = list(samplings)
    if len(out) != n:
        raise ValueError(f"samplings must be one SamplingConfig or {n} of them (one per item), got {len(out)}")
    return out


def _check_len(name: str, values: Sequence[object], n: int) -> None:
    if len(values) != n:
        raise ValueError(f"{name} must have one entry per item ({n}), got {len(values)}")


def generate_in_prefix_order(engine: Engine, requests: Sequence[GenRequest], /) -> list[GenResult]:
    """One ``engine.generate`` call with requests sorted by prefix; results in input order.

    Args:
        engine: the engine.
        requests: the batch (any order).

    Returns:
        ``results[i]`` answers ``requests[i]``.
    """
    if not requests:
        return []
    order = sorted(range(len(requests)), key=lambda i: _prefix_key(requests[i]))
    sorted_results = engine.generate([requests[i] for i in order])
    results: list[GenResult | None] = [None] * len(requests)
    for pos, i in enumerate(order):
        results[i] = sorted_results[pos]
    return results  # type: ignore[return-value]


def _prefix_key(request: GenRequest) -> tuple[str, ...]:
    if request.messages is not None:
        parts = [f"{m.role}\x00{m.content}" for m in request.messages]
    else:
        parts = [request.prompt or ""]
    return (*parts, request.response_prefix)


def forward(
    engine: Engine,
    questions: Sequence[str],
    /,
    *,
    templates: Sequence[str],
    samplings: Samplings,
    system_prompts: Sequence[str | None] | None = None,
    role_description: str = P.ANSWER_ROLE,
    ids: Sequence[str] | None = None,
) -> list[Variable]:
    """Answers each question, starting the response with its inference template.

    Args:
        engine: the forward engine.
        questions: full user messages (question + format instruction).
        templates: one inference template y_T per question, used as the
            response prefix; the answer is template + continuation.
        samplings: one config for all or one per question (carrying seeds).
        system_prompts: one optional system prompt per question.
        role_description: role of the answer variables.
        ids: request ids (default "fwd-<i>").

    Returns:
        One answer ``Variable`` per question, in input order. On an engine
        error the value is the template alone and ``error`` says why.
    """
    n = len(questions)
    _check_len("templates", templates, n)
    systems = list(system_prompts) if system_prompts is not None else [None] * n
    _check_len("system_prompts", systems, n)
    sams = per_item(samplings, n)
    ids = list(ids) if ids is not None else [f"fwd-{i}" for i in range(n)]
    requests = [
        GenRequest.chat(q, system=s, sampling=sp, id=rid, response_prefix=t)
        for q, s, sp, rid, t in zip(questions, systems, sams, ids, templates)
    ]
    results = generate_in_prefix_order(engine, requests)
    return [
        Variable(value=t + r.text, role_description=role_description, error=r.error, finish_reason=r.finish_reason)
        for t, r in zip(templates, results)
    ]


def loss(
    engine: Engine,
    variables: Sequence[Variable],
    /,
    *,
    questions: Sequence[str],
    loss_prompts: Sequence[str],
    samplings: Samplings,
    ids: Sequence[str] | None = None,
    system_prompts: Sequence[str | None] | None = None,
    layout: PromptLayout | str = "textgrad",
) -> list[Variable]:
    """Evaluates each answer with its loss prompt theta_L (no ground truth), in one engine call.

    In the default layout this is TextGrad's test-time loss
    (``MultiChoiceTestTime``): its evaluator system prompt, and a user turn of
    theta_L followed by the question and the answer.

    Args:
        engine: the evaluation engine.
        variables: the answers to judge.
        questions: the question each answer answers.
        loss_prompts: one loss prompt theta_L per item.
        samplings: one config for all or one per item.
        ids: request ids (default "loss-<i>").
        system_prompts: per item, the forward call's system prompt (the chained
            layout extends that conversation; default: none).
        layout: a ``PromptLayout`` or its name.

    Returns:
        One evaluation ``Variable`` per item (``requires_grad=False``) whose
        ``loss_context`` points back at the judged answer; ``error`` is set
        where the engine failed for that item.
    """
    lay = _layout(layout)
    n = len(variables)
    _check_len("questions", questions, n)
    _check_len("loss_prompts", loss_prompts, n)
    systems = list(system_prompts) if system_prompts is not None else [None] * n
    _check_len("system_prompts", systems, n)
    sams = per_item(samplings, n)
    ids = list(ids) if ids is not None else [f"loss-{i}" for i in range(n)]
    built = [
        lay.loss_request(v, question=q, loss_prompt=lp, system_prompt=s, sampling=sp, id=rid)
        for v, q, lp, s, sp, rid in zip(variables, questions, loss_prompts, systems, sams, ids)
    ]
    results = generate_in_prefix_order(engine, [req for req, _ in built])
    return [loss_output(ctx, r, role=lay.loss_role(ctx.evaluated)) for (_, ctx), r in zip(built, results)]


def loss_output(context: LossContext, result: GenResult, *, role: str | None = None) -> Variable:
    """The evaluation variable of one loss call (any layout): no gradient, points back at the answer.

    Args:
        context: what the loss judged.
        result: the loss call's result.
        role: the output's role (default: the TextGrad layout's, "evaluation of the <answer role>").
    """
    return Variable(
        result.text, role if role is not None else P.evaluation_role(context.evaluated.role_description),
        requires_grad=False, error=result.error, loss_context=context, finish_reason=result.finish_reason,
    )


def backward(
    engine: Engine,
    losses: Sequence[Variable],
    /,
    *,
    samplings: Samplings,
    ids: Sequence[str] | None = None,
    layout: PromptLayout | str = "textgrad",
) -> list[str | None]:
    """Computes d(evaluation)/d(answer) for each loss output and adds it to the answer (one call).

    In the default layout this is TextGrad's backward through an LLM call
    without a gradient on its output (``_backward_through_llm_base``): the
    backward call sees the loss call's conversation (system prompt, input,
    output), the objective and the variable; the gradient keeps that
    conversation as its context for the TGD step (TextGrad's ``gradients_context``).

    Loss outputs that carry an error, or whose evaluated variable does not
    require a gradient, are skipped (no request).

    Args:
        engine: the backward engine.
        losses: outputs of ``loss`` (each with a ``loss_context``).
        samplings: one config for all or one per loss output.
        ids: request ids (default "bwd-<i>").
        layout: the ``PromptLayout`` (or its name) the losses were built with.

    Returns:
        Per loss output: None if a gradient was added to its variable, else why not.
    """
    lay = _layout(layout)
    return backward_with(
        engine, losses, samplings=samplings, ids=ids,
        build=lambda i, lv, sampling, rid: lay.backward_request(lv, sampling=sampling, id=rid),
        gradient=lay.gradient,
    )


def backward_with(
    engine: Engine,
    losses: Sequence[Variable],
    /,
    *,
    samplings: Samplings,
    ids: Sequence[str] | None,
    build: Callable[[int, Variable, SamplingConfig, str], GenRequest],
    gradient: Callable[[Variable, GenRequest, GenResult], Gradient],
) -> list[str | None]:
    """The backward phase of any prompt layout: one call, skips, errors and gradients alike.

    Args:
        engine: the backward engine.
        losses: loss outputs.
        samplings: one config for all or one per loss output.
        ids: request ids (default "bwd-<i>").
        build: ``build(i, loss_output, sampling, id)``, the backward request of a loss output
            that gets one (may raise ``ValueError`` for an output of the wrong kind).
        gradient: ``gradient(loss_output, request, result)``, what a successful result adds
            to the evaluated variable.

    Returns:
        Per loss output: None if a gradient was added to its variable, else why not.
    """
    n = len(losses)
    sams = per_item(samplings, n)
    ids = list(ids) if ids is not None else [f"bwd-{i}" for i in range(n)]
    errors: list[str | None] = [None] * n
    todo: list[int] = []
    requests: list[GenRequest] = []
    for i, lv in enumerate(losses):
        if lv.loss_context is None:
            raise ValueError(f"losses[{i}] is not a loss output (no loss_context)")
        if lv.error is not None:
            errors[i] = f"no gradient: the loss failed ({lv.error})"
            continue
        if not lv.loss_context.evaluated.requires_grad:
            errors[i] = "no gradient: the evaluated variable does not require one"
            continue
        requests.append(build(i, lv, sams[i], ids[i]))
        todo.append(i)
    for i, req, r in zip(todo, requests, generate_in_prefix_order(engine, requests)):
        if r.error is not None:
            errors[i] = f"backward engine error: {r.error}"
            continue
        lv = losses[i]
        assert lv.loss_context is not None
        lv.loss_context.evaluated.gradients.append(gradient(lv, req, r))
    return errors


def _layout(layout: PromptLayout | str) -> PromptLayout:
    return get_layout(layout) if isinstance(layout, str) else layout


def conversation(loss_output: Variable) -> str:
    """The loss call that produced ``loss_output`` as TextGrad quotes it (``CONVERSATION_TEMPLATE``)."""
    from mtg_local.textgrad.textgrad_layout import _backward_info

    return P.CONVERSATION_TEMPLATE.format(**_backward_info(loss_output))
