"""Batched TextGrad solution optimization: the inner loop of metaTextGrad.

CONTRACT (fixed by the lead; the outer-loop code in mtg_local/meta/ is written
against exactly these names -- implement the bodies, do not rename fields or
parameters; adding optional fields/params is fine). The results.json schema is
in docs/results_schema.md.

Each phase (initial answer, loss, backward, update) for ALL items is ONE
engine.generate call: 1 + 3*T calls for any number of items, including items
of different groups / loss prompts / templates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from engines.base import Engine
from mtg_local.tasks.base import Example, Task

#: The paper's initial inference template y_T (section 2.2).
DEFAULT_TEMPLATE = "Let's break this down step by step. First, "


@dataclasses.dataclass(frozen=True)
class InnerLoopConfig:
    """Settings of the inner loop (validated in __post_init__)."""

    steps: int = 2  # T, >= 0
    temperature: float = 0.7  # forward (initial answer) sampling temperature
    optimizer_temperature: float = 0.0  # loss / backward / update phases
    max_tokens: int = 512  # forward answer
    optimizer_max_tokens: int = 512
    system_prompt: str | None = None  # forward system prompt (trained by TextGrad prompt optimization)
    freeze_when: str = "never"  # early freezing policy
    majority_vote: bool = False


@dataclasses.dataclass(frozen=True)
class InnerItem:
    """One (question, seed) pair with the loss prompt and template it is optimized with."""

    example: Example
    seed: int
    loss_prompt: str  # theta_L used by the evaluation phase
    template: str  # y_T: response prefix of the initial answer
    group: str = ""  # candidate / variant tag, so several candidates share one batch


@dataclasses.dataclass
class Trajectory:
    """Everything the inner loop produced for one item (what the outer loops feed on)."""

    item: InnerItem
    answers: list[str]  # full responses, step 0..T (answers[0] starts with the template)
    evaluations: list[str]  # loss outputs, one per step 1..T
    gradients: list[str]  # textual gradients (feedback on the answer), one per step
    update_errors: list[str | None]  # None, or why the update was rejected (previous kept)
    errors: list[str]  # engine errors for this item
    final_answer: str  # answers[-1], or the majority-vote answer
    extracted: str | None  # task.extract_answer(final_answer)
    score: float  # task.score(final_answer, example): 0.0 or 1.0

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


def solution_optimization(
    task: Task,
    items: Sequence[InnerItem],
    *,
    forward_engine: Engine,
    optimizer_engine: Engine | None = None,
    config: InnerLoopConfig,
    progress: bool = False,
) -> list[Trajectory]:
    """Batched TextGrad solution optimization; trajectories in item order.

    Exactly 1 + 3*T engine.generate calls for any number of items.
    """
    raise NotImplementedError


# Also to provide (same contract):
#   mtg_local/zero_shot_cot.py: zero_shot_cot(task, items, *, engine, config, progress=False) -> list[Trajectory]  (1 call)
#   mtg_local/metrics.py: accuracy_by_seed(trajectories) -> dict[int, float];
#                         summarize(per_seed) -> {"mean", "std", "per_seed", "n"}
# Seeds: item.seed goes into the forward request's SamplingConfig.seed; optimizer
# requests get a seed derived from it.
