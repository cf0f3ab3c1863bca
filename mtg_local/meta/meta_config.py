"""``MetaConfig``: every setting of a metaTextGrad training run (``mtg train``).

The resolved config is written to ``RUN_DIR/config.json`` and is all that
``mtg train --resume RUN_DIR`` needs (plus the checkpoint). Secrets passed as
engine options (API keys) are never written: ``to_dict`` drops them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engines.errors import UserError
from mtg_local.inner_loop import SCHEDULES, InnerLoopConfig
from mtg_local.protocol import DEFAULT_PROTOCOL, Protocol
from mtg_local.runs.secrets import public_engine_opts

METHODS = ("learned_loss", "maml", "reptile", "joint")
JOINT_TEMPLATE_UPDATES = ("reptile", "maml")


#: Protocol settings readable as ``MetaConfig`` attributes (``config.seeds`` etc.).
_PROTOCOL_VIEWS = ("seeds", "outer_steps", "minibatch", "steps", "limit", "task_seed", "sample_seed", "temperature",
                   "optimizer_temperature", "meta_temperature", "top_p", "max_tokens", "optimizer_max_tokens",
                   "meta_max_tokens", "max_meta_pairs", "freeze_when", "meta_step")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Settings of one meta-training run; validated on construction.

    Everything that must be equal across a results table (seeds, T, K,
    minibatch, sampling, token caps, answer selection, scoring, ...) is in
    ``protocol``; its fields are also readable as attributes (``config.seeds``).

    Attributes:
        out: the run directory.
        task: task name (``mtg_local.tasks.get_task``).
        method: learned_loss | maml | reptile | joint.
        engine: forward engine spec, e.g. ``vllm:bundled``.
        optimizer_engine: spec of the engine for loss/backward/update and all
            meta calls; None = the forward engine.
        engine_opts: backend options as ``KEY=VALUE`` strings (as on the CLI).
        data_file: local data file for the task.
        protocol: the run's ``Protocol`` (docs/protocol.md).
        joint_template: how ``joint`` updates the template: reptile | maml.
        initial_loss_prompt: start loss prompt (None: the task's, paper appendix C).
        initial_template: start template (None: the paper's "Let's break this down ...").
        cache: generation cache path (None: RUN_DIR/cache.sqlite).
        no_cache: do not wrap engines in a generation cache.
        progress: show tqdm bars.
        schedule: inner-loop schedule, "phase" or "item" (``mtg_local.barrier_free``);
            not in the protocol (same requests either way), so a resume may change it.
    """

    out: str
    task: str = "synthetic_word_sorting"
    method: str = "learned_loss"
    engine: str = "vllm:bundled"
    optimizer_engine: str | None = None
    engine_opts: tuple[str, ...] = ()
    data_file: str | None = None
    protocol: Protocol = DEFAULT_PROTOCOL
    joint_template: str = "reptile"
    initial_loss_prompt: str | None = None
    initial_template: str | None = None
    cache: str | None = None
    no_cache: bool = False
    progress: bool = True
    schedule: str = "phase"

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine_opts", tuple(self.engine_opts))
        if isinstance(self.protocol, dict):
            try:
                object.__setattr__(self, "protocol", Protocol.from_dict(self.protocol))
            except (TypeError, ValueError) as e:
                raise UserError(f"bad protocol setting: {e}") from e
        if not isinstance(self.protocol, Protocol):
            raise UserError(f"protocol must be a Protocol, got {type(self.protocol).__name__}")
        if self.method not in METHODS:
            raise UserError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.joint_template not in JOINT_TEMPLATE_UPDATES:
            raise UserError(f"joint_template must be reptile or maml, got {self.joint_template!r}")
        if not self.out:
            raise UserError("out (the run directory) must be set")
        if self.schedule not in SCHEDULES:
            raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not fields: the protocol's settings.
        if name in _PROTOCOL_VIEWS and "protocol" in self.__dict__:
            return getattr(self.protocol, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def inner_config(self) -> InnerLoopConfig:
        """The inner-loop settings this run uses for train, validation and test."""
        return self.protocol.inner_config(schedule=self.schedule)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without secret engine options."""
        d = dataclasses.asdict(self)
        d["protocol"] = self.protocol.to_dict()
        d["engine_opts"] = public_engine_opts(self.engine_opts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> MetaConfig:
        """Builds a config from ``to_dict`` output (unknown keys ignored), then ``overrides``."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs.update(overrides)
        return cls(**kwargs)
