"""Reading the improved variable out of a TGD step's output: TextGrad's rule or a tolerant one.

``UPDATE_PARSINGS`` (the protocol's ``update_parsing``):

* ``textgrad`` -- TextGrad's ``TextualGradientDescent.step``:
  ``text.split(start)[1].split(end)[0].strip()``. So an output whose end tag
  is missing (or cut off at ``max_tokens``) still gives everything after the
  start tag, and an empty body gives an empty value. Without a start tag
  TextGrad raises ``IndexError`` (its solution-optimization script then
  stops); here the previous value is kept.
* ``tolerant`` -- weak models break the tags in every possible way: no start
  tag, no end tag, the start tag twice (once prefilled, once written), odd case
  or spaces inside the brackets, an empty body, output cut off at
  ``max_tokens``. This rule takes only a complete, non-empty body.

Parsing never raises: it returns the new value or the reason it found none,
and the caller keeps the previous value.
"""

from __future__ import annotations

import dataclasses
import re

from mtg_local.prompts.textgrad_prompts import IMPROVED_VARIABLE_END, IMPROVED_VARIABLE_START


def _tag_pattern(tag: str) -> re.Pattern[str]:
    # "<IMPROVED_VARIABLE>" -> tolerant of case and of spaces inside the brackets.
    closing = tag.startswith("</")
    name = tag.strip("</>")
    slash = r"/\s*" if closing else ""
    return re.compile(rf"<\s*{slash}{re.escape(name)}\s*>", re.IGNORECASE)


_ANY_CLOSING = re.compile(r"</\s*[A-Za-z_]+\s*>")


@dataclasses.dataclass(frozen=True)
class ParsedUpdate:
    """The outcome of parsing one step output.

    Attributes:
        value: the improved variable (stripped), or None.
        error: None, or why no value was taken.
    """

    value: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


#: How update outputs are read (see the module docstring).
UPDATE_PARSINGS = ("textgrad", "tolerant")


def parse_update(text: str, *, parsing: str = "tolerant", truncated: bool = False, context_cut: bool = False,
                 start_tag: str = IMPROVED_VARIABLE_START, end_tag: str = IMPROVED_VARIABLE_END) -> ParsedUpdate:  # fmt: skip
    """The improved variable of a TGD output under rule ``parsing`` ("textgrad" or "tolerant").

    ``context_cut``: the output ran into the context (finish reason "context_length"), where the
    engine had lowered ``max_tokens`` to the room left. Never an answer under either rule: an API
    such as OpenAI's refuses such a request outright, so TextGrad never reads one.
    """
    if context_cut:
        return ParsedUpdate(None, "cut off by the context (max_model_len left less room than max_tokens): "
                                  "kept the previous value")
    if parsing == "textgrad":
        return parse_textgrad(text, start_tag=start_tag, end_tag=end_tag)
    if parsing == "tolerant":
        return parse_improved_variable(text, truncated=truncated, start_tag=start_tag, end_tag=end_tag)
    raise ValueError(f"update_parsing must be one of {', '.join(UPDATE_PARSINGS)}, got {parsing!r}")


def parse_textgrad(
    text: str, *, start_tag: str = IMPROVED_VARIABLE_START, end_tag: str = IMPROVED_VARIABLE_END
) -> ParsedUpdate:
    """TextGrad's rule: ``text.split(start_tag)[1].split(end_tag)[0].strip()``; no start tag: no value."""
    parts = text.split(start_tag)
    if len(parts) < 2:
        return ParsedUpdate(None, f"no {start_tag} tag in the update output (TextGrad raises IndexError here)")
    return ParsedUpdate(parts[1].split(end_tag)[0].strip())


def parse_improved_variable(
    text: str,
    *,
    truncated: bool = False,
    start_tag: str = IMPROVED_VARIABLE_START,
    end_tag: str = IMPROVED_VARIABLE_END,
) -> ParsedUpdate:
    """Extracts the text between the first start tag and the next end tag.

    If the start tag occurs several times before the end tag (a prefilled tag
    that the model repeated), the text after the last of them is taken.

    Args:
        text: the full step output (including any prefilled start tag).
        truncated: the output was cut off (at ``max_tokens`` or by the context; used in the reason).
        start_tag: opening tag.
        end_tag: closing tag.

    Returns:
        ``ParsedUpdate`` with ``value`` or ``error``; never raises.
    """
    start_re, end_re = _tag_pattern(start_tag), _tag_pattern(end_tag)
    first = start_re.search(text)
    if first is None:
        return ParsedUpdate(None, f"no {start_tag} tag in the update output")
    end = end_re.search(text, first.end())
    if end is None:
        if truncated:
            why = "output cut off at max_tokens or by the context"
        else:
            other = _ANY_CLOSING.search(text, first.end())
            why = f"closed with {other.group(0)} instead" if other else "the model stopped without it"
        return ParsedUpdate(None, f"no {end_tag} after {start_tag} ({why})")
    body_start = first.end()
    for m in start_re.finditer(text, first.end(), end.start()):
        body_start = m.end()
    value = text[body_start : end.start()].strip()
    if not value:
        return ParsedUpdate(None, f"empty text between {start_tag} and {end_tag}")
    return ParsedUpdate(value)
