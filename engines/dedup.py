"""Identical requests inside one batch are generated once and fanned out.

Two requests of a batch are identical when everything that decides their
output is equal: rendered content (messages or prompt, response prefix) and
sampling (temperature, top_p, max_tokens, stop, seed). The id is not part of
it: each caller keeps its own.

At temperature 0 the seed is dropped from the key. A greedy request's output
is the argmax at every step, so it does not depend on the seed; keeping the
seed would make e.g. the greedy loss/backward/update requests of two seeds of
one question (which carry different derived seeds but, once their answers
agree, the same content) cost twice. The persistent cache (``engines.cache``)
keeps the seed in its key: its keys are stored on disk and must stay stable.

The backend receives only the first occurrence of each key, in first-seen
order; every request gets a result with its own id, in input order. Copies
are marked ``deduplicated=True`` and cost no backend work: ``Usage`` counts
them in ``deduplicated`` and not in prompt/completion tokens.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # engines.base imports this module
    from engines.base import GenRequest, GenResult


def dedup_key(request: GenRequest) -> str:
    """What decides ``request``'s output (no id; no seed when greedy), as a canonical string."""
    d = request.key_dict()
    if request.sampling.temperature == 0:
        d["sampling"] = {k: v for k, v in d["sampling"].items() if k != "seed"}
    return json.dumps(d, sort_keys=True)


def collapse(requests: Sequence[GenRequest]) -> tuple[list[GenRequest], list[int]]:
    """The distinct requests of a batch and where each input request maps to.

    Args:
        requests: the batch.

    Returns:
        ``(unique, index)``: ``unique`` holds the first occurrence of every
        key in first-seen order; ``requests[i]`` is answered by
        ``unique[index[i]]``.
    """
    first: dict[str, int] = {}
    unique: list[GenRequest] = []
    index: list[int] = []
    for r in requests:
        k = dedup_key(r)
        pos = first.get(k)
        if pos is None:
            pos = first[k] = len(unique)
            unique.append(r)
        index.append(pos)
    return unique, index


def fan_out(requests: Sequence[GenRequest], results: Sequence[GenResult], index: Sequence[int]) -> list[GenResult]:
    """One result per request, in input order, each with its request's id.

    Args:
        requests: the batch as the caller sent it.
        results: the backend's results for ``collapse``'s ``unique`` list.
        index: ``collapse``'s index.

    Returns:
        The first request of each key gets the backend's result unchanged;
        later ones a copy with their own id and ``deduplicated=True``.
    """
    out: list[GenResult] = []
    answered: set[int] = set()
    for req, pos in zip(requests, index):
        res = results[pos]
        if pos not in answered:
            answered.add(pos)
            out.append(res)
        else:
            out.append(dataclasses.replace(res, id=req.id, deduplicated=True))
    return out
