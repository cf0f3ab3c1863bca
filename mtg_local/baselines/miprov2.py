"""MIPROv2 (Opsahl-Ong et al. / DSPy) through the DSPy library, on our engines.

``optimize_miprov2`` runs ``dspy.teleprompt.MIPROv2`` (unchanged DSPy code:
bootstrapped and labeled few-shot demos, grounded instruction proposals,
Bayesian search over (instruction, demo set) with Optuna) on the task's
chain-of-thought program, with the train split for bootstrapping and the
validation split for scoring candidates, and the task's own scoring as
metric. DSPy's threaded evaluations reach the engine as coalesced batches.
Needs ``optuna`` (installed with the ``dspy`` extra).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from mtg_local.baselines.dspy_program import (
    DSPyOptimized,
    DSPyRunConfig,
    check_temperature,
    demos_of,
    dspy_examples,
    dspy_session,
    instruction_of,
    make_metric,
    make_program,
)

from dspy.teleprompt import MIPROv2  # noqa: E402  (dspy_program set the offline environment first)

from engines.base import Engine  # noqa: E402
from mtg_local.tasks.base import Example, Task  # noqa: E402

AUTO_MODES = ("light", "medium", "heavy")


@dataclasses.dataclass(frozen=True)
class MiproConfig(DSPyRunConfig):
    """MIPROv2's knobs (DSPy's defaults) plus the shared DSPy run settings.

    Attributes:
        auto: "light", "medium", "heavy" (DSPy picks candidates/trials/val
            size), or None to set ``num_candidates`` and ``num_trials`` yourself.
        max_bootstrapped_demos: demos bootstrapped from the program's own
            successful traces (0 and 0: instruction-only optimization).
        max_labeled_demos: demos taken from labeled training examples.
        num_candidates: instruction / demo-set candidates (only with auto=None).
        num_trials: Bayesian-search trials (only with auto=None).
        minibatch_size: validation minibatch per trial (capped at the val size).
        init_temperature: temperature of instruction proposals.
        data_aware_proposer / program_aware_proposer / tip_aware_proposer /
            fewshot_aware_proposer: what the instruction proposer is shown.
    """

    auto: str | None = "light"
    max_bootstrapped_demos: int = 4
    max_labeled_demos: int = 4
    num_candidates: int | None = None
    num_trials: int | None = None
    minibatch_size: int = 35
    init_temperature: float = 1.0
    data_aware_proposer: bool = True
    program_aware_proposer: bool = True
    tip_aware_proposer: bool = True
    fewshot_aware_proposer: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.auto is not None and self.auto not in AUTO_MODES:
            raise ValueError(f"auto must be one of {AUTO_MODES} or None, got {self.auto!r}")
        if self.auto is None and (self.num_candidates is None or self.num_trials is None):
            raise ValueError("with auto=None, num_candidates and num_trials must both be set")
        if self.auto is not None and (self.num_candidates is not None or self.num_trials is not None):
            raise ValueError(f"num_candidates/num_trials are set by auto={self.auto!r}; use auto=None to set them")
        for name in ("max_bootstrapped_demos", "max_labeled_demos"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("num_candidates", "num_trials"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {v!r}")
        if isinstance(self.minibatch_size, bool) or not isinstance(self.minibatch_size, int) or self.minibatch_size < 1:
            raise ValueError(f"minibatch_size must be an integer >= 1, got {self.minibatch_size!r}")
        check_temperature("init_temperature", self.init_temperature)


def optimize_miprov2(
    task: Task,
    train: Sequence[Example],
    val: Sequence[Example],
    *,
    engine: Engine,
    prompt_engine: Engine | None = None,
    config: MiproConfig,
) -> DSPyOptimized:
    """Runs MIPROv2 (bootstrap on ``train``, select on ``val``) and returns the optimized program.

    Args:
        task: the task (question format, scoring).
        train: examples to bootstrap and label demos from (and to show the proposer).
        val: examples candidate programs are scored on.
        engine: the task model's engine.
        prompt_engine: the engine proposing instructions (default: ``engine``).
        config: MIPROv2 and run settings.
    """
    if not train or not val:
        raise ValueError("MIPROv2 needs training and validation examples")
    t0 = time.perf_counter()
    metric = make_metric(task, [*train, *val])
    with dspy_session(engine, prompt_engine, config) as session:
        optimizer = MIPROv2(
            metric=metric,
            prompt_model=session.prompt_lm,
            task_model=session.task_lm,
            max_bootstrapped_demos=config.max_bootstrapped_demos,
            max_labeled_demos=config.max_labeled_demos,
            auto=config.auto,
            num_candidates=config.num_candidates,
            num_threads=config.num_threads,
            max_errors=config.error_budget,
            seed=config.seed,
            init_temperature=config.init_temperature,
            verbose=False,
            track_stats=True,
        )
        program = optimizer.compile(
            make_program(task),
            trainset=dspy_examples(task, train),
            valset=dspy_examples(task, val),
            num_trials=config.num_trials,
            minibatch_size=min(config.minibatch_size, len(val)),
            data_aware_proposer=config.data_aware_proposer,
            program_aware_proposer=config.program_aware_proposer,
            tip_aware_proposer=config.tip_aware_proposer,
            fewshot_aware_proposer=config.fewshot_aware_proposer,
        )
    trials = [
        {"trial": int(k), "minibatch_score": t.get("mb_score"), "full_eval_score": t.get("full_eval_score")}
        for k, t in sorted(getattr(program, "trial_logs", {}).items())
        if isinstance(t, dict)
    ]
    return DSPyOptimized(
        program=program,
        instruction=instruction_of(program),
        demos=demos_of(program),
        wall_s=time.perf_counter() - t0,
        coalescer=session.coalescer_stats(),
        details={"best_score": getattr(program, "score", None), "trials": trials},
    )
