"""BBH-style word sorting: "Sort the following words alphabetically: List: ...".

Two sources of questions:

* ``WordSortingTask.builtin(seed=...)`` generates questions offline,
  deterministically from a seed, from a bundled word list
  (``mtg_local/data/words.txt``); the ground truth is exact (``sorted``). This
  is ``get_task("synthetic_word_sorting")`` (task name
  ``synthetic_word_sorting``): 3-8 common words, easier than BBH and NOT a
  paper task; it exists so everything runs offline.
* ``WordSortingTask.load(...)`` is ``get_task("word_sorting")``: it reads the
  real BBH set through ``datasets``: from the Hub (``lukaemon/bbh``, config ``word_sorting``, split ``test``, 250
  rows) or a local BBH / BIG-bench file (``{"examples": [{"input", "target"}]}``
  JSON, or JSON lines with those fields). Splits are taken in file order as in
  TextGrad: the first 50 rows train, the next 100 val, the next 100 test
  (a larger file such as BIG-bench's 1900 rows uses its first 250 and records
  the rest as unused; 151-249 usable rows give a shorter test split; 150 or
  fewer are split 1:2:2).
"""

from __future__ import annotations

import random
import re
from functools import cache
from importlib import resources
from typing import Any

from mtg_local.prompts import textgrad_prompts
from mtg_local.tasks.answer_parsing import extract_sorted_words, normalize_words, reference_sorted_words
from mtg_local.tasks.base import Example, Splits, Task
from mtg_local.tasks.errors import TaskDataError
from mtg_local.tasks.loading import BadRow, DataSource, check_columns, file_sha256, load_rows, parse_rows, text_field

__all__ = ["WordSortingTask", "normalize_words", "make_question", "generate_examples", "bundled_words"]

DATASET = "lukaemon/bbh"
CONFIG = "word_sorting"
HUB_SPLITS = ("test",)
#: TextGrad's BBH split sizes (train, val, test), in file order
BBH_SIZES = (50, 100, 100)

#: the paper's initial loss prompt for word sorting (appendix C, verbatim)
INITIAL_LOSS_PROMPT = (
    "Below is a word sorting problem and an answer. You are an expert scientist. Your job is to "
    "investigate the answer. Critically go through reasoning steps, consider your knowledge, and "
    "see if the answer is correct or if there are any critical mistakes."
)

FORMAT_INSTRUCTION = (
    "The last line of your response should be of the following format: "
    "'Answer: $WORDS' (without quotes) where WORDS is the sorted words separated by single spaces."
)

QUESTION_PREFIX = "Sort the following words alphabetically: List: "
_LIST_RE = re.compile(r"list\s*:\s*(?P<words>.*)$", re.IGNORECASE | re.DOTALL)


@cache
def bundled_words() -> tuple[str, ...]:
    text = resources.files("mtg_local.data").joinpath("words.txt").read_text()
    return tuple(w for w in text.split() if w.isalpha())


def make_question(words: list[str]) -> str:
    return QUESTION_PREFIX + " ".join(words)


def generate_examples(n: int, seed: int, *, min_words: int = 3, max_words: int = 8) -> list[Example]:
    """``n`` word-sorting examples drawn deterministically from ``seed``."""
    rng = random.Random(seed)
    vocab = bundled_words()
    out = []
    for i in range(n):
        words = rng.sample(vocab, rng.randint(min_words, max_words))
        out.append(Example(id=f"gen-{seed}-{i}", question=make_question(words), answer=" ".join(sorted(words))))
    return out


def split_sizes(n: int, sizes: tuple[int, int, int | None] = BBH_SIZES) -> tuple[int, int, int]:
    """How many of ``n`` usable rows go to train/val/test (file order; see module docstring).

    ``sizes[2] = None`` means "all remaining rows" for the test split.
    """
    n_train, n_val, n_test = sizes
    if n > n_train + n_val:
        rest = n - n_train - n_val
        return n_train, n_val, rest if n_test is None else min(n_test, rest)
    return n // 5, 2 * n // 5, n - n // 5 - 2 * n // 5


def parse_bbh_row(row_number: int, row: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """``(question, answer, meta)`` from a BBH/BIG-bench row ``{"input", "target"}``.

    ``input`` may be the full BBH question or just ``List: w1 w2`` / ``w1 w2``
    (then the BBH question is built). ``target`` may be a string or a list
    (BIG-bench); a list's first entry is the answer. The target must contain
    exactly the listed words (any order), else the row is bad.

    Raises:
        BadRow: a field is missing/empty or the target does not match the words.
    """
    text = text_field(row, "input")
    m = _LIST_RE.search(text)
    words = (m.group("words") if m else text).split()
    if not words:
        raise BadRow("field 'input' lists no words")
    question = text if text.lower().startswith("sort the following words") else make_question(words)
    target = row.get("target")
    meta: dict[str, Any] = {"row": row_number}
    if isinstance(target, (list, tuple)):
        targets = [t for t in target if isinstance(t, str) and t.strip()]
        if not targets:
            raise BadRow("field 'target' is an empty list")
        if len(set(targets)) > 1:
            meta["other_targets"] = targets[1:]
        target = targets[0]
    answer = normalize_words(text_field({"target": target}, "target"))
    if sorted(answer.split()) != sorted(normalize_words(" ".join(words)).split()):
        raise BadRow("field 'target' does not hold exactly the words listed in 'input'")
    return question, answer, meta


class WordSortingTask(Task):
    """Word sorting with exact-match scoring on the normalised word sequence.

    Args:
        splits: ready splits (the built-in set); or None with ``data``.
        source: short provenance string ("builtin(seed=0)", "hub", "file").
        data: where to load BBH rows from when ``splits`` is None.
        strict: stop at the first bad row instead of skipping it.
        sizes: (train, val, test) sizes for loaded data; test None = the rest.
    """

    name = "word_sorting"
    #: name of the generated (offline) set; ``builtin()`` tasks carry it
    SYNTHETIC_NAME = "synthetic_word_sorting"
    initial_loss_prompt = INITIAL_LOSS_PROMPT
    format_instruction = FORMAT_INSTRUCTION
    #: ours: TextGrad's solution-optimization script has no word-sorting task (docs/protocol.md)
    answer_role = textgrad_prompts.WORD_SORTING_ROLE

    def __init__(
        self,
        splits: Splits | None = None,
        *,
        source: str = "builtin",
        data: DataSource | None = None,
        strict: bool = False,
        sizes: tuple[int, int, int | None] = BBH_SIZES,
        seed: int | None = None,
    ) -> None:
        if (splits is None) == (data is None):
            raise ValueError("give exactly one of splits (built-in) or data (a DataSource to load)")
        if any(s is not None and s < 1 for s in sizes) or sizes[0] is None or sizes[1] is None:
            raise ValueError(f"sizes must be positive (train, val, test-or-None), got {sizes}")
        self._splits = splits
        self.source = source
        self.data = data
        self.strict = strict
        self.sizes = sizes
        self.seed = seed
        self._resolved: str | None = None
        self._n_rows = sum(len(x) for x in (splits.train, splits.val, splits.test)) if splits else 0

    @classmethod
    def builtin(cls, *, seed: int = 0, n_train: int = 50, n_val: int = 100, n_test: int = 100) -> WordSortingTask:
        """Generated task with the BBH split sizes (50/100/100) by default."""
        ex = generate_examples(n_train + n_val + n_test, seed)
        splits = Splits(
            tuple(ex[:n_train]), tuple(ex[n_train : n_train + n_val]), tuple(ex[n_train + n_val :])
        )
        task = cls(splits, source=f"builtin(seed={seed})", seed=seed)
        # An instance attribute: results, reports and caches must never mistake it for BBH.
        task.name = cls.SYNTHETIC_NAME
        return task

    @classmethod
    def load(
        cls,
        *,
        data_file: str | None = None,
        strict: bool = False,
        sizes: tuple[int, int, int | None] = BBH_SIZES,
    ) -> WordSortingTask:
        """The BBH set from the Hub (``data_file=None``) or a local BBH/BIG-bench file (lazy)."""
        data = DataSource(DATASET, CONFIG, HUB_SPLITS, data_file=data_file, json_field="examples")
        return cls(data=data, source="file" if data_file else "hub", strict=strict, sizes=sizes)

    def splits(self) -> Splits:
        """The splits; loaded rows are read once, in file order (see module docstring)."""
        if self._splits is None:
            self._splits = self._load()
        return self._splits

    def _load(self) -> Splits:
        assert self.data is not None
        info: dict[str, Any] = {}
        rows, _ = load_rows(self.data, info=info)
        self._resolved = info.get("resolved")
        check_columns(rows, ("input", "target"), self.data.label)
        parsed, skipped = parse_rows(rows, parse_bbh_row, label=self.data.label, strict=self.strict)
        self._n_rows = len(rows)
        n_train, n_val, n_test = split_sizes(len(parsed), self.sizes)
        if min(n_train, n_val, n_test) < 1:
            raise TaskDataError(
                f"{self.data.label}: {len(parsed)} usable row(s) of {len(rows)} "
                f"({len(skipped)} skipped) is too few for train/val/test; need at least 5"
            )
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n_train + n_val + n_test)}

        def examples(split: str) -> tuple[Example, ...]:
            lo, hi = bounds[split]
            return tuple(
                Example(id=f"{split}-{i}", question=q, answer=a, meta=meta)
                for i, (_, (q, a, meta)) in enumerate(parsed[lo:hi])
            )

        return Splits(examples("train"), examples("val"), examples("test"), tuple(skipped))

    def extract_answer(self, response: str, example: Example | None = None) -> str | None:
        """The answer's normalised words.

        reference: the line of the first ``Answer:`` (``reference_sorted_words``);
        lenient: after the last ``Answer:``, lists allowed (``extract_sorted_words``).
        """
        if self.scoring == "reference":
            return reference_sorted_words(response)
        words = None
        if example is not None:
            m = _LIST_RE.search(example.question)
            words = (m.group("words") if m else example.question).split()
        return extract_sorted_words(response, words)

    def describe(self) -> dict[str, Any]:
        """Provenance for results.json: source, split rule, sizes, skipped and unused rows."""
        s = self.splits()
        used = len(s.train) + len(s.val) + len(s.test)
        d: dict[str, Any] = {"name": self.name, "scoring": self.scoring, "source": self.source}
        if self.data is not None:
            d.update(self.data.describe())
            d.update(
                strict=self.strict,
                split_rule=f"file order: train/val/test sizes {list(self.sizes)} (None = rest); "
                "<=150 usable rows: 1:2:2",
                rows=self._n_rows,
                unused=self._n_rows - len(s.skipped) - used,
                skipped_rows=[dict(x) for x in s.skipped[:50]],
            )
        else:
            d.update(seed=self.seed, split_rule="generated; 50/100/100 in generation order")
        d.update(sizes={"train": len(s.train), "val": len(s.val), "test": len(s.test)}, skipped=len(s.skipped))
        d["identity"] = self.identity()
        return d

    def data_identity(self) -> dict[str, Any]:
        """The data file's sha256, the Hub dataset read, or the generator and its seed."""
        if self.data is None:
            return {"generated": self.name, "seed": self.seed}
        if self.data.data_file is not None:
            return {"file_sha256": file_sha256(self.data.data_file)}
        self.splits()
        return {"hub": self.data.dataset, "config": self.data.config, "splits": list(self.data.hub_splits),
                "revision": self.data.revision, "resolved": self._resolved}


def bbh_task(*, data_file: str | None = None, strict: bool = False) -> WordSortingTask:
    """The built-in task ``word_sorting`` (``builtin/word_sorting.yaml``): BBH from the Hub or a file."""
    return WordSortingTask.load(data_file=data_file, strict=strict)


def synthetic_task(*, seed: int = 0) -> WordSortingTask:
    """The built-in task ``synthetic_word_sorting``: generated offline from ``seed``."""
    return WordSortingTask.builtin(seed=seed)
