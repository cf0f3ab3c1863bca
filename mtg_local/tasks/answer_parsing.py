r"""Finding the final answer in free-form model output, under two scoring rules.

``scoring="reference"`` (the default of every task) is the rule the paper's
numbers were scored with:

* ``reference_choice_letter``: TextGrad's / simple-evals' multiple-choice rule,
  the *first* match of ``(?i)Answer\s*:\s*([A-D])`` (``eval_string_based`` in
  TextGrad's ``textgrad/tasks/mmlu.py`` and ``gpqa.py``), taken as written.
* ``reference_sorted_words``: the same "first ``Answer:``" rule for word
  sorting, the rest of that line compared as a word sequence. TextGrad scores
  BBH word sorting with an LLM judge that is asked whether the final
  prediction is "the same as the ground truth answer" (``load_task``'s "BBH"
  branch in ``textgrad/tasks/__init__.py``); a deterministic string rule
  stands in for the judge so that runs are reproducible and free.

``scoring="lenient"`` keeps the parsers written against what small models
actually emit (markdown, LaTeX, restated answers, lists):

* ``extract_choice_letter``: a multiple-choice letter.
* ``extract_sorted_words``: the word sequence of a word-sorting answer.

Both lenient parsers take the *last* answer in the response, so a model that
corrects itself is scored on its final word. No parser ever guesses: no
recognisable answer gives ``None`` (scored wrong), never a default letter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Markdown / LaTeX wrappers removed before parsing: **B**, `B`, $B$, \boxed{B}, ### Answer.
_LATEX_WRAP = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_MARKUP = re.compile(r"[*`$#]|\\[()\[\]]")

# "Answer: B", "The answer is (B)", "final answer would be: b)", "Answer: Option C",
# "The correct option is D". The letter may be bracketed; it must not start a word.
_LETTER = re.compile(
    r"(?:\banswer(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?"
    r"(?:\s+(?:therefore|thus|clearly))?"
    r"|\b(?:correct|right|best)\s+(?:option|choice)\s+is)"
    r"\s*[:=\-]?\s*(?:(?:option|choice)\s+)?"
    r"(?P<open>[(\[]\s*)?(?P<letter>[A-Za-z])(?![A-Za-z0-9])(?=(?P<rest>[^\n]*))",
    re.IGNORECASE,
)
# "Answer: <text>" to the end of the line (for matching an option's text).
_ANSWER_LINE = re.compile(r"\banswer\s*[:\-]\s*(?P<text>[^\n]*)", re.IGNORECASE)
# A last line that is only a letter: "C", "(C)", "C.", "[C]".
_BARE_LETTER = re.compile(r"^[(\[]?\s*(?P<letter>[A-Z])\s*[)\].]?$")
_ONLY_PUNCT = re.compile(r"^[\s.,;:!)\]]*$")


_STAR_BULLET = re.compile(r"^(\s*)\*\s+", re.MULTILINE)


def _clean(text: str) -> str:
    text = _STAR_BULLET.sub(r"\1- ", text)  # keep "* item" bullets as list items
    return _MARKUP.sub("", _LATEX_WRAP.sub(r"\1", text))


def _norm_option(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def extract_choice_letter(
    response: str, choices: Sequence[str] | None = None, *, letters: str = "ABCD"
) -> str | None:
    """The multiple-choice letter a response ends on, upper-case, or None.

    Accepted (case-insensitive keyword, markdown ``* ` $ #`` and LaTeX
    ``\\boxed{}``/``\\text{}`` stripped first): ``Answer: B``, ``**Answer: (B)**``,
    ``Answer: B.``, ``ANSWER: [B]``, ``Final answer: B) text``, ``The answer is C``,
    ``The answer would be: (C)``, ``Answer: Option C``, ``The correct option is D``,
    ``Answer: $\\boxed{D}$``. A lower-case letter counts only when bracketed or
    followed by nothing but punctuation (``answer: b)``, ``Answer: c.``) so that
    "the answer is a linear model" is not read as A. An upper-case letter must
    not start a word ("Answer: Decision trees" is not D).

    If ``choices`` are given, an ``Answer:`` line whose text equals one option's
    text (ignoring case and punctuation) gives that option's letter; this wins
    over a letter read at the same place ("Answer: A decision tree" where C is
    "A decision tree" gives C).

    Without any answer phrase, a last non-empty line that is just a letter
    (``C``, ``(C)``, ``C.``) is accepted. When several answers appear, the last
    one wins. Letters outside ``letters`` are ignored.

    Returns:
        One of ``letters`` or None.
    """
    text = _clean(response)
    candidates: list[tuple[float, str]] = []
    for m in _LETTER.finditer(text):
        letter = m.group("letter")
        if letter.upper() not in letters:
            continue
        if letter.islower() and not m.group("open") and not _ONLY_PUNCT.match(m.group("rest")):
            continue
        candidates.append((m.start(), letter.upper()))
    if choices:
        options = [_norm_option(c) for c in choices]
        for m in _ANSWER_LINE.finditer(text):
            said = _norm_option(m.group("text"))
            if said and options.count(said) == 1:
                candidates.append((m.start() + 0.5, letters[options.index(said)]))
    if candidates:
        return max(candidates)[1]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if lines:
        m = _BARE_LETTER.match(lines[-1])
        if m and m.group("letter") in letters:
            return m.group("letter")
    return None


# ---------------------------------------------------------------- reference rules

#: TextGrad's ANSWER_PATTERN_MULTICHOICE (textgrad/tasks/mmlu.py, gpqa.py; from simple-evals).
REFERENCE_CHOICE_PATTERN = re.compile(r"(?i)Answer\s*:\s*([A-D])")
#: The same "first Answer:" anchor for free-text answers: the rest of that line.
REFERENCE_ANSWER_LINE = re.compile(r"(?i)Answer\s*:[ \t]*([^\n]*)")


def reference_choice_letter(response: str) -> str | None:
    """The letter of the first ``Answer: X`` in ``response`` exactly as TextGrad reads it, or None.

    Like TextGrad's ``eval_string_based``: case-insensitive pattern, the
    letter kept as written (a lower-case "answer: b" does not equal "B" and
    scores 0 there too), the first match wins ("Answer: B ... is the answer
    C?" gives B), and nothing else is read (no markdown stripping).
    """
    m = REFERENCE_CHOICE_PATTERN.search(response)
    return m.group(1) if m else None


def reference_sorted_words(response: str) -> str | None:
    """The words on the line of the first ``Answer:`` in ``response``, normalised, or None.

    The line's text goes through ``normalize_words`` (lower case, punctuation
    dropped), the same canonical form as the ground truth, so "Answer: Apple,
    banana." equals "apple banana". Nothing else is accepted: no list on the
    following lines, no later answer.
    """
    m = REFERENCE_ANSWER_LINE.search(response)
    if m is None:
        return None
    return normalize_words(m.group(1)) or None


# ---------------------------------------------------------------- word sorting

_WORDS_KEY = re.compile(r"\banswer(?:\s+is)?\s*[:\-]", re.IGNORECASE)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)])\s+")
_WORD = re.compile(r"[a-z][a-z'\-]*")


def normalize_words(text: str) -> str:
    """Lower-cases, drops punctuation, numbers and markdown, joins words with single spaces.

    Words are runs of letters with inner apostrophes/hyphens (``o'clock``,
    ``x-ray``); this is also how ground truths are canonicalised, so both
    sides of a comparison go through it.
    """
    words = _WORD.findall(text.lower())
    return " ".join(w.strip("'-") for w in words if w.strip("'-"))


def _answer_segment(text: str) -> str | None:
    matches = list(_WORDS_KEY.finditer(text))
    if not matches:
        return None
    after = text[matches[-1].end():]
    first, _, remainder = after.partition("\n")
    lines = [first] + remainder.split("\n")
    if not normalize_words(_LIST_ITEM.sub("", first)):
        lines = lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]  # "Answer:" alone on its line, list below
    if not lines:
        return None
    taken = [lines[0]]
    if _LIST_ITEM.match(lines[0]):
        for ln in lines[1:]:
            if not _LIST_ITEM.match(ln):
                break
            taken.append(ln)
    return "\n".join(_LIST_ITEM.sub("", ln) for ln in taken)


def extract_sorted_words(response: str, words: Sequence[str] | None = None) -> str | None:
    """The word sequence after the last ``Answer:``, normalised, or None.

    Accepted: ``Answer: apple banana cherry``, any case, commas or other
    separators, a trailing period, markdown (``**Answer:** *apple*, banana``),
    ``The answer is: ...``, ``Answer - ...``, and a numbered (``1.``/``1)``) or
    bulleted (``-``/``*``/``\u2022``) list either on the answer line or starting
    on the next non-empty line (consecutive list items are taken). Text in
    parentheses is dropped ("(sorted alphabetically)"). If ``words`` (the words
    to sort) are given and do not include "and", a conjunction "and" between
    list items ("x, y, and z") is dropped. Nothing else is removed: extra or
    missing words make the answer wrong, as they should.

    Returns:
        Space-joined lower-case words, or None if there is no ``Answer`` phrase
        or it is followed by no words.
    """
    segment = _answer_segment(_clean(response))
    if segment is None:
        return None
    segment = re.sub(r"\([^()]*\)", " ", segment)
    if words is not None and "and" not in {w.lower() for w in words}:
        segment = re.sub(r"(,|\n)\s*and\s+", r"\1 ", segment, flags=re.IGNORECASE)
    return normalize_words(segment) or None


# ---------------------------------------------------------------- numbers

# A number not glued to a word: "12", "-3", "1,234", "2.5"; the sign only when it is not a
# binary minus ("5-3" reads 5 and 3, "= -2" reads -2). "12th", "x2" and "2x" are not numbers.
_NUMBER = re.compile(r"(?<![\w.])(?:(?<![\w)])[-\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")


def normalize_number(text: str) -> str | None:
    """The canonical form of one number written as ``text``, or None if it is not one.

    Thousands commas are dropped, a Unicode minus becomes "-", and the value is
    written without trailing zeros: "1,234" -> "1234", "12.50" -> "12.5",
    "12.0" -> "12", "-0" -> "0". Ground truths and extracted answers both go
    through it, so "12" equals "12.0".
    """
    from decimal import Decimal, InvalidOperation

    t = text.strip().replace("\u2212", "-").replace(",", "")
    try:
        d = Decimal(t)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_number(response: str) -> str | None:
    """The LAST number in ``response``, canonical (``normalize_number``), or None if there is none.

    The rule TextGrad scores numeric BBH answers with (``parse_integer_answer``
    in ``textgrad/tasks/big_bench_hard.py``) also takes the last number of the
    response; this one reads the number itself rather than the digits of the
    last token that holds one: a sign and decimals are kept ("-3", "2.5"),
    thousands commas dropped ("1,234"), a number glued to letters ("12th",
    "x2") is not a number, and no number gives None (TextGrad's gives 0).
    Markdown and LaTeX around the number do not matter (``**12**``,
    ``\\boxed{12}``). So "7 + 5 = 12." and "... Answer: 12" both give "12", while
    "Answer: 12. Check: 12 - 5 = 7" gives "7": the last number counts, whatever
    comes before it, as the task's format instruction asks for the answer on
    the last line.
    """
    last = None
    for m in _NUMBER.finditer(response):
        last = m.group(0)
    return normalize_number(last) if last is not None else None
