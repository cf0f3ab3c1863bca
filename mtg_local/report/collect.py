"""Find and read the results of many runs, and list the ones that cannot be reported.

``collect(paths)`` searches each path recursively for ``results.json`` files and for run
dirs (folders with ``config.json``). Complete runs become ``RunRecord``s; everything else
becomes a ``Problem`` that the report lists, never silently drops:

* ``corrupt``    results.json is not JSON or lacks required fields (path + reason);
* ``failed``     results.json has status "failed" (its error text), or every request failed;
* ``degraded``   status "degraded", or more failed requests than ``mtg_local.runs.health``
                 allows (also for results written before that rule): never a table cell;
* ``interrupted`` results.json has status "interrupted": stopped by a signal, resumable
                 (its message says how);
* ``incomplete`` a run dir with config.json but no results.json (``running`` when a live
                 process holds its lock; the last checkpointed step when there is one);
* ``other_protocol`` a complete run whose ``protocol_hash`` differs from the main table's
                 (the most common one): it gets its own table, and the problem names the
                 differing protocol fields.

A run's column is its task's identity (results.json ``task_info.identity``, docs/tasks.md):
the task's definition and a content hash of its data, so two data files never share a
column and one file is one column however its path was written. The paper's task names
are aliased (``bbh_word_sorting`` -> ``word_sorting``), a synthetic (generated)
word-sorting set is the column ``synthetic_word_sorting`` whatever its recorded name, and
one task name with several identities gets one column per identity, labelled by the
shortest part of its data file's (or task file's) path that tells them apart. Runs
recorded before identities existed fall back to the data file's path or Hub name.
Tables are per protocol *settings* (results.json ``settings_hash``; older runs: their
``protocol_hash``), whose runs' ``protocol_hash`` also covers their task.

A prompt optimizer's test runs the task model only (``PROMPT_OPTIMIZERS``: COPRO, MIPROv2,
GEPA, TextGrad's prompt optimization): its prompt / reflection / optimizer model is
``RunRecord.optimizer``, shown in the row label of the task model's table, not a table of
its own (``mtg_local.report.tables.row_key``).

Transfer (``mtg_local.report.transfer``): a run records where its prompts were learned
(``RunRecord.learned_from``): an ``mtg eval --from-run`` run its results.json ``source``,
a meta-training or prompt-optimization run itself (its own test). Such an eval and a
multi-task training run (one result per task, ``RunRecord.per_task``) are
``transfer_only``: they go to the transfer table, not to the Table-2 cells of the method
they ran (a solution_opt eval with a learned loss prompt is not the solution_opt baseline).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from engines.errors import UserError
from mtg_local.protocol import protocol_diff
from mtg_local.runs.health import assess
from mtg_local.runs.lock import describe_holder, is_locked, read_holder
from mtg_local.runs.run_dir import RESULTS_SCHEMA_VERSION

_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """One task's test result inside a multi-task run."""

    task: str  # column key, as RunRecord.task
    dataset: str
    per_seed: dict[str, float]
    mean: float
    std: float
    n_questions: int


@dataclasses.dataclass(frozen=True)
class LearnedFrom:
    """The run whose learned prompts a run applied (a row of the transfer table)."""

    run_id: str
    tasks: tuple[tuple[str, str], ...]  # (column key, dataset) of each task it learned on
    engine: str  # forward engine (" / optimizer" appended when it differs)
    method: str
    protocol_hash: str
    prompts_hash: str
    run_dir: str
    kept_initial: bool | None = None  # the source kept nothing it tried (its starting prompt); None: unknown
    protocol_diff: tuple[str, ...] = ()  # protocol fields in which the applying run differs from the source

    @property
    def key(self) -> str:
        """A transfer-table row: one source run with one set of applied texts."""
        return f"{self.run_id}/{self.prompts_hash}"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One complete run, as the report needs it (accuracies in [0, 1])."""

    path: Path  # the run dir
    task: str  # column key (task name, + a data-file label when identities of one task name differ)
    method: str
    engine: str  # forward engine spec (" / optimizer" appended when it differs, except for PROMPT_OPTIMIZERS)
    per_seed: dict[str, float]
    mean: float
    std: float
    n_questions: int
    usage: dict[str, Any]
    cost_usd: float | None
    wall_s: float
    history: tuple[dict[str, Any], ...] = ()
    finished_at: str = ""
    data_file: str | None = None
    dataset: str = ""  # identity: "task:ID", "data:HASH", "synthetic:...", "hub:NAME/CONFIG", legacy "file:PATH", ""
    protocol_hash: str = ""  # the table key: settings_hash (older runs: protocol_hash); "" when none recorded
    protocol: dict[str, Any] | None = None
    learned_from: LearnedFrom | None = None  # where the prompts it ran with were learned (transfer)
    transfer_only: bool = False  # not a Table-2 cell: an eval with another run's prompts, or a multi-task run
    per_task: tuple[TaskResult, ...] = ()  # a multi-task run's result on each task
    optimizer: str = ""  # a prompt optimizer's prompt/reflection model when it is not the task model

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    @property
    def engines_label(self) -> str:
        """Every engine the run used (the task model, then " / " the optimizer's when it differs)."""
        return f"{self.engine} / {self.optimizer}" if self.optimizer else self.engine


@dataclasses.dataclass(frozen=True)
class Problem:
    """A run (or file) left out of the tables, with the reason."""

    path: Path
    kind: str  # corrupt | failed | degraded | interrupted | incomplete | running | other_protocol
    detail: str


@dataclasses.dataclass
class Collection:
    runs: list[RunRecord] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(results.json files, dirs holding config.json) under ``root``, sorted."""
    results, run_dirs = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        if "results.json" in filenames:
            results.append(Path(dirpath) / "results.json")
        if "config.json" in filenames:
            run_dirs.append(Path(dirpath))
    return results, run_dirs


def _num(d: dict[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where}.{key} must be a number, got {v!r}")
    return float(v)


def parse_results(data: Any, path: Path, hints: dict[str, str] | None = None) -> RunRecord | Problem:
    """Validates one results.json body (schema: docs/results_schema.md).

    ``hints`` (dataset identity -> the path or name it was read from) collects what
    ``collect`` labels columns by.
    """
    hints = hints if hints is not None else {}
    if not isinstance(data, dict):
        return Problem(path, "corrupt", f"top level is {type(data).__name__}, not an object")
    version = data.get("schema_version")
    if version is not None and version != RESULTS_SCHEMA_VERSION:
        return Problem(path, "corrupt", f"schema_version {version!r}, this report reads {RESULTS_SCHEMA_VERSION}")
    status = data.get("status")
    usage = data.get("engine_usage") if isinstance(data.get("engine_usage"), dict) else {}
    health = assess(usage)
    if status == "complete" and not health.ok:  # results written before the rule existed
        status = health.status
    if status in ("degraded", "failed") and health.errors:
        first = f"; first error: {health.first_error}" if health.first_error else ""
        return Problem(path, status, f"{health.errors} of {health.requests} requests failed{first}")
    if status != "complete":
        kind = status if status in ("failed", "degraded", "interrupted") else "incomplete"
        return Problem(path, kind, str(data.get("error") or data.get("message") or f"status {status!r}"))
    try:
        for key in ("task", "method", "engine"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"{key!r} must be a non-empty string, got {data.get(key)!r}")
        acc = data.get("test_accuracy")
        if not isinstance(acc, dict):
            raise ValueError(f"'test_accuracy' must be an object, got {acc!r}")
        per_seed = acc.get("per_seed") or {}
        if not isinstance(per_seed, dict):
            raise ValueError("test_accuracy.per_seed must be an object")
        per_seed = {str(k): _num(per_seed, k, "test_accuracy.per_seed") for k in per_seed}
        mean, std = _num(acc, "mean", "test_accuracy"), float(acc.get("std") or 0.0)
        if not 0.0 <= mean <= 1.0:
            raise ValueError(f"test_accuracy.mean must be in [0, 1], got {mean}")
        if not per_seed:
            per_seed = {"?": mean}
        engine = data["engine"]
        opt = data.get("optimizer_engine")
        optimizer = ""
        if opt and opt != engine:
            if data["method"] in PROMPT_OPTIMIZERS:
                optimizer = str(opt)
            else:
                engine = f"{engine} / {opt}"
        config = data.get("config") if isinstance(data.get("config"), dict) else {}
        history = data.get("history") or []
        info = data.get("task_info") if isinstance(data.get("task_info"), dict) else {}
        task, dataset = task_identity(data["task"], info, config.get("data_file") or None, hints)
        protocol = data.get("protocol") if isinstance(data.get("protocol"), dict) else None
        learned_from, per_task = _transfer_fields(data, path.parent, hints)
        return RunRecord(
            path=path.parent,
            task=task,
            method=data["method"],
            engine=engine,
            per_seed=per_seed,
            mean=mean,
            std=std,
            n_questions=int(data.get("n_questions") or 0),
            usage=data.get("engine_usage") if isinstance(data.get("engine_usage"), dict) else {},
            cost_usd=float(data["cost_usd"]) if isinstance(data.get("cost_usd"), (int, float)) else None,
            wall_s=float(data.get("wall_s") or 0.0),
            history=tuple(h for h in history if isinstance(h, dict)) if isinstance(history, list) else (),
            finished_at=str(data.get("finished_at") or ""),
            data_file=config.get("data_file") or None,
            dataset=dataset,
            protocol_hash=str(data.get("settings_hash") or data.get("protocol_hash") or "") if protocol is not None else "",
            protocol=protocol,
            learned_from=learned_from,
            transfer_only=isinstance(data.get("source"), dict) or bool(per_task),
            per_task=per_task,
            optimizer=optimizer,
        )
    except (ValueError, TypeError, KeyError) as e:
        return Problem(path, "corrupt", str(e))


#: Methods whose own test applies what they learned with solution optimization (transfer diagonal).
META_METHODS = ("learned_loss", "maml", "reptile", "joint")
#: Methods whose test runs only the task model (their optimizer model is a row label, not a table).
PROMPT_OPTIMIZERS = ("prompt_opt", "copro", "miprov2", "gepa")
#: How each learning method's own test applied what it learned: the ``mtg eval`` method of its
#: transfer table (its own test is that table's cell where it learned).
OWN_TEST_METHOD = {**{m: "solution_opt" for m in META_METHODS}, "prompt_opt": "zero_shot_cot",
                   "copro": "dspy_program", "miprov2": "dspy_program", "gepa": "dspy_program"}


def _engine_label(engine: Any, optimizer: Any) -> str:
    return f"{engine} / {optimizer}" if optimizer and optimizer != engine else str(engine)


def _learned_tasks(source: dict[str, Any], hints: dict[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """(column key, dataset) of each task a source run learned on."""
    info = source.get("task_info") if isinstance(source.get("task_info"), dict) else {}
    names = source.get("tasks")
    if isinstance(names, list) and names:
        infos = info.get("tasks") if isinstance(info.get("tasks"), dict) else {}
        files = source.get("data_files") if isinstance(source.get("data_files"), dict) else {}
        return tuple(task_identity(str(n), infos.get(n) or {}, files.get(n), hints) for n in names)
    return (task_identity(str(source["task"]), info, source.get("data_file") or None, hints),)


def _learned_from(source: dict[str, Any], hints: dict[str, str] | None = None) -> LearnedFrom:
    for key in ("run_id", "task", "method", "engine"):
        if not isinstance(source.get(key), str) or not source[key]:
            raise ValueError(f"source.{key} must be a non-empty string, got {source.get(key)!r}")
    kept = source.get("kept_initial")
    diff = source.get("protocol_diff")
    return LearnedFrom(run_id=source["run_id"], tasks=_learned_tasks(source, hints),
                       engine=_engine_label(source["engine"], source.get("optimizer_engine")), method=source["method"],
                       protocol_hash=str(source.get("settings_hash") or source.get("protocol_hash") or ""),
                       prompts_hash=str(source.get("prompts_hash") or ""), run_dir=str(source.get("run_dir") or ""),
                       kept_initial=kept if isinstance(kept, bool) else None,
                       protocol_diff=tuple(str(k) for k in diff) if isinstance(diff, dict) else ())


def _transfer_fields(data: dict[str, Any], run_dir: Path,
                     hints: dict[str, str] | None = None) -> tuple[LearnedFrom | None, tuple[TaskResult, ...]]:
    """``learned_from`` and ``per_task`` of a results.json body (see the module docstring)."""
    from mtg_local.runs import transfer as T

    if isinstance(data.get("source"), dict):
        return _learned_from(data["source"], hints), ()
    if data.get("method") not in OWN_TEST_METHOD or not T.learned_texts(data):
        return None, ()
    # the texts a transfer of this run applies (so its own test and its transfers share a row)
    applied = T.dspy_applied(T.dspy_program_of(data)) if data["method"] in T.DSPY_METHODS else T.transferable(data)
    own = _learned_from(T.source_record(data, run_dir, applied), hints)
    per_task = data.get("per_task")
    if not isinstance(per_task, dict):
        return own, ()
    results = []
    for (task, dataset), name in zip(own.tasks, data.get("tasks") or []):
        acc = per_task[name]["test_accuracy"]
        per_seed = {str(k): _num(acc["per_seed"], k, f"per_task.{name}.test_accuracy.per_seed")
                    for k in acc["per_seed"]}
        results.append(TaskResult(task, dataset, per_seed, _num(acc, "mean", f"per_task.{name}.test_accuracy"),
                                  float(acc.get("std") or 0.0), int(per_task[name].get("n_questions") or 0)))
    return own, tuple(results)


#: Task names that are aliases of a paper task (results name -> column name).
TASK_ALIASES = {"bbh_word_sorting": "word_sorting"}
SYNTHETIC_WORD_SORTING = "synthetic_word_sorting"


def task_identity(name: str, info: dict[str, Any], data_file: str | None,
                  hints: dict[str, str] | None = None) -> tuple[str, str]:
    """(column task name, dataset identity) of a run from its task name and ``task_info``.

    With a recorded ``task_info.identity``: a task file's or Python task's column is its
    name and ``task:<identity id>`` (definition and data); a built-in's is its name and
    ``data:<data hash>`` (the file's bytes or the Hub revision). Without one (older runs):
    the data file's path or the Hub name. A generated set (``task_info.source``
    "builtin...", or a ``synthetic_*`` name) is never the paper's task: a built-in
    ``word_sorting`` run becomes ``synthetic_word_sorting``. ``hints`` gets, per dataset
    identity, the path or name it was read from (for column labels).
    """
    hints = hints if hints is not None else {}
    source = str(info.get("source") or "")
    data_file = info.get("data_file") or data_file
    ident = info.get("identity") if isinstance(info.get("identity"), dict) else {}
    if source.startswith("builtin") or name.startswith("synthetic"):
        task = SYNTHETIC_WORD_SORTING if name in ("word_sorting", "bbh_word_sorting") else name
        return task, f"synthetic:{source or name}"
    task = TASK_ALIASES.get(name, name)
    if ident.get("kind") in ("file", "python") and ident.get("id"):
        key = f"task:{ident['id']}"
        hints.setdefault(key, str(info.get("task_file") or data_file or ident.get("source") or ""))
        return task, key
    if ident.get("data_hash"):
        key = f"data:{ident['data_hash']}"
        hub = f"hub:{info['dataset']}/{info.get('config') or ''}" if info.get("dataset") else ""
        hints.setdefault(key, str(data_file) if data_file else hub)
        return task, key
    if data_file:
        hints.setdefault(f"file:{data_file}", str(data_file))
        return task, f"file:{data_file}"
    if info.get("dataset"):
        return task, f"hub:{info['dataset']}/{info.get('config') or ''}"
    return task, ""


def dataset_label(dataset: str) -> str:
    """Short column suffix of a dataset identity (file stem, hub name, "synthetic", "builtin")."""
    kind, _, rest = dataset.partition(":")
    if kind == "file":
        return Path(rest).stem
    if kind == "hub":
        return rest.strip("/").replace("/", "-")
    return kind or "builtin"


def dataset_labels(datasets: list[str], hints: dict[str, str]) -> dict[str, str]:
    """Distinct column suffixes for one task name's datasets.

    A dataset read from a file is labelled by the fewest trailing parts of its path that
    tell it from the others ("mmlu", else "v1/mmlu"; the suffix dropped); two datasets read
    from one path (its content changed between runs) also get their hash. Others keep
    ``dataset_label``.
    """
    paths = {d: hints[d] for d in datasets if hints.get(d) and not hints[d].startswith("hub:")}
    labels = {d: (dataset_label(hints[d]) if d in hints and hints[d].startswith("hub:") else dataset_label(d))
              for d in datasets if d not in paths}
    if paths:
        parts = {d: Path(p).with_suffix("").parts for d, p in paths.items()}
        depth = 1
        while depth < max(len(x) for x in parts.values()) and len({x[-depth:] for x in parts.values()}) < len(parts):
            depth += 1
        for d, x in parts.items():
            labels[d] = "/".join(x[-depth:])
    for d in datasets:  # one path or name read twice with other content, or no hint: tell them apart
        if sum(labels[e] == labels[d] for e in datasets) > 1:
            kind, _, rest = d.partition(":")
            labels[d] += f" #{rest[:6]}" if kind in ("data", "task") else f" ({kind or 'unrecorded'})"
    return labels


def _incomplete(run_dir: Path) -> Problem:
    if is_locked(run_dir):
        return Problem(run_dir, "running", f"no results.json yet; in use by {describe_holder(read_holder(run_dir))}")
    detail = "no results.json (killed, cancelled or not finished)"
    try:
        ckpt = json.loads((run_dir / "checkpoint.json").read_text())
        step = ckpt.get("completed_step", ckpt.get("step")) if isinstance(ckpt, dict) else None
        detail += f"; checkpoint after outer step {step}: resume with mtg train --resume {run_dir}"
    except (OSError, ValueError):
        pass
    return Problem(run_dir, "incomplete", detail)


def _disambiguate_tasks(runs: list[RunRecord], hints: dict[str, str] | None = None) -> list[RunRecord]:
    """Appends a dataset label to a task name when one task name has several identities (``dataset_labels``).

    The tasks of multi-task results and of transfer sources count too, and are renamed alike.
    """
    hints = hints or {}
    datasets: dict[str, set] = {}
    for r in runs:
        pairs = [(r.task, r.dataset), *((t.task, t.dataset) for t in r.per_task)]
        pairs += list(r.learned_from.tasks) if r.learned_from else []
        for task, dataset in pairs:
            datasets.setdefault(task, set()).add(dataset)
    labels = {task: dataset_labels(sorted(ds), hints) for task, ds in datasets.items() if len(ds) > 1}

    def name(task: str, dataset: str) -> str:
        return f"{task} [{labels[task][dataset]}]" if task in labels else task

    out = []
    for r in runs:
        changes: dict[str, Any] = {"task": name(r.task, r.dataset)}
        if r.per_task:
            changes["per_task"] = tuple(dataclasses.replace(t, task=name(t.task, t.dataset)) for t in r.per_task)
        if r.learned_from:
            changes["learned_from"] = dataclasses.replace(
                r.learned_from, tasks=tuple((name(t, d), d) for t, d in r.learned_from.tasks))
        out.append(dataclasses.replace(r, **changes))
    return out


def protocol_groups(runs: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """Runs grouped by protocol hash, the most common first (ties: hash order; "" = none recorded)."""
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(r.protocol_hash, []).append(r)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0] == "", kv[0]))


def _protocol_problems(runs: list[RunRecord]) -> list[Problem]:
    """One ``other_protocol`` problem per run outside the main (most common) protocol."""
    groups = protocol_groups(runs)
    if len(groups) < 2:
        return []
    main_hash, main_runs = groups[0]
    main = main_runs[0].protocol or {}
    out = []
    for h, rs in groups[1:]:
        for r in rs:
            if r.protocol is None:
                detail = "no protocol recorded (results.json from before protocols): its own table"
            else:
                diff = protocol_diff(main, r.protocol)
                fields = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                detail = f"protocol {h} differs from the main table's {main_hash or '(none)'}: {fields}"
            out.append(Problem(r.path, "other_protocol", detail))
    return out


def collect(paths: list[str | os.PathLike[str]]) -> Collection:
    """Reads every run under ``paths`` (dirs searched recursively, or results.json files).

    Raises:
        UserError: a path does not exist, or nothing at all was found.
    """
    col = Collection()
    hints: dict[str, str] = {}
    seen_files: set[Path] = set()
    seen_dirs: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"no such run dir or file: {p}")
        if p.is_file():
            results, run_dirs = [p], []
        else:
            results, run_dirs = _walk(p)
        for f in results:
            f = f.resolve()
            if f in seen_files:
                continue
            seen_files.add(f)
            seen_dirs.add(f.parent)
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                col.problems.append(Problem(f, "corrupt", f"cannot read JSON: {e}"))
                continue
            item = parse_results(data, f, hints)
            (col.runs if isinstance(item, RunRecord) else col.problems).append(item)
        for d in run_dirs:
            d = d.resolve()
            if d not in seen_dirs:
                seen_dirs.add(d)
                col.problems.append(_incomplete(d))
    if not col.runs and not col.problems:
        raise UserError(f"no results.json or run dir (config.json) found under {', '.join(map(str, paths))}")
    col.runs = _disambiguate_tasks(col.runs, hints)
    col.problems += _protocol_problems(col.runs)
    return col
