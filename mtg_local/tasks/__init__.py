"""Tasks: ``get_task("word_sorting")``, ``get_task("path/to/task.yaml")`` and friends.

Every task comes from the registry (``mtg_local.tasks.registry``): the built-ins are task
files in ``mtg_local/tasks/builtin/`` (the paper's MMLU and GPQA are plain task files; word
sorting's needs Python), the user's are task files named by path, tasks registered in the
process (``register_task``) or by a package's ``mtg_local.tasks`` entry points.

==========================  ==================================================
built-in                    data
==========================  ==================================================
``word_sorting``            BBH ``lukaemon/bbh`` / ``word_sorting`` / ``test``
                            (paper task; ``bbh_word_sorting`` is an alias)
``mmlu_machine_learning``   ``cais/mmlu`` / ``machine_learning`` (paper task)
``gpqa_diamond``            ``Idavidrein/gpqa`` / ``gpqa_diamond``, gated (paper task)
``synthetic_word_sorting``  generated offline from a seed (not a paper task)
``arithmetic``              generated offline from a seed (not a paper task;
                            ``mtg_local.tasks.arithmetic``)
==========================  ==================================================

With ``data_file=PATH`` a task reads a local file (for the paper's tasks: in the
dataset's Hub schema) through the same ``datasets`` loader. ``scoring`` picks the answer
rule: "reference" (TextGrad's, the default) or "lenient"
(``mtg_local.tasks.answer_parsing``); the task records it in ``describe()``.
"""

from __future__ import annotations

from collections.abc import Iterable

from mtg_local.tasks.base import SCORINGS, Example, ScoreResult, Splits, Task
from mtg_local.tasks.errors import TaskDataError, TaskDefinitionError
from mtg_local.tasks.registry import REGISTRY, register_task
from mtg_local.tasks.task_file import TaskDefinition, is_task_file

__all__ = ["SCORINGS", "Example", "ScoreResult", "Splits", "Task", "TaskDataError", "TaskDefinition",
           "TaskDefinitionError", "check_task_files", "get_task", "is_task_file", "normalize_task_spec", "register_task",
           "resolve_task_name", "task_names"]

_SOURCES = ("builtin", "hub")


def task_names() -> list[str]:
    """The names ``get_task`` accepts (besides task file paths)."""
    return REGISTRY.names()


def resolve_task_name(name: str) -> str:
    """The task a name resolves to (``bbh_word_sorting`` -> ``word_sorting``); other names unchanged."""
    return REGISTRY.resolve_name(name)


def normalize_task_spec(spec: str) -> str:
    """A ``--task`` value with every task file made an absolute path (runs resume and SLURM jobs start
    elsewhere); names unchanged. Several tasks are joined by commas.

    Raises:
        TaskDefinitionError: a task file does not exist.
    """
    from pathlib import Path

    parts = []
    for part in str(spec).split(","):
        part = part.strip()
        if part and is_task_file(part):
            p = Path(part).expanduser().resolve()
            if not p.is_file():
                raise TaskDefinitionError(f"task file {p}", None, "no such file")
            part = str(p)
        parts.append(part)
    return ",".join(parts)


def check_task_files(pairs: Iterable[tuple[str, str | None]]) -> None:
    """Loads the splits of every task file among ``(task, data_file)`` pairs (a grid's tasks), so a
    wrong key, a field the data lacks or an empty split stops a grid before any engine starts
    or job is submitted. Registered names are not loaded (a Hub download can be slow).

    Raises:
        TaskDefinitionError / TaskDataError: the first task file that is wrong.
    """
    for spec, data_file in sorted(set(pairs), key=str):
        if is_task_file(spec):
            get_task(spec, data_file=data_file).splits()


def get_task(
    name: str,
    *,
    data_file: str | None = None,
    seed: int = 0,
    source: str | None = None,
    strict: bool = False,
    scoring: str = "reference",
) -> Task:
    """Builds a task by name or task file; data is loaded on the first ``splits()``/``describe()``.

    Args:
        name: one of ``task_names()`` (``bbh_word_sorting`` resolves to ``word_sorting``),
            or a task file (``.yaml``/``.yml``, docs/tasks.md "Your own task").
        data_file: a local JSON/JSONL/CSV/Parquet file read instead of the task's
            data (the paper's tasks: in the dataset's Hub schema). Not for generated tasks.
        seed: the *data* seed -- generation seed of the generated tasks,
            seeded split shuffle (MMLU, GPQA, task files without ``splits``) and option
            shuffling (GPQA). Keep it fixed across runs whose results are compared;
            it is not the sampling seed.
        source: ``"builtin"`` (generated tasks' only source) or ``"hub"`` (the
            source of the others). Ignored with ``data_file``.
        strict: stop at the first bad row (``TaskDataError`` naming the row)
            instead of skipping it into ``Splits.skipped``.
        scoring: "reference" (TextGrad's first ``Answer:`` rule) or "lenient".

    Raises:
        TaskDataError: unknown name/source, or (later) data that cannot be loaded.
        TaskDefinitionError: a task file is wrong (the message names the file and the key).
    """
    if source is not None and source not in _SOURCES:
        raise TaskDataError(f"source must be one of {', '.join(_SOURCES)}, got {source!r}")
    if scoring not in SCORINGS:
        raise TaskDataError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskDataError(f"seed must be an int, got {seed!r}")
    if not is_task_file(name):
        entry = REGISTRY.lookup(name)
        if source == "builtin" and not entry.generated:
            generated = ", ".join(repr(n) for n, s in REGISTRY.builtins().items() if s.generated)
            raise TaskDataError(
                f"task {entry.name!r} has no built-in data; use source='hub' or data_file= "
                f"(the generated offline sets are {generated})"
            )
        if entry.generated and (source == "hub" or data_file is not None):
            hint = "; use 'word_sorting' for BBH from the Hub or a file" if entry.name == "synthetic_word_sorting" else ""
            raise TaskDataError(f"task {entry.name!r} is generated offline and reads no data{hint}")
    from mtg_local.tasks.registry import build_task

    task = build_task(str(name), data_file=str(data_file) if data_file is not None else None, seed=seed,
                      strict=strict)
    task.scoring = scoring
    return task
