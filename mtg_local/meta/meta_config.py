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
from mtg_local.tasks.multi_task import split_task_names

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
        task: task name (``mtg_local.tasks.get_task``), or several joined by commas
            ("word_sorting,mmlu_machine_learning"): multi-task meta-training of ONE
            loss prompt / template across them (``mtg_local.tasks.multi_task``).
        method: learned_loss | maml | reptile | joint.
        engine: forward engine spec, e.g. ``vllm:bundled``.
        optimizer_engine: spec of the engine for loss/backward/update and all
            meta calls; None = the forward engine.
        engine_opts: backend options as ``KEY=VALUE`` strings (as on the CLI).
        data_file: local data file of a single-task run.
        data_files: (task, file) pairs: local data files of a multi-task run's tasks.
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
    data_files: tuple[tuple[str, str], ...] = ()
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
        self._check_tasks()
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

    def _check_tasks(self) -> None:
        """Normalizes ``data_files`` (a dict or pairs) and checks it against ``task``."""
        from mtg_local.tasks import normalize_task_spec, resolve_task_name

        object.__setattr__(self, "task", normalize_task_spec(self.task))  # task files: absolute paths
        files = self.data_files.items() if isinstance(self.data_files, dict) else self.data_files
        try:
            pairs = tuple((str(t), str(f)) for t, f in files)
        except (TypeError, ValueError) as e:
            raise UserError(f"data_files must map task names to files, got {self.data_files!r}") from e
        names = split_task_names(self.task)
        if not names:
            raise UserError(f"task must name at least one task, got {self.task!r}")
        resolved = [resolve_task_name(n) for n in names]
        if len(set(resolved)) != len(resolved):
            raise UserError(f"--task names a task twice: {self.task!r}")
        keys = [resolve_task_name(t) for t, _ in pairs]
        if len(set(keys)) != len(keys):
            raise UserError(f"--data-file names a task twice: {[t for t, _ in pairs]}")
        for t in keys:
            if t not in resolved:
                raise UserError(f"--data-file {t}=FILE names a task that is not in --task {self.task}")
        if len(names) == 1 and pairs:  # the single-task form of a TASK=FILE entry
            if self.data_file is not None:
                raise UserError("give the task's data file once: --data-file FILE or --data-file TASK=FILE")
            object.__setattr__(self, "data_file", pairs[0][1])
            pairs = ()
        if len(names) > 1 and self.data_file is not None:
            raise UserError(f"--task {self.task} names several tasks: give each file's task, --data-file TASK=FILE")
        object.__setattr__(self, "data_files", pairs)

    @property
    def tasks(self) -> list[str]:
        """The task names of the run (one for a single-task run)."""
        return split_task_names(self.task)

    def data_file_of(self, task: str) -> str | None:
        """The local data file of ``task`` (the single-task ``data_file``, or its ``data_files`` entry)."""
        from mtg_local.tasks import resolve_task_name

        if len(self.tasks) == 1:
            return self.data_file
        return next((f for t, f in self.data_files if resolve_task_name(t) == resolve_task_name(task)), None)

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
        d["data_files"] = dict(self.data_files)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> MetaConfig:
        """Builds a config from ``to_dict`` output (unknown keys ignored), then ``overrides``."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs.update(overrides)
        return cls(**kwargs)
