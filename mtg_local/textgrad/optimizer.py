"""``TextualGradientDescent``: the batched TGD step over many variables.

Like TextGrad's ``TGD`` (``zero_grad()`` / ``step()``), but ``step()`` rewrites
*all* its parameters in **one** engine call. Each parameter may carry its own
constraints (e.g. the task's answer format) and context (the question it
answers). The prompt layout builds each request (default: TextGrad's
``construct_tgd_prompt``). An output without well-formed
``<IMPROVED_VARIABLE>`` tags, or an engine error, keeps that parameter's
previous value and records why; the other parameters are still updated.
TextGrad raises on such an output and stops; reading is more tolerant here
(``update_parsing``) and never changes a request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from engines.base import FINISH_CONTEXT, Engine, GenRequest, SamplingConfig, is_cut_off
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.textgrad.layout import PromptLayout, get_layout
from mtg_local.textgrad.ops import Samplings, generate_in_prefix_order, per_item
from mtg_local.textgrad.update_parsing import UPDATE_PARSINGS, parse_update
from mtg_local.textgrad.variable import Variable


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    """What one parameter's update did.

    Attributes:
        updated: the value was replaced.
        error: None, or why the previous value was kept.
        raw: the optimizer's full output (with any prefilled start tag).
        engine_error: the error is the engine's (not a parse failure).
        finish_reason: the update call's finish reason (None: no call was made).
    """

    updated: bool
    error: str | None = None
    raw: str = ""
    engine_error: bool = False
    finish_reason: str | None = None


class TextualGradientDescent:
    """Batched textual gradient descent over a list of variables.

    Args:
        parameters: the variables to update (order is kept in ``step()``'s result).
        engine: the optimizer engine.
        constraints: per parameter, a list of constraint strings (or one list
            for all); shown in ``<CONSTRAINTS>``.
        contexts: per parameter, a context string shown before all its
            feedback (or None: each gradient's own context, e.g. the
            conversation it came from, precedes its feedback).
        prefill_tag: start the response with ``<IMPROVED_VARIABLE>`` where the
            engine can prefill the assistant turn (helps weak models keep the
            format; the parser accepts outputs with or without it). TextGrad
            does not prefill (the protocol's ``prefill_update_tag`` is off by default).
        validate: optional ``validate(index, old_value, new_value)`` returning
            None to accept a parsed update or the reason to reject it (e.g.
            the new answer lost the task's answer format).
        layout: the ``PromptLayout`` (or its name) that builds the requests.
        parsing: how outputs are read, one of ``UPDATE_PARSINGS`` ("tolerant", or
            "textgrad": TextGrad's split, which also takes an unclosed body).
    """

    def __init__(
        self,
        parameters: Sequence[Variable],
        *,
        engine: Engine,
        constraints: Sequence[str] | Sequence[Sequence[str]] = (),
        contexts: Sequence[str] | None = None,
        prefill_tag: bool = True,
        validate: Callable[[int, str, str], str | None] | None = None,
        layout: PromptLayout | str = "textgrad",
        parsing: str = "tolerant",
    ) -> None:
        self.parameters = list(parameters)
        self.engine = engine
        n = len(self.parameters)
        if constraints and all(isinstance(c, str) for c in constraints):
            self.constraints = [list(constraints)] * n  # type: ignore[list-item]
        elif not constraints:
            self.constraints = [[] for _ in range(n)]
        else:
            if len(constraints) != n:
                raise ValueError(f"constraints must be one list for all or {n} lists, got {len(constraints)}")
            self.constraints = [list(c) for c in constraints]  # type: ignore[arg-type]
        if contexts is not None and len(contexts) != n:
            raise ValueError(f"contexts must have one entry per parameter ({n}), got {len(contexts)}")
        self.contexts = list(contexts) if contexts is not None else None
        self.prefill_tag = prefill_tag and engine.capabilities.response_prefix
        self.validate = validate
        self.layout = get_layout(layout) if isinstance(layout, str) else layout
        if parsing not in UPDATE_PARSINGS:
            raise ValueError(f"parsing must be one of {', '.join(UPDATE_PARSINGS)}, got {parsing!r}")
        self.parsing = parsing

    def zero_grad(self) -> None:
        """Drops the gradients of every parameter."""
        for p in self.parameters:
            p.zero_grad()

    def step(self, *, samplings: Samplings, ids: Sequence[str] | None = None) -> list[StepOutcome]:
        """Rewrites every parameter that has gradients, in one engine call.

        Parameters without gradients are left alone (``updated=False`` with a
        reason) and send no request.

        Args:
            samplings: one config for all or one per parameter.
            ids: request ids (default "step-<i>").

        Returns:
            One ``StepOutcome`` per parameter, in parameter order.
        """
        n = len(self.parameters)
        sams = per_item(samplings, n)
        ids = list(ids) if ids is not None else [f"step-{i}" for i in range(n)]
        outcomes: list[StepOutcome] = [StepOutcome(False, "no gradient to step with")] * n
        todo: list[int] = []
        requests: list[GenRequest] = []
        prefix = P.IMPROVED_VARIABLE_START if self.prefill_tag else ""
        for i, var in enumerate(self.parameters):
            if not var.requires_grad or not var.gradients:
                continue
            requests.append(self._request(i, sampling=sams[i], id=ids[i], response_prefix=prefix))
            todo.append(i)
        for i, r in zip(todo, generate_in_prefix_order(self.engine, requests)):
            fr = r.finish_reason
            if r.error is not None:
                why = f"optimizer engine error: {r.error}"
                outcomes[i] = StepOutcome(False, why, engine_error=True, finish_reason=fr)
                continue
            raw = prefix + r.text
            parsed = parse_update(raw, parsing=self.parsing, truncated=is_cut_off(fr), context_cut=fr == FINISH_CONTEXT)
            if parsed.value is None:
                outcomes[i] = StepOutcome(False, parsed.error, raw, finish_reason=fr)
                continue
            rejected = self.validate(i, self.parameters[i].value, parsed.value) if self.validate else None
            if rejected is not None:
                outcomes[i] = StepOutcome(False, rejected, raw, finish_reason=fr)
                continue
            self.parameters[i].value = parsed.value
            outcomes[i] = StepOutcome(True, None, raw, finish_reason=fr)
        return outcomes

    def _request(self, i: int, *, sampling: SamplingConfig, id: str, response_prefix: str) -> GenRequest:
        """The update request of parameter ``i``, as the layout builds it."""
        return self.layout.update_request(
            self.parameters[i], constraints=self.constraints[i],
            context=self.contexts[i] if self.contexts is not None else None,
            sampling=sampling, id=id, response_prefix=response_prefix,
        )
