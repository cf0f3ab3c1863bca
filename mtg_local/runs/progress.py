"""Progress on stderr: tqdm bars on a terminal, plain lines everywhere else.

A bar is drawn only when progress is on and stderr is a terminal (tqdm's
``disable=None``), so a SLURM log or a pipe gets no carriage-return noise; the
lines written with ``note`` (one per outer step of ``mtg train``) appear in
both cases, above any bars on a terminal. Bars of an inner loop are transient
(``leave=False``) and sit below the outer-step bar, so the two never fight.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(*, total: int, desc: str, unit: str, enabled: bool, leave: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr, drawn only when ``enabled`` and stderr is a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                disable=None if enabled else True, dynamic_ncols=True)


def note(line: str, *, enabled: bool) -> None:
    """Writes ``line`` to stderr (above any bar) when ``enabled``."""
    if enabled:
        tqdm.write(line, file=sys.stderr)
