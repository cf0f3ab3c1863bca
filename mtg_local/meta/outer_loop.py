"""The outer-loop driver shared by every metaTextGrad method.

One run (``OuterLoop.run``)::

    step 0   validate the starting artifacts  } ONE inner loop (groups "val:0:initial"
             + train minibatch of step 1      }  and "train:1")            -> checkpoint
    step k   minibatch inner loop (step 1 reuses the one above)
             propose candidates (meta_update.propose: <= 3 calls)
             validate all candidates in ONE inner loop (group per candidate)
             keep the best one if its val accuracy beats the best so far,
             else revert (current = best); record everything    -> checkpoint
    test     best artifacts on the test split x seeds, ONE inner loop -> checkpoint

Revert rule (paper section 2): a candidate is kept only if its validation
accuracy is strictly higher than the best so far; otherwise the learned
artifacts go back to the best ones and the next step tries again on the next
minibatch. Minibatch k is ``random.Random(f"{sample_seed}:{k}").sample(train, m)``,
a pure function of (seed, step), so a resumed run draws the same ones. Every
request is a pure function of (item, artifacts, step), so a replayed step asks
the engine cache the same requests and gets hits.

Several tasks (``MultiTask``, ``mtg train --task A,B``): minibatch k draws its m
questions across the tasks (``sample_task_minibatch``: m split as evenly as the
tasks allow, the remainder rotating with k, so every task is in every minibatch
when m >= the number of tasks), still in one inner loop. Validation runs every
task's validation split in one inner loop; a candidate's validation accuracy is
the MEAN of the per-task accuracies (each task counts once whatever its split
size), which the revert rule compares; the per-task values are kept in the
history. The test evaluates every task's test split and records each task's
accuracy; the run's accuracy per seed is the mean over tasks.

Preemption: ``StopFlag`` (set by SIGUSR1 in ``run_train``) is checked
between the stages of a step; when set, the unfinished step is abandoned, the
checkpoint of the last completed step is (re)written and ``Preempted`` is
raised -- ``mtg train`` then exits with ``EXIT_REQUEUE`` (99). SIGTERM/SIGINT
abort the running stage at once (``mtg_local.runs.interrupt``); the checkpoint
on disk is then the one of the last completed step.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

from engines.base import Engine
from mtg_local import inner_loop, metrics
from mtg_local.evaluation import write_trajectories
from mtg_local.evaluation import truncation_summary
from mtg_local.inner_loop import InnerItem, Trajectory
from mtg_local.meta.joint import joint_updates
from mtg_local.meta.learned_loss import LearnedLoss
from mtg_local.meta.maml_template import MAMLTemplate
from mtg_local.meta.meta_config import MetaConfig
from mtg_local.meta.meta_update import Artifacts, Candidate, MetaContext, MetaUpdate, propose
from mtg_local.meta.reptile_template import ReptileTemplate
from mtg_local.runs import progress as progress_display
from mtg_local.runs.interrupt import EXIT_REQUEUE, Interrupted, StopFlag, signal_name
from mtg_local.runs.run_dir import RunDir
from mtg_local.runs.summary import accuracy_text, outer_step_line, pct
from mtg_local.tasks.base import Example, Splits, Task
from mtg_local.tasks.multi_task import MultiTask

CHECKPOINT_VERSION = 1


class Preempted(Interrupted):
    """The run stopped on request at a stage boundary after writing its checkpoint; resume with --resume."""


def method_updates(config: MetaConfig) -> tuple[list[MetaUpdate], bool]:
    """The updates one outer step of ``config.method`` runs, and whether to combine them."""
    if config.method == "learned_loss":
        return [LearnedLoss()], False
    if config.method == "maml":
        return [MAMLTemplate()], False
    if config.method == "reptile":
        return [ReptileTemplate()], False
    return joint_updates(config.joint_template), True


def sample_minibatch(train: Sequence[Example], size: int, sample_seed: int, step: int) -> list[Example]:
    """Minibatch of outer step ``step``: a pure function of (sample_seed, step)."""
    rng = random.Random(f"{sample_seed}:{step}")  # str seeds are stable across processes
    return rng.sample(list(train), min(size, len(train)))


def sample_task_minibatch(trains: Mapping[str, Sequence[Example]], size: int, sample_seed: int,
                          step: int) -> list[Example]:
    """Minibatch of outer step ``step`` across several tasks: a pure function of (sample_seed, step).

    ``size`` questions are shared out as evenly as possible; the tasks that get one
    more are the next ones in a rotation that starts at task ``(step - 1) % k``.
    Each task's share is drawn with ``random.Random(f"{sample_seed}:{step}:{task}")``;
    the result interleaves the tasks (first of each task, then second, ...), so the
    meta step's round-robin over questions shows every task early.
    """
    names = list(trains)
    k = len(names)
    base, extra = divmod(size, k)
    start = (step - 1) % k
    shares = {names[(start + j) % k]: base + (1 if j < extra else 0) for j in range(k)}
    draws = [random.Random(f"{sample_seed}:{step}:{n}").sample(list(trains[n]), min(shares[n], len(trains[n])))
             for n in names]
    rounds = max((len(d) for d in draws), default=0)
    return [d[r] for r in range(rounds) for d in draws if r < len(d)]


def make_items(examples: Sequence[Example], seeds: Sequence[int], art: Artifacts, group: str) -> list[InnerItem]:
    """(question, seed) items, question-major, all with the same artifacts and group."""
    return [InnerItem(ex, s, art.loss_prompt, art.template, group) for ex in examples for s in seeds]


def mean_score(trajs: Sequence[Trajectory]) -> float:
    return sum(t.score for t in trajs) / len(trajs) if trajs else 0.0


@dataclasses.dataclass
class TrainState:
    """Everything the checkpoint holds.

    Attributes:
        completed_step: last completed outer step (-1: none, 0: initial validation).
        best: best artifacts so far (also the current ones: a reverted step goes back to them).
        best_val: validation accuracy of ``best``.
        best_step: the step that produced ``best`` (0: the starting artifacts).
        history: one record per candidate (and per skipped step), in order.
        test: the final test summary once evaluated, else None.
    """

    completed_step: int
    best: Artifacts
    best_val: float = 0.0
    best_step: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    test: dict[str, Any] | None = None

    def to_dict(self, sample_seed: int) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "completed_step": self.completed_step,
            "best": self.best.to_dict(),
            "best_val": self.best_val,
            "best_step": self.best_step,
            "history": self.history,
            "test": self.test,
            # Minibatches are derived, not drawn from a stateful RNG: this is the whole RNG state.
            "rng": {"sample_seed": sample_seed, "scheme": "random.Random(f'{sample_seed}:{step}').sample(train, m)"},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(d["completed_step"], Artifacts.from_dict(d["best"]), d["best_val"], d["best_step"],
                   list(d["history"]), d.get("test"))


class OuterLoop:
    """Runs (or resumes) the outer loop of one method; see the module docstring."""

    def __init__(
        self,
        config: MetaConfig,
        task: Task,
        splits: Splits,
        *,
        forward_engine: Engine,
        optimizer_engine: Engine,
        run_dir: RunDir,
        state: TrainState,
        stop: StopFlag | None = None,
    ) -> None:
        self.config = config
        self.task = task
        self.splits = splits
        self.forward_engine = forward_engine
        self.optimizer_engine = optimizer_engine
        self.run_dir = run_dir
        self.state = state
        self.stop = stop if stop is not None else StopFlag()
        self.updates, self.combine = method_updates(config)
        self.inner_config = config.inner_config()
        self.multi = task if isinstance(task, MultiTask) else None
        self._bar: Any = None  # the outer-step bar while ``run`` runs

    # -- progress ----------------------------------------------------------------
    def _stage(self, text: str) -> None:
        """Shows what the run is doing beside the outer-step bar (a terminal only)."""
        if self._bar is not None:
            best = f", best val {pct(self.state.best_val)}" if self.state.completed_step >= 0 else ""
            self._bar.set_postfix_str(text + best)

    def _report(self, step: int) -> None:
        """The line of outer step ``step`` (validated or skipped, accepted or reverted) on stderr."""
        records = [r for r in self.state.history if r["step"] == step]
        progress_display.note(outer_step_line(records), enabled=self.config.progress)

    # -- helpers ---------------------------------------------------------------
    def _inner(self, items: list[InnerItem], desc: str | None = None) -> list[Trajectory]:
        """One batched inner loop (1 + 3T engine calls) over ``items``; ``desc`` labels its bar."""
        return inner_loop.solution_optimization(
            self.task,
            items,
            forward_engine=self.forward_engine,
            optimizer_engine=self.optimizer_engine,
            config=self.inner_config,
            progress=self.config.progress,
            desc=desc,
        )

    def _checkpoint(self) -> None:
        self.run_dir.write_checkpoint(self.state.to_dict(self.config.sample_seed))
        engines = {id(e): e for e in (self.forward_engine, self.optimizer_engine)}.values()
        self.run_dir.log_event("checkpoint", completed_step=self.state.completed_step, tested=self.state.test is not None,
                               session_backend_calls=sum(e.usage.calls for e in engines))

    def _check_stop(self, where: str) -> None:
        if self.stop:
            self._checkpoint()
            self.run_dir.log_event("preempted", signal=self.stop.signal, where=where,
                                   completed_step=self.state.completed_step)
            raise Preempted(
                f"stopped by {signal_name(self.stop.signal)} {where}; checkpoint at step "
                f"{self.state.completed_step} in {self.run_dir.path}",
                self.stop.signal,
            )

    def _minibatch_items(self, step: int) -> list[InnerItem]:
        if self.multi is not None:
            trains = {n: s.train for n, s in self.multi.task_splits().items()}
            mb = sample_task_minibatch(trains, self.config.minibatch, self.config.sample_seed, step)
        else:
            mb = sample_minibatch(self.splits.train, self.config.minibatch, self.config.sample_seed, step)
        return make_items(mb, self.config.seeds, self.state.best, f"train:{step}")

    def _per_task(self, trajs: Sequence[Trajectory]) -> dict[str, list[Trajectory]]:
        """A multi-task run's trajectories by task, in task order."""
        assert self.multi is not None
        groups: dict[str, list[Trajectory]] = {n: [] for n in self.multi.names}
        for t in trajs:
            groups[self.multi.task_name_of(t.item.example)].append(t)
        return groups

    def _score(self, trajs: Sequence[Trajectory]) -> tuple[float, dict[str, float] | None]:
        """(accuracy, per-task accuracies): a multi-task run's accuracy is the mean over its tasks."""
        if self.multi is None:
            return mean_score(trajs), None
        per = {n: mean_score(ts) for n, ts in self._per_task(trajs).items() if ts}
        return (sum(per.values()) / len(per) if per else 0.0), per

    # -- stages ----------------------------------------------------------------
    def _initial(self) -> list[Trajectory] | None:
        """Step 0: validates the starting artifacts, batched with step 1's minibatch.

        Returns:
            The step-1 minibatch trajectories (None when there are no outer steps).
        """
        val_items = make_items(self.splits.val, self.config.seeds, self.state.best, "val:0:initial")
        train_items = self._minibatch_items(1) if self.config.outer_steps >= 1 else []
        self._stage("initial validation")
        trajs = self._inner(val_items + train_items, "validation" + (" + step 1 minibatch" if train_items else ""))
        acc, per_task = self._score(trajs[: len(val_items)])
        self.state.best_val = acc
        self.state.completed_step = 0
        record = {"step": 0, "label": "initial", "candidate": self.state.best.to_dict(), "val_accuracy": acc,
                  "accepted": True}
        if per_task is not None:
            record["val_accuracy_per_task"] = per_task
        self.state.history.append(record)
        self.run_dir.log_event("initial_validation", val_accuracy=acc, n_items=len(val_items))
        self._checkpoint()
        self._report(0)
        return trajs[len(val_items) :] if train_items else None

    def _step(self, step: int, minibatch: list[Trajectory] | None) -> None:
        """One outer step: minibatch inner loop, proposal, batched validation, revert rule."""
        if minibatch is None:
            self._stage(f"step {step}: minibatch")
            minibatch = self._inner(self._minibatch_items(step), f"step {step} minibatch")
        self._check_stop(f"after the minibatch inner loop of step {step}")
        ids = list(dict.fromkeys(t.item.example.id for t in minibatch))
        train_acc = mean_score(minibatch)  # over the minibatch's items, whatever their task
        ctx = MetaContext(self.task, self.optimizer_engine, self.config.meta_max_tokens,
                          self.config.meta_temperature, self.config.max_meta_pairs, top_p=self.config.top_p,
                          meta_step=self.config.meta_step, prefill_tag=self.config.protocol.meta_prefill_update_tag)
        self._stage(f"step {step}: meta update")
        candidates, info = propose(self.updates, ctx, self.state.best, minibatch, step=step, combine=self.combine)
        self._check_stop(f"after the meta step of step {step}")
        base = {"step": step, "minibatch": ids, "train_accuracy": train_acc, "best_val_before": self.state.best_val,
                "truncated": truncation_summary(minibatch)}
        if self.multi is not None:
            base["train_accuracy_per_task"] = {n: mean_score(ts) for n, ts in self._per_task(minibatch).items() if ts}
        if not candidates:
            self.state.history.append({**base, "label": None, "candidate": None, "val_accuracy": None,
                                       "accepted": False, "info": info})
            self.run_dir.log_event("step_skipped", step=step, info=info)
        else:
            accs, val_truncated, per_task = self._validate(step, candidates)
            winner = max(range(len(candidates)), key=lambda i: (accs[i], -i))
            accepted = accs[winner] > self.state.best_val
            for i, (c, acc) in enumerate(zip(candidates, accs)):
                keep = accepted and i == winner
                record = {**base, "label": c.label, "candidate": c.artifacts.to_dict(), "val_accuracy": acc,
                          "val_truncated": val_truncated[i], "accepted": keep, "info": c.info}
                if per_task[i] is not None:
                    record["val_accuracy_per_task"] = per_task[i]
                self.state.history.append(record)
                self.run_dir.log_event("candidate", step=step, label=c.label, val_accuracy=acc, accepted=keep)
            if accepted:
                self.state.best = candidates[winner].artifacts
                self.state.best_val, self.state.best_step = accs[winner], step
        self.state.completed_step = step
        self._checkpoint()
        self._report(step)

    def _validate(
        self, step: int, candidates: list[Candidate]
    ) -> tuple[list[float], list[dict[str, int]], list[dict[str, float] | None]]:
        """Validation accuracy, truncation counts and per-task accuracies (multi-task runs, else
        None) of each candidate, all in ONE inner loop."""
        items: list[InnerItem] = []
        for c in candidates:
            items += make_items(self.splits.val, self.config.seeds, c.artifacts, f"val:{step}:{c.label}")
        self._stage(f"step {step}: validation")
        trajs = self._inner(items, f"step {step} validation")
        n = len(items) // len(candidates)
        parts = [trajs[i * n : (i + 1) * n] for i in range(len(candidates))]
        scores = [self._score(p) for p in parts]
        return [a for a, _ in scores], [truncation_summary(p) for p in parts], [t for _, t in scores]

    def _test(self) -> None:
        """Final evaluation of the best artifacts on the test split over all seeds."""
        items = make_items(self.splits.test, self.config.seeds, self.state.best, "test")
        self._stage("test")
        trajs = self._inner(items, "test")
        write_trajectories(self.run_dir, trajs, split="test", method=self.config.method)
        summary = metrics.summarize(metrics.accuracy_by_seed(trajs))
        self.state.test = {"accuracy": summary, "n_questions": len(self.splits.test),
                           "truncated": truncation_summary(trajs)}
        if self.multi is not None:
            self.state.test.update(self._test_per_task(trajs))
            summary = self.state.test["accuracy"]
        self.run_dir.log_event("test", accuracy=summary)
        self._checkpoint()
        progress_display.note(f"test accuracy {accuracy_text(summary)}", enabled=self.config.progress)

    def _test_per_task(self, trajs: Sequence[Trajectory]) -> dict[str, Any]:
        """A multi-task test: each task's accuracy over seeds, and per seed the mean over tasks."""
        assert self.multi is not None
        per_task, by_seed = {}, []
        for name, ts in self._per_task(trajs).items():
            acc = metrics.accuracy_by_seed(ts)
            by_seed.append(acc)
            per_task[name] = {"accuracy": metrics.summarize(acc), "n_questions": len(ts) // len(self.config.seeds),
                              "truncated": truncation_summary(ts)}
        seeds = sorted({s for acc in by_seed for s in acc})
        mean = {s: sum(acc.get(s, 0.0) for acc in by_seed) / len(by_seed) for s in seeds}
        return {"accuracy": metrics.summarize(mean), "per_task": per_task}

    # -- driver ----------------------------------------------------------------
    def run(self) -> TrainState:
        """Runs the remaining stages; returns the final state (test evaluated).

        Raises:
            Preempted: the stop flag was set; the checkpoint is written.
        """
        k = self.config.outer_steps
        bar = self._bar = progress_display.bar(total=k, initial=max(self.state.completed_step, 0),
                                               desc="outer steps", unit="step", enabled=self.config.progress)
        try:
            pending = None
            if self.state.completed_step < 0:
                self._check_stop("before the initial validation")
                pending = self._initial()
            for step in range(self.state.completed_step + 1, k + 1):
                self._check_stop(f"before step {step}")
                self._step(step, pending)
                pending = None
                bar.update(1)
            if self.state.test is None:
                self._check_stop("before the test evaluation")
                self._test()
        finally:
            bar.close()
            self._bar = None
        return self.state
