"""Exception types of the task layer.

Data problems a user can fix (missing dataset, gated dataset without a token,
a data file in the wrong schema, a bad row under ``strict=True``) raise
``TaskDataError``; a task file or a registered task that is wrong raises
``TaskDefinitionError``, whose one-line message names the file and the key.
The CLI prints either message without a traceback and exits 2.
"""

from __future__ import annotations

from engines.errors import UserError


class TaskDataError(UserError):
    """A task's data cannot be loaded or a row of it is unusable (the message names which)."""


class TaskDefinitionError(TaskDataError):
    """A task definition is wrong: a missing or bad key, a field the data lacks, an empty split.

    The message reads ``task file PATH: key KEY: what is wrong`` (one line).
    """

    def __init__(self, where: str, key: str | None, problem: str) -> None:
        self.where, self.key, self.problem = where, key, problem
        text = f"{where}: key {key!r}: {problem}" if key else f"{where}: {problem}"
        super().__init__(" ".join(text.split("\n")))
