"""TextGrad-style automatic differentiation via text, batched.

PyTorch-shaped names (``Variable``, ``backward``, ``zero_grad``, ``step``) as in
TextGrad, but every operation works on a *list* of variables and makes one
engine call for the whole list; engines are always arguments (forward,
backward and optimizer engines may differ). What each item's request says is
a prompt layout's (``layout.PromptLayout``): ``textgrad_layout`` (TextGrad's own
requests, the default) or ``chained`` (prefix reuse).
"""

from mtg_local.textgrad.layout import PROMPT_LAYOUTS, PromptLayout, get_layout
from mtg_local.textgrad.ops import backward, backward_with, forward, generate_in_prefix_order, loss, loss_output
from mtg_local.textgrad.optimizer import StepOutcome, TextualGradientDescent
from mtg_local.textgrad.update_parsing import UPDATE_PARSINGS, ParsedUpdate, parse_improved_variable, parse_update
from mtg_local.textgrad.variable import Gradient, LossContext, Variable

TGD = TextualGradientDescent

__all__ = [
    "PROMPT_LAYOUTS",
    "TGD",
    "UPDATE_PARSINGS",
    "Gradient",
    "LossContext",
    "ParsedUpdate",
    "PromptLayout",
    "StepOutcome",
    "TextualGradientDescent",
    "Variable",
    "backward",
    "backward_with",
    "forward",
    "generate_in_prefix_order",
    "get_layout",
    "loss",
    "loss_output",
    "parse_improved_variable",
    "parse_update",
]
