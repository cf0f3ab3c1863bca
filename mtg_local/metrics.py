"""Accuracy over seeds, its summary, and majority voting over a trajectory's answers.

The paper reports test accuracy averaged over 6 seeds; ``summarize`` gives
the mean, the sample standard deviation across seeds (0.0 for one seed) and
the per-seed values keyed by the seed as a string (JSON object keys).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol


class _Scored(Protocol):
    score: float

    @property
    def item(self) -> Any: ...


def accuracy_by_seed(trajectories: Iterable[_Scored]) -> dict[int, float]:
    """Mean score per seed, seeds in ascending order.

    Args:
        trajectories: objects with ``.score`` and ``.item.seed`` (``Trajectory``).

    Returns:
        ``{seed: accuracy in [0, 1]}``; empty if there are no trajectories.
    """
    scores: dict[int, list[float]] = defaultdict(list)
    for tr in trajectories:
        scores[int(tr.item.seed)].append(float(tr.score))
    return {seed: sum(v) / len(v) for seed, v in sorted(scores.items())}


def summarize(per_seed: Mapping[int, float] | Mapping[str, float]) -> dict[str, Any]:
    """Mean, sample std and count over seeds.

    Args:
        per_seed: accuracy per seed (as from ``accuracy_by_seed``).

    Returns:
        ``{"mean": float, "std": float, "per_seed": {"0": acc, ...}, "n": int}``;
        mean and std are 0.0 when ``per_seed`` is empty.
    """
    values = [float(v) for v in per_seed.values()]
    n = len(values)
    mean = sum(values) / n if n else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "per_seed": {str(k): float(v) for k, v in per_seed.items()}, "n": n}


def majority_vote(answers: Sequence[str | None], *, tie: str = "last", none_votes: bool = False) -> int | None:
    """Index of the answer chosen by majority vote over extracted answers.

    The most frequent answer wins. ``tie="last"``: a tie goes to the answer
    seen latest (the most optimized one) and the index is its latest
    occurrence; ``tie="first"``: to the answer seen first, at its first
    occurrence -- TextGrad's ``statistics.multimode(labels)[0]``. ``None``
    entries (nothing extractable) vote only with ``none_votes`` (TextGrad
    counts them); a winning ``None`` gives the index of an answer without one.

    Args:
        answers: extracted answers, in step order.
        tie: "last" or "first".
        none_votes: whether ``None`` is a label like any other.

    Returns:
        An index into ``answers``, or None if no entry may vote.
    """
    if tie not in ("first", "last"):
        raise ValueError(f"tie must be 'first' or 'last', got {tie!r}")
    voters = [(i, a) for i, a in enumerate(answers) if none_votes or a is not None]
    if not voters:
        return None
    counts = Counter(a for _, a in voters)
    seen: dict[str | None, int] = {}
    for i, a in voters:
        if tie == "last" or a not in seen:
            seen[a] = i
    if tie == "last":
        winner = max(counts, key=lambda a: (counts[a], seen[a]))
    else:
        winner = max(counts, key=lambda a: (counts[a], -seen[a]))
    return seen[winner]
