"""``Variable``: a piece of text being optimized, with its role and textual gradients.

Shaped like TextGrad's (and PyTorch's) tensors: a value, ``requires_grad``,
accumulated gradients and ``zero_grad()``. Unlike TextGrad, a variable never
calls an engine itself: the batched operations in ``mtg_local.textgrad.ops``
and ``TextualGradientDescent`` take lists of variables and make one engine
call per phase.
"""

from __future__ import annotations

import dataclasses

from engines.base import Message
from mtg_local.prompts.textgrad_prompts import short_value as textgrad_short_value


@dataclasses.dataclass(frozen=True)
class Gradient:
    """One textual gradient (feedback) on a variable.

    Attributes:
        text: the feedback.
        context: where the variable was used, shown to the optimizer beside
            the feedback: the conversation of the call that judged it
            (``CONVERSATION_TEMPLATE``) when ``response_role`` is set, else a
            plain description.
        response_role: role of that call's output (e.g. "evaluation of the
            solution"); "" for a plain context.
        finish_reason: the backward call's finish reason ("" if unknown).
        messages: chained layout only: the backward call's conversation, which
            the update call extends (empty in the TextGrad layout).
    """

    text: str
    context: str = ""
    response_role: str = ""
    finish_reason: str = ""
    messages: tuple[Message, ...] = ()


@dataclasses.dataclass(frozen=True)
class LossContext:
    """What a loss output evaluated: everything ``backward`` needs to reach the variable.

    Attributes:
        evaluated: the variable the loss judged (gradients are added to it).
        loss_prompt: the loss prompt theta_L (the instruction heading the
            loss call's user turn).
        loss_input: the user turn the loss call read (theta_L, question, answer).
        context: the question the evaluated answer answers.
        system_prompt: the loss call's (fixed evaluator) system prompt.
        messages: chained layout only: the loss call's conversation, which the
            backward call extends (empty in the TextGrad layout).
    """

    evaluated: Variable
    loss_prompt: str
    loss_input: str
    context: str = ""
    system_prompt: str = ""
    messages: tuple[Message, ...] = ()


#: Words kept at each end by ``Variable.short_value`` (TextGrad's ``n_words_offset`` default).
SHORT_VALUE_WORDS = 10


@dataclasses.dataclass(eq=False)
class Variable:
    """Text with a role description and accumulated textual gradients.

    Attributes:
        value: the current text.
        role_description: what the text is for (shown to the backward and
            optimizer prompts).
        requires_grad: whether ``backward`` collects gradients for it.
        gradients: textual gradients since the last ``zero_grad()``.
        error: None, or why the operation that produced ``value`` failed
            (an engine error result); ``value`` is then a fallback.
        loss_context: set on loss outputs only: what was evaluated.
        finish_reason: finish reason of the call that produced ``value``
            ("length" = cut off at max_tokens; "" if none/unknown).
    """

    value: str
    role_description: str
    requires_grad: bool = True
    gradients: list[Gradient] = dataclasses.field(default_factory=list)
    error: str | None = None
    loss_context: LossContext | None = None
    finish_reason: str = ""

    def zero_grad(self) -> None:
        """Drops the accumulated gradients (call before each loss/backward)."""
        self.gradients.clear()

    def short_value(self, n_words_offset: int = SHORT_VALUE_WORDS) -> str:
        """The value as the backward and TGD prompts show it: TextGrad's ``Variable.get_short_value``.

        Long values become their first and last ``n_words_offset`` words (the
        rule is TextGrad's, called, not copied). The full value stays in the
        loss call's conversation, which both prompts quote.
        """
        return textgrad_short_value(self.value, n_words_offset)

    def gradient_text(self, separator: str = "\n\n") -> str:
        """The accumulated gradients' texts joined by ``separator``."""
        return separator.join(g.text for g in self.gradients)

    def __repr__(self) -> str:
        short = self.value if len(self.value) <= 60 else self.value[:57] + "..."
        return f"Variable({short!r}, role={self.role_description!r}, grads={len(self.gradients)})"
