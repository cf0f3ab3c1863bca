"""COPRO (Opsahl-Ong et al. / DSPy) through the DSPy library, on our engines.

``optimize_copro`` builds the task's chain-of-thought program, runs
``dspy.teleprompt.COPRO`` (unchanged DSPy code) on the train split with the
task's own scoring as metric, and returns the optimized program and its
instruction. COPRO evaluates candidate instructions on the train set (it has
no separate validation set). Every DSPy LM call goes through a request
coalescer, so COPRO's threaded evaluations reach the engine as batches.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from mtg_local.baselines.dspy_program import (
    DSPyOptimized,
    DSPyRunConfig,
    check_temperature,
    dspy_examples,
    dspy_session,
    demos_of,
    instruction_of,
    make_metric,
    make_program,
)

from dspy.teleprompt import COPRO  # noqa: E402  (dspy_program set the offline environment first)

from engines.base import Engine  # noqa: E402
from mtg_local.tasks.base import Example, Task  # noqa: E402


@dataclasses.dataclass(frozen=True)
class CoproConfig(DSPyRunConfig):
    """COPRO's knobs (DSPy's defaults) plus the shared DSPy run settings.

    Attributes:
        breadth: new instruction candidates per round (> 1).
        depth: rounds of refinement (>= 1).
        init_temperature: temperature of candidate generation.
    """

    breadth: int = 10
    depth: int = 3
    init_temperature: float = 1.4

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.breadth, bool) or not isinstance(self.breadth, int) or self.breadth < 2:
            raise ValueError(f"breadth must be an integer >= 2 (COPRO needs > 1), got {self.breadth!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {self.depth!r}")
        check_temperature("init_temperature", self.init_temperature)


def optimize_copro(
    task: Task,
    train: Sequence[Example],
    *,
    engine: Engine,
    prompt_engine: Engine | None = None,
    config: CoproConfig,
) -> DSPyOptimized:
    """Runs COPRO on ``train`` and returns the optimized program.

    Args:
        task: the task (question format, scoring).
        train: the examples COPRO evaluates candidate instructions on.
        engine: the task model's engine.
        prompt_engine: the engine proposing instructions (default: ``engine``).
        config: COPRO and run settings.
    """
    if not train:
        raise ValueError("COPRO needs at least one training example")
    t0 = time.perf_counter()
    metric = make_metric(task, train)
    with dspy_session(engine, prompt_engine, config) as session:
        optimizer = COPRO(
            prompt_model=session.prompt_lm,
            metric=metric,
            breadth=config.breadth,
            depth=config.depth,
            init_temperature=config.init_temperature,
        )
        # COPRO passes these to Evaluate() and to each evaluate(...) call; the error
        # budget comes from dspy.settings (set by dspy_session).
        eval_kwargs = {"num_threads": config.num_threads, "display_progress": False, "display_table": 0}
        program = optimizer.compile(make_program(task), trainset=dspy_examples(task, train), eval_kwargs=eval_kwargs)
    # DSPy's Evaluate scores in percent; candidates are scored on the train set.
    candidates = [
        {"depth": c.get("depth"), "instruction": c.get("instruction"), "prefix": c.get("prefix"),
         "train_accuracy": (c.get("score") or 0.0) / 100.0}
        for c in getattr(program, "candidate_programs", [])
    ]
    return DSPyOptimized(
        program=program,
        instruction=instruction_of(program),
        demos=demos_of(program),
        wall_s=time.perf_counter() - t0,
        coalescer=session.coalescer_stats(),
        details={"candidates": candidates, "metric_calls": getattr(program, "total_calls", None)},
    )
