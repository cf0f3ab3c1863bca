"""Task registry: ``get_task("word_sorting")`` and friends.

Names and where their data comes from (details in ``docs/tasks.md``):

=======================  ==================================================  ======================
name                     default source                                      ``source="hub"``
=======================  ==================================================  ======================
``word_sorting``         built-in generated set (offline)                    BBH ``lukaemon/bbh``
``bbh_word_sorting``     BBH ``lukaemon/bbh`` / ``word_sorting`` / ``test``  same
``mmlu_machine_learning`` ``cais/mmlu`` / ``machine_learning``               same
``gpqa_diamond``         ``Idavidrein/gpqa`` / ``gpqa_diamond`` (gated)      same
=======================  ==================================================  ======================

With ``data_file=PATH`` any of them reads a local file in the dataset's Hub
schema through the same ``datasets`` loader (``word_sorting`` then means the
BBH format).
"""

from __future__ import annotations

from mtg_local.tasks.base import Example, Splits, Task
from mtg_local.tasks.errors import TaskDataError

__all__ = ["Example", "Splits", "Task", "TaskDataError", "get_task", "task_names"]

_NAMES = ("word_sorting", "bbh_word_sorting", "mmlu_machine_learning", "gpqa_diamond")
_SOURCES = ("builtin", "hub")


def task_names() -> list[str]:
    """The names ``get_task`` accepts."""
    return list(_NAMES)


def get_task(
    name: str,
    *,
    data_file: str | None = None,
    seed: int = 0,
    source: str | None = None,
    strict: bool = False,
) -> Task:
    """Builds a task by name; data is loaded on the first ``splits()``/``describe()``.

    Args:
        name: one of ``task_names()``.
        data_file: a local JSON/JSONL/CSV/Parquet file in the dataset's Hub
            schema, read instead of the Hub.
        seed: the *data* seed -- generation seed of the built-in word sorting,
            split shuffle of MMLU/GPQA and GPQA's option order (BBH splits are
            in file order and ignore it). Keep it fixed across runs whose
            results are compared; it is not the sampling seed.
        source: ``"builtin"`` (only ``word_sorting``, its default) or ``"hub"``
            (BBH for ``word_sorting``; the default of the others). Ignored
            with ``data_file``.
        strict: stop at the first bad row (``TaskDataError`` naming the row)
            instead of skipping it into ``Splits.skipped``.

    Raises:
        TaskDataError: unknown name/source, or (later) data that cannot be loaded.
    """
    if name not in _NAMES:
        raise TaskDataError(f"unknown task {name!r}; known: {', '.join(_NAMES)}")
    if source is not None and source not in _SOURCES:
        raise TaskDataError(f"source must be one of {', '.join(_SOURCES)}, got {source!r}")
    if source == "builtin" and name != "word_sorting":
        raise TaskDataError(f"task {name!r} has no built-in data; use source='hub' or data_file=")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskDataError(f"seed must be an int, got {seed!r}")
    data_file = str(data_file) if data_file is not None else None

    if name in ("word_sorting", "bbh_word_sorting"):
        from mtg_local.tasks.word_sorting import WordSortingTask

        if name == "word_sorting" and data_file is None and source in (None, "builtin"):
            return WordSortingTask.builtin(seed=seed)
        return WordSortingTask.load(data_file=data_file, strict=strict)
    if name == "mmlu_machine_learning":
        from mtg_local.tasks.mmlu import MMLUMachineLearningTask

        return MMLUMachineLearningTask.create(data_file=data_file, seed=seed, strict=strict)
    from mtg_local.tasks.gpqa import GPQADiamondTask

    return GPQADiamondTask.create(data_file=data_file, seed=seed, strict=strict)
