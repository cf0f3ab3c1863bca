"""The order of grid cells that wait for other cells (a transfer cell waits for the run whose prompts it applies).

Kept apart from the runner: ``mtg slurm submit`` orders its array jobs by the
same rule without running anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engines.errors import UserError


def dependency_order(after: Mapping[str, Sequence[str]], *, what: str = "cell") -> list[str]:
    """The names of ``after`` so that every name comes after the names it waits for.

    Stable: a name never moves before one that precedes it in ``after`` unless it
    must, so a grid without dependencies keeps its file order.

    Args:
        after: name -> the names it waits for (each must be a key).
        what: the word for a name in error messages.

    Raises:
        UserError: a name waits for a name that is not a key, or names wait for
            each other in a cycle (the message names the cycle).
    """
    for name, deps in after.items():
        for d in deps:
            if d not in after:
                raise UserError(f"{what} {name} waits for {d}, which is not a {what} of the grid")
            if d == name:
                raise UserError(f"{what} {name} waits for itself")
    done: set[str] = set()
    out: list[str] = []
    left = list(after)
    while left:
        ready = [n for n in left if all(d in done for d in after[n])]
        if not ready:
            raise UserError(f"{what}s wait for each other in a cycle: {' -> '.join(_cycle(after, set(left)))}")
        # One at a time, in input order: the earliest ready name goes first.
        first = ready[0]
        out.append(first)
        done.add(first)
        left.remove(first)
    return out


def _cycle(after: Mapping[str, Sequence[str]], left: set[str]) -> list[str]:
    """One cycle among ``left`` (every name there waits for another one there), first name repeated."""
    path: list[str] = []
    name = min(left)
    while name not in path:
        path.append(name)
        name = next(d for d in after[name] if d in left)
    return [*path[path.index(name):], name]
