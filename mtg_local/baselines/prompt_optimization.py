"""TextGrad prompt optimization as TextGrad runs it, batched: the forward system prompt is trained.

The loop of TextGrad's ``evaluation/prompt_optimization.py`` (with
``--run_validation``): 3 epochs over the training split, each a fresh shuffle
(TextGrad's ``DataLoader``: numpy's ``shuffle`` of the same index array, seeded)
cut into minibatches of 3, stopping after the 4th minibatch of an epoch -- 12
steps. A step, for every question of the minibatch: the model answers under the
current system prompt (``tg.BlackboxLLM``), a loss scores the answer; the losses
are summed (``tg.sum``, which passes no feedback and calls nothing) and
back-propagated: per question one call through the loss to the answer and one
through the forward call to the system prompt; then **one** TGD step sees all B
feedbacks (no constraint), and ``run_validation_revert`` keeps the new prompt
unless validation accuracy got worse.

Every message is built by the installed ``textgrad`` package's own code from
its own graph objects (``mtg_local.baselines.prompt_opt_requests``), so the
requests are TextGrad's requests (tested request by request against TextGrad's
loop in ``tests/test_prompt_opt_identity.py``); here every phase for all
questions of a minibatch is one engine call:

==================  ===========================================  ==========
phase               requests                                     engine
==================  ===========================================  ==========
forward             B questions (one train seed per step)        forward
loss backward       B (string-function backward, to the answer)  optimizer
prompt backward     B (LLM backward, to the system prompt)       optimizer
TGD step            1 (all B feedbacks)                          optimizer
validation          N_val x S_val (only if the step parsed)      forward
==================  ===========================================  ==========

plus one validation call for the initial prompt: 5 calls per step, 12 steps.

**The loss** is TextGrad's ``StringBasedFunction`` over our task's own scoring
(``task.score``, the rule the results table is scored with), the loss TextGrad
uses where a task has an exact answer rule (object counting, GSM8K); its
backward is TextGrad's string-function backward prompt, and no LLM loss call
is made (TextGrad's other BBH runs ask an LLM judge, ``MultiFieldTokenParsedEvaluation``,
whether the answer matches the ground truth; on our tasks that would be a
noisier copy of ``task.score`` at B + N_val more calls per step, and the
revert rule would follow the judge instead of the metric the table reports).

Sampling is the run's ``Protocol``'s: forward and validation calls use its
``temperature``, ``top_p`` and ``max_tokens`` (TextGrad's own engine default is
temperature 0; see docs/protocol.md), backward and TGD calls
``optimizer_temperature``, ``top_p``, ``optimizer_max_tokens``, and
``prefill_update_tag``. Method settings (``PromptOptConfig``): epochs,
minibatch size, the per-epoch break, validation seeds, the optimization seed,
the starting prompt and the inference template.

Our choices beside TextGrad's: answers start with the inference template like
every other method's (``template=""`` sends TextGrad's forward request exactly);
the user message is the task's question with its answer format and the
starting prompt is TextGrad's BBH task description without its answer-format
sentence (``prompt_opt_requests.initial_system_prompt``); an unparsable TGD
output or a failed request keeps the current prompt and the run goes on
(TextGrad raises); the script's per-step test-set scoring (for its plots) is
not run -- ``mtg baseline`` tests the final prompt once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engines.base import FINISH_CONTEXT, Engine, GenRequest, SamplingConfig, is_cut_off
from mtg_local.evaluation import evaluate, make_items
from mtg_local.inner_loop import DEFAULT_TEMPLATE, derive_seed
from mtg_local.protocol import Protocol
from mtg_local.tasks.base import Example, Task
from mtg_local.textgrad import generate_in_prefix_order, parse_update
from mtg_local.zero_shot_cot import zero_shot_cot


@dataclasses.dataclass(frozen=True)
class PromptOptConfig:
    """Method settings of TextGrad prompt optimization (TextGrad's values by default).

    Sampling and token caps are not here: they come from the run's ``Protocol``.

    Attributes:
        batch_size: training questions per minibatch (TextGrad: 3).
        epochs: passes over the training split (TextGrad: 3).
        steps_per_epoch: minibatches per epoch before the break (TextGrad: 4, its
            ``if steps == 3: break``); None: whole epochs.
        max_steps: stop after this many minibatches in all (None: no limit).
        initial_system_prompt: the starting variable (None: TextGrad's BBH task
            description without its answer-format sentence).
        template: inference template (response prefix) of every answer ("" : none, as TextGrad;
            None: the task's ``inference_template``, else the paper's, as every other method).
        val_seeds: seeds of the validation passes.
        seed: the minibatch shuffle (numpy, as TextGrad's ``set_seed``) and the training-forward seeds.
    """

    batch_size: int = 3
    epochs: int = 3
    steps_per_epoch: int | None = 4
    max_steps: int | None = None
    initial_system_prompt: str | None = None
    template: str | None = None
    val_seeds: tuple[int, ...] = (0,)
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "val_seeds", tuple(int(s) for s in self.val_seeds))
        for name in ("batch_size", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("steps_per_epoch", "max_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {v!r}")
        if self.initial_system_prompt is not None and not self.initial_system_prompt.strip():
            raise ValueError("initial_system_prompt must not be empty")
        if self.template is not None and not isinstance(self.template, str):
            raise ValueError(f"template must be a string, got {type(self.template).__name__}")
        if not self.val_seeds or len(set(self.val_seeds)) != len(self.val_seeds) or min(self.val_seeds) < 0:
            raise ValueError(f"val_seeds must be distinct integers >= 0, got {list(self.val_seeds)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")

    def for_task(self, task: Task) -> PromptOptConfig:
        """This config with its template resolved: the given one, else the task's, else the paper's."""
        if self.template is not None:
            return self
        return dataclasses.replace(self, template=task.inference_template or DEFAULT_TEMPLATE)

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
    task: Task, val: Sequence[Example], system_prompt: str, *, engine: Engine, config: PromptOptConfig,
    protocol: Protocol,
) -> float:
    """Mean validation accuracy of ``system_prompt`` over ``config.val_seeds`` (one engine call)."""
    outcome = evaluate(
        task, val, method="zero_shot_cot", seeds=config.val_seeds, forward_engine=engine,
        config=protocol.inner_config(system_prompt=system_prompt), template=config.template, group="val",
    )
    return float(outcome.accuracy["mean"])


def minibatches(train: Sequence[Example], config: PromptOptConfig) -> list[tuple[int, list[Example]]]:
    """(epoch, minibatch) pairs in TextGrad's order.

    As TextGrad's ``DataLoader`` after ``np.random.seed(seed)``: every epoch
    shuffles the same index array again (in place), then cuts it into
    ``batch_size`` pieces; the first ``steps_per_epoch`` of them are used.
    """
    rng = np.random.RandomState(config.seed)
    indices = np.arange(len(train))
    out: list[tuple[int, list[Example]]] = []
    for epoch in range(config.epochs):
        rng.shuffle(indices)
        cuts = list(range(0, len(indices), config.batch_size))[: config.steps_per_epoch]
        out.extend((epoch, [train[int(i)] for i in indices[c : c + config.batch_size]]) for c in cuts)
    return out[: config.max_steps] if config.max_steps is not None else out


def optimize_system_prompt(
    task: Task,
    train: Sequence[Example],
    val: Sequence[Example],
    *,
    forward_engine: Engine,
    optimizer_engine: Engine | None = None,
    config: PromptOptConfig,
    protocol: Protocol,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> PromptOptResult:
    """Runs TextGrad prompt optimization; see the module docstring for the calls per step.

    Args:
        task: formats, extracts and scores.
        train: questions the minibatches are drawn from.
        val: questions every candidate prompt is validated on.
        forward_engine: answers (forward and validation).
        optimizer_engine: backward and TGD calls (default: the forward engine).
        config: the method's settings.
        protocol: sampling and token caps of every call.
        on_step: called with each history entry as it is made (logging).

    Returns:
        The best validated prompt and the history.
    """
    from mtg_local.baselines import prompt_opt_requests as R  # imports textgrad (seconds): only when run

    if not train or not val:
        raise ValueError("prompt optimization needs training and validation questions")
    config = config.for_task(task)
    opt = optimizer_engine or forward_engine
    current = config.initial_system_prompt or R.initial_system_prompt()
    current_val = validate(task, val, current, engine=forward_engine, config=config, protocol=protocol)
    history = [{"step": 0, "epoch": None, "candidate": current, "val_accuracy": current_val, "accepted": True}]
    if on_step:
        on_step(history[-1])
    for step, (epoch, batch) in enumerate(minibatches(train, config), start=1):
        entry = _one_step(task, batch, current, step=step, forward_engine=forward_engine, optimizer_engine=opt,
                          config=config, protocol=protocol)
        entry["epoch"] = epoch
        candidate = entry["candidate"]
        if candidate is not None:
            val_acc = validate(task, val, candidate, engine=forward_engine, config=config, protocol=protocol)
            entry["val_accuracy"] = val_acc
            # TextGrad's run_validation_revert: keep the new prompt unless validation got worse.
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
    protocol: Protocol,
) -> dict[str, Any]:
    """Forward, loss backward, prompt backward and TGD step for one minibatch (4 engine calls at most)."""
    from mtg_local.baselines import prompt_opt_requests as R

    entry: dict[str, Any] = {"step": step, "candidate": None, "val_accuracy": None, "accepted": False, "errors": []}
    seed = derive_seed(config.seed, "prompt_opt_forward", step)
    items = make_items(batch, [seed], loss_prompt="", template=config.template, group=f"train-{step}")
    trajs = zero_shot_cot(task, items, engine=forward_engine, config=protocol.inner_config(system_prompt=system_prompt))
    entry["minibatch_accuracy"] = sum(t.score for t in trajs) / len(trajs)
    entry["errors"] += [e for t in trajs for e in t.errors]
    ok = [t for t in trajs if not t.errors]
    if not ok:
        entry["error"] = "every forward request of the minibatch failed"
        return entry
    graph = R.PromptOptStep(system_prompt, [
        (task.format_question(t.item.example), t.final_answer, t.item.example.answer, int(t.score)) for t in ok
    ])

    def sampling(phase: str, k: int) -> SamplingConfig:
        return SamplingConfig(temperature=protocol.optimizer_temperature, top_p=protocol.top_p,
                              max_tokens=protocol.optimizer_max_tokens, seed=derive_seed(seed, phase, k))

    def send(phase: str, messages: list[tuple[str, str]]) -> list[str | None]:
        requests = [GenRequest.chat(user, system=system, sampling=sampling(phase, k), id=f"po-{phase}-{step}-{k}")
                    for k, (system, user) in enumerate(messages)]
        results = generate_in_prefix_order(optimizer_engine, requests)
        entry["errors"] += [f"{phase}: {r.error}" for r in results if not r.ok]
        return [r.text if r.ok else None for r in results]

    graph.set_loss_feedback(send("loss_backward", graph.loss_backward()))
    graph.set_prompt_feedback(send("prompt_backward", graph.prompt_backward()))
    entry["gradients"] = graph.prompt_feedback
    update = graph.update()
    if update is None:
        entry["error"] = "no feedback on the system prompt (every backward request failed)"
        return entry
    (system, user), (start, end) = update
    prefix = start if protocol.prefill_update_tag and optimizer_engine.capabilities.response_prefix else ""
    (r,) = optimizer_engine.generate([GenRequest.chat(user, system=system, sampling=sampling("update", 0),
                                                      id=f"po-update-{step}", response_prefix=prefix)])
    if not r.ok:
        entry["error"] = f"TGD step engine error: {r.error}"
        return entry
    parsed = parse_update(prefix + r.text, parsing=protocol.update_parsing, truncated=is_cut_off(r.finish_reason),
                          context_cut=r.finish_reason == FINISH_CONTEXT,
                          start_tag=start, end_tag=end)
    if parsed.value is None:
        entry["error"] = parsed.error
        return entry
    entry["candidate"] = parsed.value
    return entry
