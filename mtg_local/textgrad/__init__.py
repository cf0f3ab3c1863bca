"""TextGrad-style automatic differentiation via text, batched.

PyTorch-shaped names (``Variable``, ``backward``, ``zero_grad``, ``step``) as in
TextGrad, but every operation works on a *list* of variables and makes one
engine call for the whole list; engines are always arguments (forward,
backward and optimizer engines may differ). Prompt texts live in
``mtg_local.prompts.textgrad_prompts``. ``mtg_local.textgrad.chained`` holds the
same loss/backward/update phases in the chained (prefix-reuse) prompt layout.
"""

from mtg_local.textgrad.ops import backward, forward, generate_in_prefix_order, loss
from mtg_local.textgrad.optimizer import StepOutcome, TextualGradientDescent
from mtg_local.textgrad.update_parsing import ParsedUpdate, parse_improved_variable
from mtg_local.textgrad.variable import Gradient, LossContext, Variable

TGD = TextualGradientDescent

__all__ = [
    "TGD",
    "Gradient",
    "LossContext",
    "ParsedUpdate",
    "StepOutcome",
    "TextualGradientDescent",
    "Variable",
    "backward",
    "forward",
    "generate_in_prefix_order",
    "loss",
    "parse_improved_variable",
]
