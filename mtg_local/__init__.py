"""mtg-local: metaTextGrad on local open-weight models.

Batched TextGrad-style inner loops, meta-learned loss prompts and inference
templates, the paper's tasks and baselines, runs, reports and the ``mtg`` CLI.
Generation backends live in the separate ``engines`` package.

The Python API (docs/tasks.md, "Your own task")::

    from mtg_local import Task, Example, TaskDefinition, register_task, evaluate, train, baseline

``evaluate``, ``train`` and ``baseline`` take the settings of ``mtg eval``, ``mtg train`` and
``mtg baseline`` and return the results dict (``mtg_local.api``). The names are imported on
first use, so ``import mtg_local`` stays light.
"""

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Task": "mtg_local.tasks.base",
    "Example": "mtg_local.tasks.base",
    "Splits": "mtg_local.tasks.base",
    "ScoreResult": "mtg_local.tasks.base",
    "TaskDefinition": "mtg_local.tasks.task_file",
    "register_task": "mtg_local.tasks.registry",
    "get_task": "mtg_local.tasks",
    "evaluate": "mtg_local.api",
    "train": "mtg_local.api",
    "baseline": "mtg_local.api",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mtg_local' has no attribute {name!r}")
