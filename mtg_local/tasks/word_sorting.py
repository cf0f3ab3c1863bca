"""BBH-style word sorting: "Sort the following words alphabetically: List: ...".

``WordSortingTask.builtin(...)`` generates questions offline, deterministically
from a seed, from a bundled word list (``mtg_local/data/words.txt``); the
ground truth is exact (``sorted``). Loading the real BBH set is added by the
task loaders.
"""

from __future__ import annotations

import random
import re
from functools import cache
from importlib import resources

from mtg_local.tasks.base import Example, Splits, Task

INITIAL_LOSS_PROMPT = (
    "Below is a word sorting problem and an answer. You are an expert scientist. Your job is to "
    "investigate the answer. Critically go through reasoning steps, consider your knowledge, and "
    "see if the answer is correct or if there are any critical mistakes."
)

FORMAT_INSTRUCTION = (
    "The last line of your response should be of the following format: "
    "'Answer: $WORDS' (without quotes) where WORDS is the sorted words separated by single spaces."
)


@cache
def bundled_words() -> tuple[str, ...]:
    text = resources.files("mtg_local.data").joinpath("words.txt").read_text()
    return tuple(w for w in text.split() if w.isalpha())


def make_question(words: list[str]) -> str:
    return "Sort the following words alphabetically: List: " + " ".join(words)


def generate_examples(n: int, seed: int, *, min_words: int = 3, max_words: int = 8) -> list[Example]:
    """``n`` word-sorting examples drawn deterministically from ``seed``."""
    rng = random.Random(seed)
    vocab = bundled_words()
    out = []
    for i in range(n):
        words = rng.sample(vocab, rng.randint(min_words, max_words))
        out.append(Example(id=f"gen-{seed}-{i}", question=make_question(words), answer=" ".join(sorted(words))))
    return out


_ANSWER_RE = re.compile(r"answer\s*[:\-]\s*(.+)", re.IGNORECASE)


def normalize_words(text: str) -> str:
    """Lower-cases, strips punctuation/markdown and joins words with single spaces."""
    words = re.findall(r"[a-z][a-z'\-]*", text.lower())
    return " ".join(w.strip("'-") for w in words if w.strip("'-"))


class WordSortingTask(Task):
    """Word sorting with exact-match scoring on the normalised word sequence."""

    name = "word_sorting"
    initial_loss_prompt = INITIAL_LOSS_PROMPT
    format_instruction = FORMAT_INSTRUCTION

    def __init__(self, splits: Splits, *, source: str = "builtin") -> None:
        self._splits = splits
        self.source = source

    @classmethod
    def builtin(cls, *, seed: int = 0, n_train: int = 50, n_val: int = 100, n_test: int = 100) -> WordSortingTask:
        """Generated task with the BBH split sizes (50/100/100) by default."""
        ex = generate_examples(n_train + n_val + n_test, seed)
        splits = Splits(
            tuple(ex[:n_train]), tuple(ex[n_train : n_train + n_val]), tuple(ex[n_train + n_val :])
        )
        return cls(splits, source=f"builtin(seed={seed})")

    def splits(self) -> Splits:
        return self._splits

    def extract_answer(self, response: str, example: Example | None = None) -> str | None:
        matches = _ANSWER_RE.findall(response)
        if not matches:
            return None
        words = normalize_words(matches[-1])
        return words or None

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source}
