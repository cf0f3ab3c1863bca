"""Zero-shot chain of thought: one answer per (question, seed), no optimization.

The answer starts with the item's inference template (by default the paper's
"Let's break this down step by step. First, "), so zero-shot CoT is the inner
loop's step 0 alone: **one** engine call for all N x S items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from engines.base import Engine
from mtg_local.inner_loop import InnerItem, InnerLoopConfig, Trajectory, solution_optimization
from mtg_local.tasks.base import Task


def zero_shot_cot(
    task: Task,
    items: Sequence[InnerItem],
    *,
    engine: Engine,
    config: InnerLoopConfig,
    progress: bool = False,
) -> list[Trajectory]:
    """Answers every item once (one engine call); trajectories in item order.

    Args:
        task: formats questions, extracts and scores answers.
        items: (question, seed, template) items; their loss prompts are unused.
        engine: the forward engine.
        config: its forward settings (temperature, max_tokens, system_prompt)
            are used; steps and majority vote are ignored.
        progress: show a tqdm bar.

    Returns:
        One single-answer ``Trajectory`` per item.
    """
    # One phase has no barrier to remove: always one call (schedule "item" would only lose batch dedup).
    single = dataclasses.replace(config, steps=0, majority_vote=False, schedule="phase")
    return solution_optimization(task, items, forward_engine=engine, config=single, progress=progress)
