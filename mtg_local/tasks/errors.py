"""Exception types of the task layer.

Data problems a user can fix (missing dataset, gated dataset without a token,
a data file in the wrong schema, a bad row under ``strict=True``) raise
``TaskDataError``; the CLI prints its message without a traceback.
"""

from __future__ import annotations

from engines.errors import UserError


class TaskDataError(UserError):
    """A task's data cannot be loaded or a row of it is unusable (the message names which)."""
