"""``MetaConfig``: every setting of a metaTextGrad training run (``mtg train``).

The resolved config is written to ``RUN_DIR/config.json`` and is all that
``mtg train --resume RUN_DIR`` needs (plus the checkpoint). Secrets passed as
engine options (API keys) are never written: ``to_dict`` drops them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engines.errors import UserError
from mtg_local.inner_loop import InnerLoopConfig
from mtg_local.runs.secrets import public_engine_opts

METHODS = ("learned_loss", "maml", "reptile", "joint")
JOINT_TEMPLATE_UPDATES = ("reptile", "maml")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Settings of one meta-training run; validated on construction.

    Attributes:
        out: the run directory.
        task: task name (``mtg_local.tasks.get_task``).
        method: learned_loss | maml | reptile | joint.
        engine: forward engine spec, e.g. ``vllm:bundled``.
        optimizer_engine: spec of the engine for loss/backward/update and all
            meta calls; None = the forward engine.
        engine_opts: backend options as ``KEY=VALUE`` strings (as on the CLI).
        seeds: seeds of every (question, seed) item: train minibatch,
            validation and test all run each question once per seed.
        outer_steps: K, outer steps after the initial validation (>= 0).
        minibatch: train questions per outer step (>= 1).
        steps: T, inner-loop TGD steps (>= 0).
        limit: cap on every split's size (None: whole splits).
        data_file: local data file for the task.
        task_seed: seed of generated task data (built-in word sorting).
        sample_seed: minibatch k is drawn from ``random.Random(f"{sample_seed}:{k}")``.
        temperature: forward (initial answer) temperature.
        optimizer_temperature: temperature of the inner optimizer phases and meta calls.
        max_tokens: forward answer token cap.
        optimizer_max_tokens: inner loss/backward/update token cap.
        meta_max_tokens: token cap of meta-evaluation and meta TGD-step calls.
        max_meta_pairs: most wrong answers (or MAML gradients) shown to one meta call.
        joint_template: how ``joint`` updates the template: reptile | maml.
        initial_loss_prompt: start loss prompt (None: the task's, paper appendix C).
        initial_template: start template (None: the paper's "Let's break this down ...").
        freeze_when: the inner loop's early-freezing policy.
        cache: generation cache path (None: RUN_DIR/cache.sqlite).
        no_cache: do not wrap engines in a generation cache.
        progress: show tqdm bars.
    """

    out: str
    task: str = "word_sorting"
    method: str = "learned_loss"
    engine: str = "vllm:bundled"
    optimizer_engine: str | None = None
    engine_opts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    outer_steps: int = 3
    minibatch: int = 3
    steps: int = 1
    limit: int | None = None
    data_file: str | None = None
    task_seed: int = 0
    sample_seed: int = 0
    temperature: float = 0.7
    optimizer_temperature: float = 0.0
    max_tokens: int = 512
    optimizer_max_tokens: int = 512
    meta_max_tokens: int = 512
    max_meta_pairs: int = 8
    joint_template: str = "reptile"
    initial_loss_prompt: str | None = None
    initial_template: str | None = None
    freeze_when: str = "never"
    cache: str | None = None
    no_cache: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "engine_opts", tuple(self.engine_opts))
        if self.method not in METHODS:
            raise UserError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.joint_template not in JOINT_TEMPLATE_UPDATES:
            raise UserError(f"joint_template must be reptile or maml, got {self.joint_template!r}")
        if not self.seeds or not all(_is_int(s) and s >= 0 for s in self.seeds):
            raise UserError(f"seeds must be a non-empty list of integers >= 0, got {list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds must be distinct, got {list(self.seeds)}")
        for name, low in (("outer_steps", 0), ("minibatch", 1), ("steps", 0), ("max_meta_pairs", 1),
                          ("meta_max_tokens", 1), ("max_tokens", 1), ("optimizer_max_tokens", 1)):
            v = getattr(self, name)
            if not _is_int(v) or v < low:
                raise UserError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            raise UserError(f"limit must be an integer >= 1 or None, got {self.limit!r}")
        for name in ("task_seed", "sample_seed"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise UserError(f"{name} must be an integer >= 0, got {v!r}")
        if not self.out:
            raise UserError("out (the run directory) must be set")
        try:
            self.inner_config()
        except ValueError as e:
            raise UserError(f"bad inner-loop setting: {e}") from e

    def inner_config(self) -> InnerLoopConfig:
        """The inner-loop settings this run uses for train, validation and test."""
        return InnerLoopConfig(
            steps=self.steps,
            temperature=self.temperature,
            optimizer_temperature=self.optimizer_temperature,
            max_tokens=self.max_tokens,
            optimizer_max_tokens=self.optimizer_max_tokens,
            freeze_when=self.freeze_when,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without secret engine options."""
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        d["engine_opts"] = public_engine_opts(self.engine_opts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> MetaConfig:
        """Builds a config from ``to_dict`` output (unknown keys ignored), then ``overrides``."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs.update(overrides)
        return cls(**kwargs)
