"""A grid file (tasks x methods x engines) and its expansion into one run per array task.

Grid YAML (every key but ``tasks``, ``methods`` and ``engines`` optional)::

    name: paper-7b                 # runs land in RUNS_ROOT/name/<task>/<method>/<engine>
    runs_root: runs                # default: $MTG_RUNS, else ./runs (made absolute at submit)
    tasks: [word_sorting, {name: mmlu_ml, data_file: data/mmlu_ml.jsonl, label: mmlu},
            {tasks: [word_sorting, mmlu]},   # multi-task: train methods only (mtg train --task A,B)
            tasks/capitals.yaml]           # a task file (relative to the grid file; label: its name)
    methods: [zero_shot_cot, solution_opt, learned_loss, maml, reptile]
    engines:
      - vllm:Qwen/Qwen2.5-7B-Instruct
      - {spec: "vllm:meta-llama/Llama-3.3-70B-Instruct", label: llama70b, slurm: {gpus: 4}}
    engine_opts: [dtype=bfloat16, max_model_len=8192]   # every engine (KEY=VALUE); no secrets:
                                   # name their variable instead (api_key_env=MY_KEY_VAR)
    seeds: [0, 1, 2, 3, 4, 5]      # default: the protocol's (docs/protocol.md)
    args:                          # extra mtg arguments: for all, per sub-command, per method
      all: [--limit, 100]          # protocol flags (--steps, --limit, ...) only here: one protocol per grid
      train: [--joint-template, maml]
      copro: [--breadth, 4]
    slurm: {template: slurm/mtg_array.sbatch, partition: gpu, time: "08:00:00", gpus: 1,
            cpus_per_task: 8, mem: 64G, max_parallel: 4, extra: [--account=abc],
            export: {HF_HOME: /scratch/hf}}
    transfer:                      # cells applying what a train/baseline cell learned (mtg_local.slurm.transfers)
      - {from: "*/learned_loss/vllm_Qwen_Qwen2.5-7B-Instruct", tasks: ["*"], engines: ["*"]}

Protocol flags (``docs/protocol.md``: --steps, --seeds, --temperature, ...) may only appear
under ``args.all`` (or ``seeds``): a per-method or per-command value would give the rows of
one table different protocols. Runs whose engines carry different ``slurm`` overrides (e.g. a 70B model on 4 GPUs) go to
separate array jobs, one per distinct resource request.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from engines.errors import UserError
from mtg_local.runs.secrets import is_secret_key

METHOD_COMMANDS: dict[str, str] = {
    "zero_shot_cot": "eval",
    "solution_opt": "eval",
    "dspy_program": "eval",
    "learned_loss": "train",
    "maml": "train",
    "reptile": "train",
    "joint": "train",
    "prompt_opt": "baseline",
    "copro": "baseline",
    "miprov2": "baseline",
    "gepa": "baseline",
}
_GRID_KEYS = {"name", "runs_root", "tasks", "methods", "engines", "engine_opts", "seeds", "args", "slurm", "transfer"}


class GridError(UserError):
    """A grid file is malformed; the message names the key and the value."""


def label_of(text: str) -> str:
    """A file-name-safe label: ``vllm:Qwen/Qwen2.5-7B-Instruct`` -> ``vllm_Qwen_Qwen2.5-7B-Instruct``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, int, float)):
        return tuple(shlex.split(str(value)))
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise GridError(f"grid key {key!r} must be a list of strings/numbers, got {value!r}")
    return tuple(str(v) for v in value)


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """One task column: registry name, optional local data file, label for the run dir.

    A multi-task entry (``{tasks: [A, B], label: ...}``) holds several tasks in
    ``members``: its train cells meta-train one prompt across them (``mtg train
    --task A,B --data-file A=FILE ...``); eval and baseline methods run one task
    and skip it.
    """

    name: str
    label: str
    data_file: str | None = None
    args: tuple[str, ...] = ()
    members: tuple[TaskEntry, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise GridError("every grid task needs a non-empty name")
        if self.members and len(self.members) < 2:
            raise GridError(f"grid task {self.label!r}: 'tasks' needs two or more tasks, got {len(self.members)}")

    @property
    def is_multi(self) -> bool:
        return bool(self.members)

    def task_argv(self) -> list[str]:
        """``--task`` and ``--data-file`` arguments of its cells."""
        if not self.members:
            return ["--task", self.name, *(["--data-file", self.data_file] if self.data_file else [])]
        argv = ["--task", self.name]
        for m in self.members:
            argv += ["--data-file", f"{m.name}={m.data_file}"] if m.data_file else []
        return argv

    def datasets(self) -> set[tuple[str, str | None]]:
        """(task name, data file) of each task it holds."""
        return {(m.name, m.data_file) for m in (self.members or (self,))}

    @classmethod
    def parse(cls, raw: Any, known: dict[str, TaskEntry] | None = None) -> TaskEntry:
        """One ``tasks`` item; ``known`` (label -> entry) resolves the members of a multi-task entry."""
        if isinstance(raw, str):
            return cls(name=raw, label=label_of(_task_file_name(raw) or raw))
        if isinstance(raw, dict) and "tasks" in raw:
            return cls._parse_multi(raw, known or {})
        if not isinstance(raw, dict) or "name" not in raw:
            raise GridError(f"a grid task must be a name or a mapping with 'name' (or 'tasks'), got {raw!r}")
        unknown = set(raw) - {"name", "label", "data_file", "args"}
        if unknown:
            raise GridError(f"unknown keys {sorted(unknown)} in grid task {raw!r} (name, label, data_file, args)")
        data_file = str(raw["data_file"]) if raw.get("data_file") else None
        default_label = (_task_file_name(str(raw["name"])) or raw["name"]) + (f"-{Path(data_file).stem}" if data_file else "")
        return cls(
            name=str(raw["name"]),
            label=label_of(str(raw.get("label") or default_label)),
            data_file=data_file,
            args=_str_list(raw.get("args"), f"tasks[{raw['name']}].args"),
        )

    @classmethod
    def _parse_multi(cls, raw: dict[str, Any], known: dict[str, TaskEntry]) -> TaskEntry:
        unknown = set(raw) - {"tasks", "label", "args"}
        if unknown:
            raise GridError(f"unknown keys {sorted(unknown)} in multi-task grid task {raw!r} (tasks, label, args)")
        if not isinstance(raw["tasks"], list):
            raise GridError(f"grid task {raw!r}: 'tasks' must be a list of task labels, names or mappings")
        members = []
        for item in raw["tasks"]:
            # The label of another grid task (its name and data file), else a task of its own.
            m = known[item] if isinstance(item, str) and item in known else cls.parse(item)
            if m.is_multi or m.args:
                raise GridError(f"grid task {raw!r}: member {m.label!r} has {'several tasks' if m.is_multi else 'args'}; "
                                "a multi-task entry takes plain tasks and its own 'args'")
            members.append(m)
        return cls(
            name=",".join(m.name for m in members),
            label=label_of(str(raw["label"])) if raw.get("label") else "+".join(m.label for m in members),
            args=_str_list(raw.get("args"), f"tasks[{raw.get('label') or raw['tasks']}].args"),
            members=tuple(members),
        )


@dataclasses.dataclass(frozen=True)
class EngineEntry:
    """One engine/model: spec, options, label, and SLURM overrides for its runs."""

    spec: str
    label: str
    opts: tuple[str, ...] = ()
    slurm: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.spec or ":" not in self.spec and self.spec != "fake":
            raise GridError(f"grid engine spec must look like 'vllm:MODEL', 'openai:MODEL' or 'fake', got {self.spec!r}")
        for o in self.opts:
            if "=" not in o:
                raise GridError(f"engine option must be KEY=VALUE, got {o!r} for engine {self.spec!r}")

    @classmethod
    def parse(cls, raw: Any) -> EngineEntry:
        if isinstance(raw, str):
            return cls(spec=raw, label=label_of(raw))
        if not isinstance(raw, dict) or "spec" not in raw:
            raise GridError(f"a grid engine must be a spec or a mapping with 'spec', got {raw!r}")
        unknown = set(raw) - {"spec", "label", "opts", "slurm"}
        if unknown:
            raise GridError(f"unknown keys {sorted(unknown)} in grid engine {raw!r} (spec, label, opts, slurm)")
        slurm = raw.get("slurm") or {}
        if not isinstance(slurm, dict):
            raise GridError(f"engine {raw['spec']!r}: 'slurm' must be a mapping, got {slurm!r}")
        return cls(
            spec=str(raw["spec"]),
            label=label_of(str(raw.get("label") or raw["spec"])),
            opts=refuse_secrets(raw.get("opts"), f"engines[{raw['spec']}].opts"),
            slurm=tuple(sorted(slurm.items())),
        )


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One grid cell = one run dir = one array task.

    ``name`` is its run dir under ``RUNS_ROOT/NAME`` (``task/method/engine`` labels);
    ``after`` names the cells it waits for (a transfer cell: its source, whose run
    dir its ``--from-run`` names).
    """

    task: TaskEntry
    method: str
    engine: EngineEntry
    run_dir: Path
    argv: tuple[str, ...]
    name: str = ""
    after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.task.label}/{self.method}/{self.engine.label}")

    @property
    def command(self) -> str:
        return self.argv[0]

    def manifest_line(self) -> str:
        """The shell-quoted ``mtg`` arguments (the array template ``eval``s this line)."""
        return shlex.join(self.argv)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task.label,
            "method": self.method,
            "engine": self.engine.spec,
            "run_dir": str(self.run_dir),
            "argv": list(self.argv),
            **({"after": list(self.after)} if self.after else {}),
        }


@dataclasses.dataclass(frozen=True)
class Grid:
    """A parsed grid file (see the module docstring)."""

    name: str
    runs_root: Path
    tasks: tuple[TaskEntry, ...]
    methods: tuple[str, ...]
    engines: tuple[EngineEntry, ...]
    seeds: tuple[int, ...] | None = None  # None: the protocol's default seeds
    engine_opts: tuple[str, ...] = ()
    args: tuple[tuple[str, tuple[str, ...]], ...] = ()
    slurm: tuple[tuple[str, Any], ...] = ()
    transfers: tuple[Any, ...] = ()  # mtg_local.slurm.transfers.TransferEntry

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise GridError(f"grid name must be letters, digits, '.', '_' or '-', got {self.name!r}")
        for what, items in (("tasks", self.tasks), ("methods", self.methods), ("engines", self.engines)):
            if not items:
                raise GridError(f"grid needs at least one entry under {what!r}")
        for m in self.methods:
            if m not in METHOD_COMMANDS:
                raise GridError(f"unknown method {m!r} in grid; known: {', '.join(METHOD_COMMANDS)}")
        if self.seeds is not None and (not self.seeds or any(s < 0 for s in self.seeds)):
            raise GridError(f"grid seeds must be a non-empty list of integers >= 0, got {list(self.seeds)}")
        for kind, labels in (("task", [t.label for t in self.tasks]), ("engine", [e.label for e in self.engines])):
            if len(set(labels)) != len(labels):
                raise GridError(f"two grid {kind}s share a label ({labels}); give them distinct 'label's")
        allowed = {"all", *set(METHOD_COMMANDS.values()), *METHOD_COMMANDS}
        from mtg_local.protocol_flags import protocol_flags

        flags = protocol_flags()
        for key, values in self.args:
            if key not in allowed:
                raise GridError(f"grid 'args' key {key!r} must be 'all', a sub-command or a method")
            bad = [v for v in values if v.split("=", 1)[0] in flags]
            if key != "all" and bad:
                raise GridError(f"grid 'args.{key}' sets protocol flag {bad[0]}: protocol settings must be equal "
                                "across the grid; put them under 'args.all' (docs/protocol.md)")
        for t in self.tasks:
            bad = [v for v in t.args if v.split("=", 1)[0] in flags]
            if bad:
                raise GridError(f"grid task {t.name!r} sets protocol flag {bad[0]} in its args; put it under "
                                "'args.all' (docs/protocol.md)")
        multi = [t.label for t in self.tasks if t.is_multi]
        if multi and not any(METHOD_COMMANDS[m] == "train" for m in self.methods):
            raise GridError(f"grid task {multi[0]!r} holds several tasks: only train methods run on it, and the "
                            "grid has none")
        if self.transfers:
            self.expand()  # the transfer cells' sources and targets resolve (GridError naming the cell otherwise)

    def args_for(self, key: str) -> tuple[str, ...]:
        return dict(self.args).get(key, ())

    def cell(self, task: TaskEntry, method: str, engine: EngineEntry, *, run_dir: Path | None = None,
             extra: tuple[str, ...] = (), name: str = "", after: tuple[str, ...] = ()) -> RunSpec:
        """The cell running ``method`` on ``task`` with ``engine`` (default run dir: ``task/method/engine``)."""
        cmd = METHOD_COMMANDS[method]
        run_dir = run_dir or self.runs_root / self.name / task.label / method / engine.label
        argv = [cmd, *task.task_argv(), *task.args, "--method", method, "--engine", engine.spec]
        for o in (*self.engine_opts, *engine.opts):
            argv += ["--engine-opt", o]
        if self.seeds is not None:
            argv += ["--seeds", ",".join(str(s) for s in self.seeds)]
        argv += [*self.args_for("all"), *self.args_for(cmd), *self.args_for(method), *extra]
        argv += ["--out", str(run_dir)]
        return RunSpec(task, method, engine, run_dir, tuple(argv), name=name, after=after)

    def expand(self) -> list[RunSpec]:
        """Every (task, method, engine) cell, tasks outermost, in file order; then the transfer cells.

        A multi-task entry gets the train methods only. Transfer cells
        (``mtg_local.slurm.transfers``) follow, each after its source in the list.
        """
        runs = [self.cell(task, method, engine) for task in self.tasks for method in self.methods
                if not (task.is_multi and METHOD_COMMANDS[method] != "train") for engine in self.engines]
        if self.transfers:
            from mtg_local.slurm.transfers import transfer_cells

            runs += transfer_cells(self, runs)
        return runs


def refuse_secrets(opts: Any, where: str) -> tuple[str, ...]:
    """``opts`` (``KEY=VALUE`` engine options of a grid or of ``mtg grid --engine-opt``), refusing secrets.

    Every option is copied into each cell's command line, the array manifest,
    ``--dry-run`` output and SLURM logs, so a key there would be written out
    many times: secrets go in the environment, named by e.g. ``api_key_env``.

    Raises:
        GridError: an option's key looks secret (the message never holds its value).
    """
    opts = _str_list(opts, where)
    for o in opts:
        key = o.partition("=")[0].strip()
        if is_secret_key(key):
            raise GridError(
                f"{where}: {key!r} looks like a secret; a grid's options are written into every cell's "
                f"command line, the manifest and the logs. Put it in an environment variable and name "
                f"that variable instead (e.g. api_key_env=MY_KEY_VAR)"
            )
    return opts


def _task_file_name(spec: str) -> str | None:
    """The task name a task file defines (the file is checked here: a wrong key stops the grid), or None."""
    from mtg_local.tasks import TaskDefinition, is_task_file

    return TaskDefinition.load(spec).name if is_task_file(spec) else None


def _absolute_task_files(raw: Any, base: Path) -> Any:
    """The ``tasks`` list with task file paths made absolute against ``base`` (the grid file's folder)."""
    from mtg_local.tasks import is_task_file

    def fix(item: Any) -> Any:
        if isinstance(item, str):
            return str((base / Path(item).expanduser()).resolve()) if is_task_file(item) else item
        if isinstance(item, dict) and "tasks" in item and isinstance(item["tasks"], list):
            return {**item, "tasks": [fix(t) for t in item["tasks"]]}
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            return {**item, "name": fix(item["name"])}
        return item

    return [fix(t) for t in raw] if isinstance(raw, list) else raw


def parse_grid(raw: Any, *, source: str = "grid", runs_root: str | None = None, base_dir: Path | None = None) -> Grid:
    """Validates a loaded grid mapping; relative ``runs_root`` resolves against the cwd, relative task
    files against ``base_dir`` (the grid file's folder; default the cwd)."""
    if not isinstance(raw, dict):
        raise GridError(f"{source}: the grid must be a YAML mapping, got {type(raw).__name__}")
    unknown = set(raw) - _GRID_KEYS
    if unknown:
        raise GridError(f"{source}: unknown grid keys {sorted(unknown)}; known: {sorted(_GRID_KEYS)}")
    for key in ("tasks", "methods", "engines"):
        if not isinstance(raw.get(key), list):
            raise GridError(f"{source}: {key!r} must be a list, got {raw.get(key)!r}")
    seeds = raw.get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if seeds is not None and not (
        isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise GridError(f"{source}: 'seeds' must be a list of integers, got {seeds!r}")
    args = raw.get("args") or {}
    if isinstance(args, list):
        args = {"all": args}
    if not isinstance(args, dict):
        raise GridError(f"{source}: 'args' must be a mapping (all/eval/train/<method>: [...]), got {args!r}")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise GridError(f"{source}: 'slurm' must be a mapping, got {slurm!r}")
    root = runs_root or raw.get("runs_root") or os.environ.get("MTG_RUNS") or "runs"
    transfers = raw.get("transfer") or []
    if not isinstance(transfers, list):
        raise GridError(f"{source}: 'transfer' must be a list of mappings (from, tasks, methods, engines), "
                        f"got {transfers!r}")
    from mtg_local.slurm.transfers import TransferEntry

    return Grid(
        name=str(raw.get("name") or Path(source).stem),
        runs_root=Path(root).expanduser().absolute(),
        tasks=_parse_tasks(_absolute_task_files(raw["tasks"], base_dir or Path.cwd())),
        methods=tuple(str(m) for m in raw["methods"]),
        engines=tuple(EngineEntry.parse(e) for e in raw["engines"]),
        seeds=tuple(seeds) if seeds is not None else None,
        engine_opts=refuse_secrets(raw.get("engine_opts"), "engine_opts"),
        args=tuple(sorted((str(k), _str_list(v, f"args.{k}")) for k, v in args.items())),
        slurm=tuple(sorted(slurm.items())),
        transfers=tuple(TransferEntry.parse(t, i) for i, t in enumerate(transfers)),
    )


def _parse_tasks(raw: list[Any]) -> tuple[TaskEntry, ...]:
    """The ``tasks`` list; a multi-task entry may name the other entries by label (so it parses after them)."""
    single = {i: TaskEntry.parse(t) for i, t in enumerate(raw) if not (isinstance(t, dict) and "tasks" in t)}
    known = {t.label: t for t in single.values()}
    return tuple(single[i] if i in single else TaskEntry.parse(t, known) for i, t in enumerate(raw))


def load_grid(path: str | os.PathLike[str], *, runs_root: str | None = None) -> Grid:
    """Reads and validates a grid YAML file."""
    p = Path(path)
    if not p.is_file():
        raise GridError(f"grid file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise GridError(f"grid file {p} is not valid YAML: {e}") from e
    return parse_grid(raw, source=str(p), runs_root=runs_root, base_dir=p.resolve().parent)
