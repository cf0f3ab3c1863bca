"""``TolerantChatAdapter``: DSPy's ChatAdapter that does not abort an optimizer on weak proposals.

(``TolerantJSONAdapter`` is the same for DSPy's JSONAdapter, which GEPA's
instruction proposer uses.)

COPRO and MIPROv2 ask the *prompt model* for new instructions through DSPy
predictors whose failures are not caught: one completion without DSPy's
``[[ ## field ## ]]`` markers raises ``AdapterParseError`` and ends the whole
optimization. Small local models write such completions often. For LMs marked
``tolerate_unparsable = True`` (the prompt LM of ``dspy_session``), a
completion that neither the ChatAdapter nor its JSON fallback can parse is
read leniently instead: the fields it does mark are taken, and the first
missing output field gets the completion's unmarked text (the others "").
Every other LM (the task program's) is parsed exactly as by DSPy's
ChatAdapter. Relies on ``Adapter._call_postprocess`` (dspy 3.x).
"""

from __future__ import annotations

import re
from typing import Any

from engines.adapters.common import offline_library_env

offline_library_env()

import dspy  # noqa: E402
from dspy.utils.exceptions import AdapterParseError  # noqa: E402

_HEADER = re.compile(r"\[\[\s*##\s*(\w+)\s*##\s*\]\]")


def lenient_fields(signature: Any, text: str) -> dict[str, Any]:
    """The output fields of ``signature`` read from ``text`` without failing (strings only)."""
    names = list(signature.output_fields)
    found: dict[str, str] = {}
    pieces = _HEADER.split(text)
    unmarked = pieces[0].strip()
    for name, body in zip(pieces[1::2], pieces[2::2]):
        if name in names and name not in found:
            found[name] = body.strip()
    missing = [n for n in names if n not in found]
    for i, name in enumerate(missing):
        found[name] = unmarked if i == 0 else ""
    return found


class _Tolerant:
    """The lenient last resort, mixed into a DSPy adapter class."""

    def _call_postprocess(self, processed_signature, original_signature, outputs, lm, lm_kwargs):  # noqa: ANN001
        try:
            return super()._call_postprocess(processed_signature, original_signature, outputs, lm, lm_kwargs)
        except AdapterParseError:
            if not getattr(lm, "tolerate_unparsable", False):
                raise
        values = []
        for output in outputs:
            text = output.get("text") if isinstance(output, dict) else output
            try:
                values.append(self.parse(processed_signature, text or ""))
            except AdapterParseError:
                values.append(lenient_fields(processed_signature, text or ""))
        return values


class TolerantChatAdapter(_Tolerant, dspy.ChatAdapter):
    """ChatAdapter with a lenient last resort for LMs that set ``tolerate_unparsable``."""


class TolerantJSONAdapter(_Tolerant, dspy.JSONAdapter):
    """JSONAdapter with the same last resort (GEPA's proposer asks its reflection LM for JSON).

    A reflection completion that is not JSON becomes the new instruction as
    written, which is also how the ``gepa`` package's own proposer reads a
    reply without a fenced block.
    """
