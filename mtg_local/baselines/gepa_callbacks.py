"""GEPA's callbacks in a run: the history it records, its stop on a dead engine, its reflection retries.

* ``HistoryRecorder``: one history entry per candidate (seed, reflection, merge) and
  per failed reflection, from GEPA's callback events;
* ``AllFailedStopper``: stops GEPA when a whole iteration's task requests failed;
* ``RetryingInstructionProposer``: DSPy's instruction proposer, each attempt counted
  and a retry sent with another seed (``mtg_local.baselines.gepa``, "Failed reflections").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mtg_local.baselines.dspy_program import dspy  # the offline environment first

from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer  # noqa: E402

from engines.adapters.dspy_lm import LMCounters  # noqa: E402
from mtg_local.runs.interrupt import Interrupted, StopFlag, signal_name  # noqa: E402


class AllFailedStopper:
    """GEPA stop condition: every task request since the last check failed (a dead engine).

    GEPA checks its stoppers before each iteration; an iteration evaluates at
    least one minibatch, so "every request since the last check failed" means
    a whole iteration (or the seed's validation) got nothing back.
    """

    def __init__(self, counters: LMCounters) -> None:
        self.counters = counters
        self._seen = (0, 0)
        self.fired = False

    def __call__(self, state: Any) -> bool:
        c = self.counters.to_dict()
        requests, errors = c["requests"] - self._seen[0], c["errors"] - self._seen[1]
        self._seen = (c["requests"], c["errors"])
        self.fired = self.fired or (requests > 0 and errors >= requests)
        return self.fired


class HistoryRecorder:
    """A GEPA callback that keeps one history entry per candidate (the seed, proposals, merges)
    and per failed reflection.

    Entries: ``step`` (GEPA iteration; 0 = the seed), ``source`` (seed, reflection
    or merge), ``candidate`` (instruction),
    ``minibatch_accuracy`` (the proposal on its train minibatch; before it, the
    parent's), ``accepted`` (went on to the validation split), ``val_accuracy``
    and ``candidate_idx`` (accepted ones), ``attempt`` (a reflection that
    succeeded on a retry: its number, 1 = the first retry). A failed reflection:
    ``candidate`` None, ``failed`` True, ``error``, ``attempt``. ``on_entry`` is
    called with each finished entry (the run's event log).
    """

    def __init__(self, on_entry: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.history: list[dict[str, Any]] = []
        self._on_entry = on_entry
        self._pending: dict[str, Any] | None = None
        self._val: dict[int, float] = {}
        self._parent_scores: list[float] | None = None
        self.iteration = 0  # the iteration whose reflection runs (on_proposal_start)
        self._attempt = 0  # attempt number of the last successful reflection
        self.reflections = {"attempts": 0, "failed": 0, "retries": 0}

    def on_proposal_start(self, e: dict[str, Any]) -> None:
        self.iteration = e["iteration"]

    def reflection_done(self, attempt: int, error: str | None) -> None:
        """Counts one reflection attempt (``RetryingInstructionProposer``); a failed one is a history entry."""
        self.reflections["attempts"] += 1
        self.reflections["retries"] += attempt > 0
        if error is None:
            self._attempt = attempt
            return
        self.reflections["failed"] += 1
        self._flush()
        self._done({"step": self.iteration, "source": "reflection", "candidate": None, "accepted": False,
                    "val_accuracy": None, "failed": True, "error": error, "attempt": attempt})

    def _done(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if self._on_entry is not None:
            self._on_entry(entry)

    @staticmethod
    def _text(components: dict[str, str]) -> str:
        return "\n\n".join(components.values())

    @staticmethod
    def _mean(scores: Sequence[float] | None) -> float | None:
        return sum(scores) / len(scores) if scores else None

    def on_valset_evaluated(self, e: dict[str, Any]) -> None:
        self._val[e["candidate_idx"]] = e["average_score"]
        if e["candidate_idx"] == 0 and e["iteration"] == 0:
            self._done({"step": 0, "candidate": self._text(e["candidate"]), "accepted": True, "candidate_idx": 0,
                        "val_accuracy": e["average_score"], "source": "seed"})

    def on_evaluation_end(self, e: dict[str, Any]) -> None:
        if e.get("candidate_idx") is not None:  # the parent on the minibatch
            self._parent_scores = list(e["scores"])
        elif self._pending is not None:  # the proposal on the same minibatch
            self._pending["minibatch_accuracy_before"] = self._mean(self._parent_scores)
            self._pending["minibatch_accuracy"] = self._mean(e["scores"])

    def on_proposal_end(self, e: dict[str, Any]) -> None:
        self._flush()
        self._pending = {"step": e["iteration"], "candidate": self._text(e["new_instructions"]), "source": "reflection"}
        if self._attempt:
            self._pending["attempt"] = self._attempt
        self._attempt = 0

    def on_candidate_accepted(self, e: dict[str, Any]) -> None:
        if self._pending is None:
            return
        idx = e["new_candidate_idx"]
        self._pending.update(accepted=True, candidate_idx=idx, val_accuracy=self._val.get(idx),
                             parents=list(e["parent_ids"]))
        self._flush()

    def on_candidate_rejected(self, e: dict[str, Any]) -> None:
        if self._pending is not None:
            self._pending.update(accepted=False, val_accuracy=None, reason=e.get("reason"))
            self._flush()

    def on_merge_accepted(self, e: dict[str, Any]) -> None:
        idx = e["new_candidate_idx"]
        self._done({"step": e["iteration"], "candidate": None, "source": "merge", "accepted": True,
                    "candidate_idx": idx, "val_accuracy": self._val.get(idx), "parents": list(e["parent_ids"])})

    def _flush(self) -> None:
        entry, self._pending = self._pending, None
        if entry is not None:
            entry.setdefault("accepted", False)
            entry.setdefault("val_accuracy", None)
            self._done(entry)

    def finish(self) -> list[dict[str, Any]]:
        self._flush()
        return self.history


class RetryingInstructionProposer(InstructionProposer):
    """DSPy's instruction proposer, with each attempt recorded and a retry sent with another seed.

    GEPA retries a reflection that raised once, with the same inputs; DSPy's LM
    call would then carry the same seed, and the run's cache would answer it with
    the reply that failed. Here attempt k > 0 of one (iteration, parent) goes
    through a copy of the reflection LM with ``rollout_id`` "gepa-retry-k", which
    our DSPy LM folds into the request seed (``engines.adapters.dspy_lm``). Being
    an ``InstructionProposer``, it gets the reflective dataset exactly as DSPy's
    built-in proposer does, so attempt 0 sends DSPy's request unchanged.
    """

    def __init__(self, recorder: HistoryRecorder, stop: StopFlag | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorder = recorder
        self.stop = stop
        self._attempts: dict[tuple[int, tuple[tuple[str, str], ...]], int] = {}

    def __call__(self, candidate: dict[str, str], reflective_dataset: Any,
                 components_to_update: list[str]) -> dict[str, str]:
        if self.stop:  # a stop signal: no new request (GEPA catches the exception and the stopper ends the run)
            raise Interrupted(f"stopped by {signal_name(self.stop.signal)}", self.stop.signal)
        key = (self.recorder.iteration, tuple(sorted(candidate.items())))
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        lm = dspy.settings.lm
        if attempt:
            lm = lm.copy(rollout_id=f"gepa-retry-{attempt}")
        try:
            with dspy.context(lm=lm):
                out = super().__call__(candidate, reflective_dataset, components_to_update)
        except Exception as e:
            if not self.stop:  # an interruption is not a failed reflection
                self.recorder.reflection_done(attempt, f"{type(e).__name__}: {e}")
            raise
        self.recorder.reflection_done(attempt, None)
        return out
