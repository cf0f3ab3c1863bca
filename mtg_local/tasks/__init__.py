"""Task registry: ``get_task("word_sorting")`` and friends."""

from __future__ import annotations

from mtg_local.tasks.base import Example, Splits, Task

__all__ = ["Example", "Splits", "Task", "get_task", "task_names"]


def task_names() -> list[str]:
    return ["word_sorting"]


def get_task(name: str, *, data_file: str | None = None, seed: int = 0) -> Task:
    """Builds a task by name (optionally from a local data file)."""
    from engines.errors import UserError

    if name == "word_sorting" and data_file is None:
        from mtg_local.tasks.word_sorting import WordSortingTask

        return WordSortingTask.builtin(seed=seed)
    raise UserError(f"unknown task {name!r}; known: {', '.join(task_names())}")
