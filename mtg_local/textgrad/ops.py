"""Batched TextGrad operations: forward, loss and backward over lists of variables.

Each function makes exactly **one** ``engine.generate`` call for its whole
list (none for an empty list), whatever mix of loss prompts, templates or
system prompts the items carry. Within the call, requests are ordered so that
shared prefixes sit together (lexicographic order of the messages, which puts
requests with a common prefix next to each other) for vLLM's prefix cache;
results are mapped back to item order. An engine error for one item never
stops the others: it is recorded on that item's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engines.base import Engine, GenRequest, GenResult, SamplingConfig
from mtg_local.prompts import textgrad_prompts as P
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
) -> list[Variable]:
    """Evaluates each answer with its loss prompt theta_L (no ground truth).

    Built like TextGrad's test-time loss (``MultiChoiceTestTime``): the fixed
    evaluator system prompt ``LOSS_SYSTEM_PROMPT``, and a user turn of theta_L
    followed by the question and the answer (``LOSS_INPUT_TEMPLATE``).

    Args:
        engine: the evaluation engine.
        variables: the answers to judge.
        questions: the question each answer answers.
        loss_prompts: one loss prompt theta_L per item (head of the user turn).
        samplings: one config for all or one per item.
        ids: request ids (default "loss-<i>").

    Returns:
        One evaluation ``Variable`` per item (``requires_grad=False``) whose
        ``loss_context`` points back at the judged answer; ``error`` is set
        where the engine failed for that item.
    """
    n = len(variables)
    _check_len("questions", questions, n)
    _check_len("loss_prompts", loss_prompts, n)
    sams = per_item(samplings, n)
    ids = list(ids) if ids is not None else [f"loss-{i}" for i in range(n)]
    inputs = [
        P.LOSS_INPUT_TEMPLATE.format(loss_prompt=lp, question=q, answer=v.value)
        for lp, q, v in zip(loss_prompts, questions, variables)
    ]
    system = P.LOSS_SYSTEM_PROMPT
    requests = [GenRequest.chat(u, system=system, sampling=sp, id=rid) for u, sp, rid in zip(inputs, sams, ids)]
    results = generate_in_prefix_order(engine, requests)
    return [
        loss_output(LossContext(evaluated=v, loss_prompt=lp, loss_input=u, context=q, system_prompt=system), r)
        for v, q, lp, u, r in zip(variables, questions, loss_prompts, inputs, results)
    ]


def loss_output(context: LossContext, result: GenResult) -> Variable:
    """The evaluation variable of one loss call (any prompt layout): no gradient, points back at the answer."""
    return Variable(
        result.text, P.EVALUATION_ROLE, requires_grad=False, error=result.error, loss_context=context,
        finish_reason=result.finish_reason,
    )


def backward(
    engine: Engine,
    losses: Sequence[Variable],
    /,
    *,
    samplings: Samplings,
    ids: Sequence[str] | None = None,
) -> list[str | None]:
    """Computes d(evaluation)/d(answer) for each loss output and adds it to the answer.

    Like TextGrad's backward through an LLM call without a gradient on its
    output (``_backward_through_llm_base``): the backward call sees the loss
    call's conversation (system prompt, input, output), the objective and the
    variable. The gradient keeps that conversation as its context, for the TGD
    step (TextGrad's ``gradients_context``).

    Loss outputs that carry an error, or whose evaluated variable does not
    require a gradient, are skipped (no request).

    Args:
        engine: the backward engine.
        losses: outputs of ``loss`` (each with a ``loss_context``).
        samplings: one config for all or one per loss output.
        ids: request ids (default "bwd-<i>").

    Returns:
        Per loss output: None if a gradient was added to its variable, else why not.
    """

    def build(i: int, lv: Variable, sampling: SamplingConfig, rid: str) -> GenRequest:
        assert lv.loss_context is not None  # checked by backward_with
        var = lv.loss_context.evaluated
        user = P.BACKWARD_USER_TEMPLATE.format(
            role=var.role_description, conversation=conversation(lv), variable=var.short_value()
        )
        return GenRequest.chat(user, system=P.BACKWARD_SYSTEM_PROMPT, sampling=sampling, id=rid)

    def gradient(lv: Variable, request: GenRequest, result: GenResult) -> Gradient:
        return Gradient(text=result.text, context=conversation(lv), response_role=lv.role_description,
                        finish_reason=result.finish_reason)  # fmt: skip

    return backward_with(engine, losses, samplings=samplings, ids=ids, build=build, gradient=gradient)


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


def conversation(loss_output: Variable) -> str:
    """The loss call that produced ``loss_output``, as the backward and TGD steps show it."""
    ctx = loss_output.loss_context
    if ctx is None:
        raise ValueError("not a loss output (no loss_context)")
    return P.CONVERSATION_TEMPLATE.format(
        system_prompt=ctx.system_prompt, input=ctx.loss_input, output=loss_output.value
    )
