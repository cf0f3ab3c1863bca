"""What every task gives the algorithms: splits, prompts, answer extraction, scoring.

A task is data plus three functions. Algorithms only use this interface, so a
new task (or a local file in a documented format) plugs into every method.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from typing import Any

from mtg_local.prompts import textgrad_prompts


@dataclasses.dataclass(frozen=True)
class Example:
    """One question with its ground truth.

    Attributes:
        id: stable id within the task (e.g. "test-17").
        question: the question text as shown to the model (without the
            task's format instruction).
        answer: the ground truth in canonical form (the sorted words joined
            by single spaces; a choice letter "A".."D").
        choices: for multiple choice, the option texts in presented order.
        meta: anything else worth recording (source row, permutation, ...).
    """

    id: str
    question: str
    answer: str
    choices: tuple[str, ...] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["choices"] = list(self.choices) if self.choices is not None else None
        return d


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train / validation / test examples, plus rows the loader skipped."""

    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]
    skipped: tuple[dict[str, Any], ...] = ()  # {"row": int, "reason": str}

    def get(self, name: str) -> tuple[Example, ...]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)

    def limited(self, limit: int | None) -> Splits:
        """The first ``limit`` examples of every split (None: unchanged)."""
        if limit is None:
            return self
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return Splits(self.train[:limit], self.val[:limit], self.test[:limit], self.skipped)


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """A response's score in [0, 1], optional feedback text (GEPA shows it), and the scorer's error.

    ``error`` is set when the task's scorer raised or returned something that is no
    score; the score is then 0 (one bad item never stops a run).
    """

    score: float
    feedback: str | None = None
    error: str | None = None


#: Length of the short hashes of a task's identity (hex digits of SHA-256).
IDENTITY_HASH_LENGTH = 12


def short_hash(obj: Any) -> str:
    """Short SHA-256 of ``obj``'s sorted-key JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:IDENTITY_HASH_LENGTH]


#: Answer-extraction rules a task can score with (see ``mtg_local.tasks.answer_parsing``):
#: "reference" = the rule the paper's numbers were scored with (TextGrad / simple-evals),
#: "lenient" = this project's parsers for what small models emit.
SCORINGS = ("reference", "lenient")


class Task(abc.ABC):
    """A benchmark: its splits and how to prompt, parse and score it."""

    #: registry name, e.g. "word_sorting"
    name: str = ""
    #: the paper's initial loss prompt theta_L for this task (appendix C)
    initial_loss_prompt: str = ""
    #: what the answer must look like; appended to every question
    format_instruction: str = ""
    #: role description of an answer being optimized (shown to the backward and update calls)
    answer_role: str = textgrad_prompts.ANSWER_ROLE
    #: answer-extraction rule, one of ``SCORINGS`` (``get_task`` sets it; recorded in describe())
    scoring: str = "reference"
    #: the inference template y_T a run starts from when none is given (None: the paper's)
    inference_template: str | None = None
    #: where the task is defined: {"kind": builtin | file | python, "source": ..., "definition_hash": ...};
    #: the registry sets it (``get_task``); None: a Python class used directly
    origin: dict[str, Any] | None = None

    @abc.abstractmethod
    def splits(self) -> Splits:
        """Loads (once) and returns the task's splits."""

    def format_question(self, example: Example) -> str:
        """The full user message for ``example`` (question + format instruction)."""
        if self.format_instruction:
            return f"{example.question}\n\n{self.format_instruction}"
        return example.question

    @property
    def tgd_constraint(self) -> str:
        """The constraint every TGD update of an answer gets (default: the format instruction)."""
        return self.format_instruction

    @abc.abstractmethod
    def extract_answer(self, response: str, example: Example | None = None) -> str | None:
        """The canonical answer found in a model response under ``self.scoring``, or None.

        Everything that reads an answer (scoring, majority vote, the format
        check of updates) goes through this one method, so one rule applies.
        """

    def update_constraints(self, example: Example) -> list[str]:
        """Constraints of a TGD update of an answer to ``example``: ``tgd_constraint``.

        Per example, so one batch may mix tasks (``mtg_local.tasks.multi_task``).
        """
        return [self.tgd_constraint] if self.tgd_constraint else []

    def answer_role_for(self, example: Example) -> str:
        """The role of an answer to ``example`` (``answer_role``; per example, as ``update_constraints``)."""
        return self.answer_role

    def score(self, response: str, example: Example) -> float:
        """1.0 if the response's extracted answer equals the ground truth, else 0.0."""
        return float(self.extract_answer(response, example) == example.answer)

    def score_item(self, response: str, example: Example) -> ScoreResult:
        """The score with feedback and error (``ScoreResult``); never raises for a bad response.

        The default wraps ``score``; a task whose scorer is the user's code (answer type
        ``python``) catches that code's errors here: the item scores 0 and the error is
        kept (the inner loop writes it into the item's trajectory; ``describe`` counts them).
        """
        return ScoreResult(float(self.score(response, example)))

    def data_identity(self) -> dict[str, Any]:
        """What identifies the task's data: a file's bytes, a Hub revision, a generator's seed.

        The default hashes the loaded examples (split, id, question, answer, choices).
        """
        s = self.splits()
        rows = [[name, e.id, e.question, e.answer, list(e.choices or ())]
                for name in ("train", "val", "test") for e in s.get(name)]
        return {"examples_sha256": hashlib.sha256(json.dumps(rows).encode()).hexdigest()}

    def identity(self) -> dict[str, Any]:
        """The task's identity as results.json records it (``task_info.identity``).

        ``kind`` (builtin | file | python), ``source`` (the task file, or the Python that
        defines it), ``definition_hash`` (the task file's text and the code it runs;
        for a built-in, its name), ``data`` (``data_identity``), ``data_hash`` (short hash
        of ``data``) and ``id`` (short hash of name, kind, definition and data: what
        ``mtg report`` puts in one column).
        """
        origin = self.origin or {"kind": "python", "source": f"{type(self).__module__}:{type(self).__qualname__}",
                                 "definition_hash": ""}
        data = self.data_identity()
        ident = {"name": self.name, "kind": origin["kind"], "source": origin.get("source"),
                 "definition_hash": origin.get("definition_hash") or short_hash({"python": origin.get("source")}),
                 "data": data, "data_hash": short_hash(data)}
        ident["id"] = short_hash([ident["name"], ident["kind"], ident["definition_hash"], ident["data_hash"]])
        return ident

    def describe(self) -> dict[str, Any]:
        """What to record about the task in a run's config/results."""
        return {"name": self.name, "scoring": self.scoring, "identity": self.identity()}
