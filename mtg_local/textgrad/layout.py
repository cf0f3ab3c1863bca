"""The prompt layout: how one item's loss, backward and update requests are built and read.

The batched phases (``ops.loss``, ``ops.backward``, ``TextualGradientDescent``)
own everything a layout shares: one ``engine.generate`` call per phase, skips,
per-item errors, update parsing and validation. A layout only says, for one
item, which request each phase sends and what its output leaves behind. Two
exist, one file each:

* ``textgrad`` (``textgrad_layout.TextGradLayout``, the default): TextGrad's own
  requests, built with the installed ``textgrad`` package's texts and functions;
* ``chained`` (``chained.ChainedLayout``): each phase extends the previous
  phase's conversation, for prefix-cache reuse.

A third layout is one new file with a class implementing ``PromptLayout`` and
a line in ``LAYOUTS``. The protocol's ``prompt_layout`` names the one a run uses.
"""

from __future__ import annotations

import abc
import functools
import importlib
from collections.abc import Sequence
from typing import ClassVar

from engines.base import GenRequest, GenResult, SamplingConfig
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.textgrad.variable import Gradient, LossContext, Variable

#: Layout name -> "module:Class" (imported when first asked for).
LAYOUTS = {
    "textgrad": "mtg_local.textgrad.textgrad_layout:TextGradLayout",
    "chained": "mtg_local.textgrad.chained:ChainedLayout",
}
PROMPT_LAYOUTS = tuple(LAYOUTS)


class PromptLayout(abc.ABC):
    """Builds the requests of one item's loss, backward and update calls and reads their outputs."""

    #: the name in ``LAYOUTS`` (and the protocol's ``prompt_layout``)
    name: ClassVar[str] = ""

    @abc.abstractmethod
    def loss_request(self, answer: Variable, *, question: str, loss_prompt: str, system_prompt: str | None,
                     sampling: SamplingConfig, id: str) -> tuple[GenRequest, LossContext]:  # fmt: skip
        """The request that evaluates ``answer`` with the loss prompt theta_L, and its context.

        Args:
            answer: the answer being judged.
            question: the user message the answer answers (as the forward call sent it).
            loss_prompt: theta_L.
            system_prompt: the forward call's system prompt (None: none was sent).
            sampling / id: of the request.

        Returns:
            The request and the ``LossContext`` its output keeps (what backward needs).
        """

    def loss_role(self, answer: Variable) -> str:
        """The role of the loss output judging ``answer`` (TextGrad's: "evaluation of the <role>")."""
        return P.evaluation_role(answer.role_description)

    @abc.abstractmethod
    def backward_request(self, loss_output: Variable, *, sampling: SamplingConfig, id: str) -> GenRequest:
        """The request asking for feedback on the variable ``loss_output`` judged.

        Raises:
            ValueError: ``loss_output`` did not come from this layout's loss.
        """

    @abc.abstractmethod
    def gradient(self, loss_output: Variable, request: GenRequest, result: GenResult) -> Gradient:
        """What a successful backward result adds to the judged variable."""

    @abc.abstractmethod
    def update_request(self, variable: Variable, *, constraints: Sequence[str], context: str | None,
                       sampling: SamplingConfig, id: str, response_prefix: str) -> GenRequest:  # fmt: skip
        """The request rewriting ``variable`` from its gradients.

        Args:
            variable: the parameter (with at least one gradient).
            constraints: constraint texts shown to the optimizer.
            context: a plain context shown before all its feedback, or None (each
                gradient's own context).
            sampling / id / response_prefix: of the request.

        Raises:
            ValueError: the gradients cannot be laid out this way.
        """


@functools.cache
def get_layout(name: str) -> PromptLayout:
    """The layout named ``name`` (one shared, stateless instance per name).

    Raises:
        ValueError: an unknown name.
    """
    target = LAYOUTS.get(name)
    if target is None:
        raise ValueError(f"prompt_layout must be one of {', '.join(PROMPT_LAYOUTS)}, got {name!r}")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()
