r"""How a task file's answers are read and compared, per ``answer_type``.

Each rule has a ``reference`` and a ``lenient`` form (the protocol's ``scoring``), as
the paper's tasks do (``answer_parsing``): reference reads the *first* answer, lenient
the *last* one, so a model that corrects itself is scored on its final word.

==========  ==================================================  ==========================
type        extracted answer                                     equal to the gold one when
==========  ==================================================  ==========================
exact       the rest of the ``Answer:`` line                     ``normalize_text`` equal
number      ``extract_number`` (answer line, else last number)   within the tolerances
choice      the letter after ``Answer:`` (TextGrad's pattern)     the same letter
regex       group 1 of the task's ``pattern``                    ``normalize_text`` equal
python      the ``Answer:`` line (or ``pattern``'s group 1)      the user's scorer decides
==========  ==================================================  ==========================
"""

from __future__ import annotations

import re
import unicodedata

from mtg_local.prompts import task_prompts as TP
from mtg_local.prompts import textgrad_prompts as P
from mtg_local.tasks.answer_parsing import _clean, extract_choice_letter, extract_number

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_ANSWER_LINE = re.compile(r"(?i)Answer\s*:[ \t]*([^\n]*)")
_WRAPPERS = "*`\"'\u201c\u201d\u2018\u2019 \t"


def normalize_text(text: str, *, case_sensitive: bool = False) -> str:
    """The form ``exact`` and ``regex`` answers are compared in.

    NFKC, surrounding quotes / markdown (``*`` and backticks) and a trailing ``.``,
    ``!``, ``,``, ``;`` or ``:`` dropped, whitespace runs made one space, and
    (unless ``case_sensitive``) case folded. "**Paris.**" equals "paris".
    """
    t = unicodedata.normalize("NFKC", str(text)).strip()
    prev = None
    while t != prev:
        prev = t
        t = t.strip(_WRAPPERS).rstrip(".!,;:")
    t = " ".join(t.split())
    return t if case_sensitive else t.casefold()


def answer_line(response: str, *, last: bool) -> str | None:
    """The text after ``Answer:`` on the first (``last``: the last, markdown removed) answer line, or None."""
    if not last:
        m = _ANSWER_LINE.search(response)
        text = m.group(1).strip() if m else ""
        return text or None
    found = [m.group(1).strip() for m in _ANSWER_LINE.finditer(_clean(response))]
    return found[-1] if found and found[-1] else None


def pattern_answer(pattern: re.Pattern[str], response: str, *, last: bool) -> str | None:
    """Group 1 of the first (``last``: the last) match of ``pattern`` in ``response``, or None."""
    matches = list(pattern.finditer(response)) if last else [m for m in [pattern.search(response)] if m]
    if not matches or matches[-1].group(1) is None:
        return None
    return matches[-1].group(1).strip() or None


# ---------------------------------------------------------------- multiple choice


def choice_letters(n: int) -> str:
    return LETTERS[:n]


def choice_instruction(n: int) -> str:
    """simple-evals' multiple-choice instruction (``QUERY_TEMPLATE_MULTICHOICE``'s head), for ``n`` options.

    For four options it is the template's own text; for others "ABCD" becomes the
    first ``n`` letters.
    """
    head = P.QUERY_TEMPLATE_MULTICHOICE.split("\n\n", 1)[0]
    return head.replace("ABCD", choice_letters(n))


def choice_format_instruction(n: int) -> str:
    """The answer-format sentences of ``choice_instruction`` (after its first sentence)."""
    return choice_instruction(n).split(". ", 1)[1]


def choice_constraint(n: int) -> str:
    """TextGrad's solution-optimization TGD constraint for ``n`` options."""
    return P.MULTIPLE_CHOICE_CONSTRAINT.replace("ABCD", choice_letters(n))


def render_options(choices: tuple[str, ...]) -> str:
    return "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))


def reference_choice(response: str, n: int) -> str | None:
    """TextGrad's / simple-evals' rule for ``n`` options: the first ``Answer: X``, letter as written."""
    m = re.search(rf"(?i)Answer\s*:\s*([A-{LETTERS[n - 1]}])", response)
    return m.group(1) if m else None


def lenient_choice(response: str, choices: tuple[str, ...]) -> str | None:
    return extract_choice_letter(response, choices, letters=choice_letters(len(choices)))


# ---------------------------------------------------------------- defaults per type

#: answer type -> (format instruction, role, initial loss prompt); ``choice``'s format
#: instruction depends on the number of options (``choice_format_instruction``).
DEFAULT_TEXTS: dict[str, tuple[str, str, str]] = {
    "exact": (TP.ANSWER_LINE_INSTRUCTION, TP.GENERIC_ROLE, TP.GENERIC_LOSS_PROMPT),
    "number": (TP.NUMBER_LINE_INSTRUCTION, TP.GENERIC_ROLE, TP.GENERIC_LOSS_PROMPT),
    "choice": ("", P.MULTIPLE_CHOICE_ROLE, TP.MULTIPLE_CHOICE_LOSS_PROMPT),
    "regex": (TP.REGEX_INSTRUCTION, TP.GENERIC_ROLE, TP.GENERIC_LOSS_PROMPT),
    "python": (TP.ANSWER_LINE_INSTRUCTION, TP.GENERIC_ROLE, TP.GENERIC_LOSS_PROMPT),
}


def extract(answer_type: str, response: str, *, lenient: bool, choices: tuple[str, ...] | None = None,
            pattern: re.Pattern[str] | None = None) -> str | None:
    """The answer read from ``response`` under the type's rule (see the module table), or None."""
    if answer_type == "number":
        return extract_number(response, last_answer=lenient)
    if answer_type == "choice":
        choices = choices or ()
        if not choices:
            return None
        return lenient_choice(response, choices) if lenient else reference_choice(response, len(choices))
    if pattern is not None:
        return pattern_answer(pattern, response, last=lenient)
    return answer_line(response, last=lenient)
