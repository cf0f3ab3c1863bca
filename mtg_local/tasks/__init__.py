"""Task registry: ``get_task("word_sorting")`` and friends.

Names and where their data comes from (details in ``docs/tasks.md``):

==========================  ==================================================
name                        data
==========================  ==================================================
``word_sorting``            BBH ``lukaemon/bbh`` / ``word_sorting`` / ``test``
                            (paper task; ``bbh_word_sorting`` is an alias)
``mmlu_machine_learning``   ``cais/mmlu`` / ``machine_learning`` (paper task)
``gpqa_diamond``            ``Idavidrein/gpqa`` / ``gpqa_diamond``, gated (paper task)
``synthetic_word_sorting``  generated offline from a seed (not a paper task)
``arithmetic``              generated offline from a seed (not a paper task;
                            ``mtg_local.tasks.arithmetic``)
==========================  ==================================================

With ``data_file=PATH`` the Hub tasks read a local file in the dataset's Hub
schema through the same ``datasets`` loader. ``scoring`` picks the answer
rule: "reference" (TextGrad's, the default) or "lenient"
(``mtg_local.tasks.answer_parsing``); the task records it in ``describe()``.
"""

from __future__ import annotations

from mtg_local.tasks.base import SCORINGS, Example, Splits, Task
from mtg_local.tasks.errors import TaskDataError

__all__ = ["SCORINGS", "Example", "Splits", "Task", "TaskDataError", "get_task", "resolve_task_name", "task_names"]

_NAMES = ("word_sorting", "bbh_word_sorting", "mmlu_machine_learning", "gpqa_diamond", "synthetic_word_sorting",
          "arithmetic")
#: Tasks generated offline, without data files or a Hub source.
_GENERATED = ("synthetic_word_sorting", "arithmetic")
#: Accepted old names -> the task they resolve to (results carry the resolved name).
_ALIASES = {"bbh_word_sorting": "word_sorting"}
_SOURCES = ("builtin", "hub")


def task_names() -> list[str]:
    """The names ``get_task`` accepts."""
    return list(_NAMES)


def resolve_task_name(name: str) -> str:
    """The task a name resolves to (``bbh_word_sorting`` -> ``word_sorting``); unknown names unchanged."""
    return _ALIASES.get(name, name)


def get_task(
    name: str,
    *,
    data_file: str | None = None,
    seed: int = 0,
    source: str | None = None,
    strict: bool = False,
    scoring: str = "reference",
) -> Task:
    """Builds a task by name; data is loaded on the first ``splits()``/``describe()``.

    Args:
        name: one of ``task_names()`` (``bbh_word_sorting`` resolves to ``word_sorting``).
        data_file: a local JSON/JSONL/CSV/Parquet file in the dataset's Hub
            schema, read instead of the Hub (not for the generated tasks).
        seed: the *data* seed -- generation seed of the generated tasks,
            split shuffle of MMLU/GPQA and GPQA's option order (BBH splits are
            in file order and ignore it). Keep it fixed across runs whose
            results are compared; it is not the sampling seed.
        source: ``"builtin"`` (only the generated ``synthetic_word_sorting``
            and ``arithmetic``, their only source) or ``"hub"`` (the only
            source of the others). Ignored with ``data_file``.
        strict: stop at the first bad row (``TaskDataError`` naming the row)
            instead of skipping it into ``Splits.skipped``.
        scoring: "reference" (TextGrad's first ``Answer:`` rule) or "lenient".

    Raises:
        TaskDataError: unknown name/source, or (later) data that cannot be loaded.
    """
    if name not in _NAMES:
        raise TaskDataError(f"unknown task {name!r}; known: {', '.join(_NAMES)}")
    name = _ALIASES.get(name, name)
    if source is not None and source not in _SOURCES:
        raise TaskDataError(f"source must be one of {', '.join(_SOURCES)}, got {source!r}")
    if scoring not in SCORINGS:
        raise TaskDataError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    synthetic = name in _GENERATED
    if source == "builtin" and not synthetic:
        raise TaskDataError(
            f"task {name!r} has no built-in data; use source='hub' or data_file= "
            f"(the generated offline sets are {', '.join(map(repr, _GENERATED))})"
        )
    if synthetic and (source == "hub" or data_file is not None):
        hint = "; use 'word_sorting' for BBH from the Hub or a file" if name == "synthetic_word_sorting" else ""
        raise TaskDataError(f"task {name!r} is generated offline and reads no data{hint}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskDataError(f"seed must be an int, got {seed!r}")
    data_file = str(data_file) if data_file is not None else None

    task: Task
    if name in ("word_sorting", "synthetic_word_sorting"):
        from mtg_local.tasks.word_sorting import WordSortingTask

        if synthetic:
            task = WordSortingTask.builtin(seed=seed)
        else:
            task = WordSortingTask.load(data_file=data_file, strict=strict)
    elif name == "arithmetic":
        from mtg_local.tasks.arithmetic import ArithmeticTask

        task = ArithmeticTask(seed=seed)
    elif name == "mmlu_machine_learning":
        from mtg_local.tasks.mmlu import MMLUMachineLearningTask

        task = MMLUMachineLearningTask.create(data_file=data_file, seed=seed, strict=strict)
    else:
        from mtg_local.tasks.gpqa import GPQADiamondTask

        task = GPQADiamondTask.create(data_file=data_file, seed=seed, strict=strict)
    task.scoring = scoring
    return task
