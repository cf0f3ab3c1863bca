"""TextGrad prompt optimization, batched: the forward system prompt is the trained variable.

TextGrad's prompt-optimization recipe (Yuksekgonul et al., BBH example):
minibatches of 3 training questions; the model answers each under the current
system prompt; each answer is evaluated against the ground truth; the losses
are summed and back-propagated to the system prompt; one TGD step rewrites it;
the new prompt is validated and **reverted if validation got worse**.

Per minibatch this module makes exactly these engine calls, whatever the
minibatch size or the number of validation questions and seeds:

=============  ======================================  ==========
phase          requests                                engine
=============  ======================================  ==========
forward        B questions (one train seed per step)   forward
loss           B evaluations (question, answer, gold)  optimizer
backward       1 (all B evaluations -> feedback)       optimizer
TGD step       1 (feedback -> new system prompt)       optimizer
validation     N_val x S_val (only if the step parsed)  forward
=============  ======================================  ==========

plus one validation call for the initial prompt. The forward and validation
passes are ``zero_shot_cot`` with ``InnerLoopConfig(system_prompt=...)``
(the inference template as response prefix, like every other method).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

from engines.base import Engine, GenRequest, SamplingConfig
from mtg_local.evaluation import evaluate, make_items
from mtg_local.inner_loop import DEFAULT_TEMPLATE, InnerLoopConfig, derive_seed
from mtg_local.prompts import baseline_prompts as P
from mtg_local.tasks.base import Example, Task
from mtg_local.textgrad import Gradient, TextualGradientDescent, Variable, generate_in_prefix_order
from mtg_local.zero_shot_cot import zero_shot_cot


@dataclasses.dataclass(frozen=True)
class PromptOptConfig:
    """Settings of TextGrad prompt optimization (TextGrad's defaults where it has them).

    Attributes:
        batch_size: training questions per minibatch (TextGrad: 3).
        epochs: passes over the training split (TextGrad: 3).
        max_steps: stop after this many minibatches (None: all epochs).
        initial_system_prompt: the starting variable.
        template: inference template (response prefix) of every answer.
        temperature / max_tokens: forward (answer) sampling.
        optimizer_temperature / optimizer_max_tokens: loss, backward, step.
        val_seeds: seeds of the validation passes.
        seed: shuffling and training-forward seed.
        prefill_update_tag: prefill ``<IMPROVED_VARIABLE>`` in the step where the engine can.
    """

    batch_size: int = 3
    epochs: int = 3
    max_steps: int | None = None
    initial_system_prompt: str = P.PROMPT_OPT_INITIAL_SYSTEM_PROMPT
    template: str = DEFAULT_TEMPLATE
    temperature: float = 0.7
    max_tokens: int = 512
    optimizer_temperature: float = 0.0
    optimizer_max_tokens: int = 512
    val_seeds: tuple[int, ...] = (0,)
    seed: int = 0
    prefill_update_tag: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "val_seeds", tuple(int(s) for s in self.val_seeds))
        for name in ("batch_size", "epochs", "max_tokens", "optimizer_max_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or self.max_steps < 1):
            raise ValueError(f"max_steps must be None or an integer >= 1, got {self.max_steps!r}")
        if not self.initial_system_prompt.strip():
            raise ValueError("initial_system_prompt must not be empty")
        if not self.val_seeds or len(set(self.val_seeds)) != len(self.val_seeds) or min(self.val_seeds) < 0:
            raise ValueError(f"val_seeds must be distinct integers >= 0, got {list(self.val_seeds)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        InnerLoopConfig(temperature=self.temperature, optimizer_temperature=self.optimizer_temperature)

    def forward_config(self, system_prompt: str) -> InnerLoopConfig:
        """The zero-shot forward settings under ``system_prompt``."""
        return InnerLoopConfig(
            steps=0, temperature=self.temperature, max_tokens=self.max_tokens, system_prompt=system_prompt
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["val_seeds"] = list(self.val_seeds)
        return d


@dataclasses.dataclass
class PromptOptResult:
    """The learned system prompt and how it got there.

    Attributes:
        system_prompt: the final (best validated) system prompt.
        history: one entry per step (step 0: the initial prompt), with
            ``step, epoch, candidate, val_accuracy, accepted`` and details.
        val_accuracy: validation accuracy of ``system_prompt``.
    """

    system_prompt: str
    history: list[dict[str, Any]]
    val_accuracy: float


def validate(
    task: Task, val: Sequence[Example], system_prompt: str, *, engine: Engine, config: PromptOptConfig
) -> float:
    """Mean validation accuracy of ``system_prompt`` over ``config.val_seeds`` (one engine call)."""
    outcome = evaluate(
        task, val, method="zero_shot_cot", seeds=config.val_seeds, forward_engine=engine,
        config=config.forward_config(system_prompt), template=config.template, group="val",
    )
    return float(outcome.accuracy["mean"])


def minibatches(train: Sequence[Example], config: PromptOptConfig) -> list[tuple[int, list[Example]]]:
    """(epoch, minibatch) pairs: each epoch a fresh shuffle (seeded), cut into ``batch_size`` pieces."""
    out = []
    for epoch in range(config.epochs):
        order = list(train)
        random.Random(f"{config.seed}:{epoch}").shuffle(order)
        out.extend((epoch, order[i : i + config.batch_size]) for i in range(0, len(order), config.batch_size))
    return out[: config.max_steps] if config.max_steps is not None else out


def optimize_system_prompt(
    task: Task,
    train: Sequence[Example],
    val: Sequence[Example],
    *,
    forward_engine: Engine,
    optimizer_engine: Engine | None = None,
    config: PromptOptConfig,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> PromptOptResult:
    """Runs TextGrad prompt optimization; see the module docstring for the calls per step.

    Args:
        task: formats, extracts and scores.
        train: questions the minibatches are drawn from.
        val: questions every candidate prompt is validated on.
        forward_engine: answers (forward and validation).
        optimizer_engine: loss, backward and step (default: the forward engine).
        config: settings.
        on_step: called with each history entry as it is made (logging).

    Returns:
        The best validated prompt and the history.
    """
    if not train or not val:
        raise ValueError("prompt optimization needs training and validation questions")
    opt = optimizer_engine or forward_engine
    current = config.initial_system_prompt
    current_val = validate(task, val, current, engine=forward_engine, config=config)
    history = [{"step": 0, "epoch": None, "candidate": current, "val_accuracy": current_val, "accepted": True}]
    if on_step:
        on_step(history[-1])
    opt_sampling = SamplingConfig(temperature=config.optimizer_temperature, max_tokens=config.optimizer_max_tokens)
    for step, (epoch, batch) in enumerate(minibatches(train, config), start=1):
        entry = _one_step(task, batch, current, step=step, forward_engine=forward_engine, optimizer_engine=opt,
                          config=config, opt_sampling=opt_sampling)
        entry["epoch"] = epoch
        candidate = entry["candidate"]
        if candidate is not None:
            val_acc = validate(task, val, candidate, engine=forward_engine, config=config)
            entry["val_accuracy"] = val_acc
            # TextGrad's rule: keep the new prompt unless validation got worse.
            entry["accepted"] = val_acc >= current_val
            if entry["accepted"]:
                current, current_val = candidate, val_acc
        history.append(entry)
        if on_step:
            on_step(entry)
    return PromptOptResult(current, history, current_val)


def _one_step(
    task: Task,
    batch: Sequence[Example],
    system_prompt: str,
    *,
    step: int,
    forward_engine: Engine,
    optimizer_engine: Engine,
    config: PromptOptConfig,
    opt_sampling: SamplingConfig,
) -> dict[str, Any]:
    """Forward, loss, backward and TGD step for one minibatch (4 engine calls at most)."""
    entry: dict[str, Any] = {"step": step, "candidate": None, "val_accuracy": None, "accepted": False}
    seed = derive_seed(config.seed, "prompt_opt_forward", step)
    items = make_items(batch, [seed], loss_prompt="", template=config.template, group=f"train-{step}")
    trajs = zero_shot_cot(task, items, engine=forward_engine, config=config.forward_config(system_prompt))
    ok = [t for t in trajs if not t.errors]
    entry["minibatch_accuracy"] = sum(t.score for t in trajs) / len(trajs)
    if not ok:
        entry["error"] = "every forward request of the minibatch failed"
        return entry

    # Loss: one evaluation per answer, against the ground truth (one call).
    verdicts = ["correct" if t.score else "wrong" for t in ok]
    loss_requests = [
        GenRequest.chat(
            P.PROMPT_OPT_LOSS_TEMPLATE.format(
                question=task.format_question(t.item.example), answer=t.final_answer,
                gold=t.item.example.answer, verdict=v,
            ),
            system=P.PROMPT_OPT_LOSS_SYSTEM,
            sampling=opt_sampling.replace(seed=derive_seed(seed, "prompt_opt_loss", i)),
            id=f"po-loss-{step}-{i}",
        )
        for i, (t, v) in enumerate(zip(ok, verdicts))
    ]
    evaluations = generate_in_prefix_order(optimizer_engine, loss_requests)
    examples = [
        P.PROMPT_OPT_EXAMPLE_TEMPLATE.format(
            index=i + 1, question=task.format_question(t.item.example), answer=t.final_answer,
            evaluation=r.text if r.ok else f"(evaluation failed: {r.error})", verdict=v,
        )
        for i, (t, v, r) in enumerate(zip(ok, verdicts, evaluations))
    ]

    # Backward: the summed loss -> one feedback on the system prompt (one call).
    backward_request = GenRequest.chat(
        P.PROMPT_OPT_BACKWARD_TEMPLATE.format(
            role=P.PROMPT_OPT_SYSTEM_ROLE, variable=system_prompt,
            examples=P.PROMPT_OPT_EXAMPLE_SEPARATOR.join(examples),
        ),
        system=P.PROMPT_OPT_BACKWARD_SYSTEM,
        sampling=opt_sampling.replace(seed=derive_seed(seed, "prompt_opt_backward", 0)),
        id=f"po-bwd-{step}",
    )
    (feedback,) = optimizer_engine.generate([backward_request])
    if not feedback.ok:
        entry["error"] = f"backward engine error: {feedback.error}"
        return entry
    entry["gradient"] = feedback.text

    # TGD step: feedback -> new system prompt (one call).
    variable = Variable(system_prompt, P.PROMPT_OPT_SYSTEM_ROLE)
    variable.gradients.append(Gradient(feedback.text, P.PROMPT_OPT_CONTEXT))
    tgd = TextualGradientDescent(
        [variable], engine=optimizer_engine, constraints=list(P.PROMPT_OPT_CONSTRAINTS),
        contexts=[P.PROMPT_OPT_CONTEXT], prefill_tag=config.prefill_update_tag,
    )
    (outcome,) = tgd.step(samplings=opt_sampling.replace(seed=derive_seed(seed, "prompt_opt_step", 0)),
                          ids=[f"po-step-{step}"])
    if not outcome.updated:
        entry["error"] = outcome.error
        return entry
    entry["candidate"] = variable.value
    return entry
