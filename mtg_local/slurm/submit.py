"""Turn a grid into manifest files and ``sbatch --array`` commands, and submit them.

For each group of runs with the same resource request, ``plan`` writes nothing; ``write``
puts ``RUNS_ROOT/NAME/manifest[-K].txt`` (array index i = line i+1: shell-quoted ``mtg``
arguments) and ``manifest[-K].json`` (the same runs with task/method/engine/run_dir), and
``submit`` calls ``sbatch --parsable`` and returns the job ids.

Cells that wait for others (transfer cells, ``mtg_local.slurm.transfers``) are SLURM
dependencies, so a learn-then-transfer study is one submission:

* array mode: the cells waiting for the same source cells form their own array job with
  ``--dependency=afterok:JOB_TASK`` on exactly those source array tasks (and
  ``--kill-on-invalid-dep=yes``). Per task, not ``afterok:JOB`` on the whole source array:
  one failed cell anywhere in that array (a baseline, another task) would otherwise hold
  back every transfer, while this way a source that fails cancels only its own
  dependents (SLURM: DependencyNeverSatisfied) and the others start as soon as their own
  source is done. (``aftercorr`` pairs task i with task i and cannot express one source
  feeding several cells.)
* ``--shared``: one job per engine runs its cells in order (``mtg grid`` starts a
  dependent after its source). A cell whose source is on another engine runs in a later
  stage of its own engine (``mtg grid --stage K``), a job with ``--dependency=afterany``
  on the source's job. afterany, not afterok: a shared job exits non-zero when any one of
  its cells fails, which would hold back every dependent, even those whose own source
  completed; ``mtg grid`` checks each source's results.json itself and records the
  others "not_run" with the reason.

In a planned sbatch command, ``${JOBk}`` stands for the id of the k-th job of the plan
(filled in by ``submit`` / ``submit_shared``; printed as is by ``--dry-run``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from engines.errors import UserError
from mtg_local.grid.order import dependency_order
from mtg_local.slurm.grid import EngineEntry, Grid, RunSpec
from mtg_local.slurm.transfers import engine_stages

#: Keys of the grid's ``slurm:`` mapping (and of an engine's ``slurm:`` override).
SLURM_KEYS = ("template", "partition", "time", "gpus", "cpus_per_task", "mem", "max_parallel", "job_name", "extra", "export")


def repo_root() -> Path:
    """The mtg-local checkout (holds slurm/ and the templates); MTG_CHECKOUT overrides it."""
    if os.environ.get("MTG_CHECKOUT"):
        return Path(os.environ["MTG_CHECKOUT"]).absolute()
    return Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    """Resources and options for one array job (grid ``slurm:`` merged with engine overrides)."""

    template: str = "slurm/mtg_array.sbatch"
    partition: str | None = None
    time: str | None = None
    gpus: int | None = None  # None: the template's --gres line; 0: --gres=none
    cpus_per_task: int | None = None
    mem: str | None = None
    max_parallel: int | None = None
    job_name: str | None = None
    extra: tuple[str, ...] = ()
    export: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.gpus is not None and (not isinstance(self.gpus, int) or self.gpus < 0):
            raise UserError(f"slurm.gpus must be an integer >= 0, got {self.gpus!r}")
        if self.max_parallel is not None and (not isinstance(self.max_parallel, int) or self.max_parallel < 1):
            raise UserError(f"slurm.max_parallel must be an integer >= 1, got {self.max_parallel!r}")
        for key, value in self.export:
            if "," in value or "," in key or "=" in key:
                raise UserError(f"slurm.export {key}={value!r}: sbatch --export cannot carry ',' in names or values")

    def resource_flags(self) -> list[str]:
        """The sbatch options for partition, time, GPUs, CPUs, memory and the extra ones, in that order."""
        flags = [f"--partition={self.partition}"] if self.partition else []
        if self.time:
            flags.append(f"--time={self.time}")
        if self.gpus is not None:
            flags.append(f"--gres=gpu:{self.gpus}" if self.gpus > 0 else "--gres=none")
        if self.cpus_per_task:
            flags.append(f"--cpus-per-task={self.cpus_per_task}")
        if self.mem:
            flags.append(f"--mem={self.mem}")
        return flags + list(self.extra)

    @classmethod
    def merged(cls, *layers: dict[str, Any]) -> SlurmSettings:
        data: dict[str, Any] = {}
        for layer in layers:
            unknown = set(layer) - set(SLURM_KEYS)
            if unknown:
                raise UserError(f"unknown slurm settings {sorted(unknown)}; known: {', '.join(SLURM_KEYS)}")
            data.update(layer)
        if "extra" in data:
            extra = data["extra"]
            data["extra"] = tuple(shlex.split(extra) if isinstance(extra, str) else (str(x) for x in extra))
        if "export" in data:
            if not isinstance(data["export"], dict):
                raise UserError(f"slurm.export must be a mapping NAME: value, got {data['export']!r}")
            data["export"] = tuple(sorted((str(k), str(v)) for k, v in data["export"].items()))
        for key in ("partition", "time", "mem", "job_name", "template"):
            if data.get(key) is not None:
                data[key] = str(data[key])
        return cls(**data)


def job_ref(k: int) -> str:
    """The stand-in for the id of the plan's k-th job in a planned sbatch command."""
    return "${JOB%d}" % k


def with_ids(sbatch: tuple[str, ...], ids: list[str]) -> tuple[str, ...]:
    """``sbatch`` with the ids of the jobs submitted before it in place of their stand-ins."""
    out = []
    for arg in sbatch:
        for k, job_id in enumerate(ids):
            arg = arg.replace(job_ref(k), job_id)
        out.append(arg)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class ArrayJob:
    """One array job: its runs, manifest paths and the sbatch command.

    ``after``: (job index in the plan, array task index) of each source array task
    it waits for (``--dependency=afterok``, in ``sbatch``).
    """

    runs: tuple[RunSpec, ...]
    manifest: Path
    settings: SlurmSettings
    sbatch: tuple[str, ...]
    after: tuple[tuple[int, int], ...] = ()

    def manifest_text(self) -> str:
        return "".join(r.manifest_line() + "\n" for r in self.runs)


def _ordered(runs: list[RunSpec]) -> list[RunSpec]:
    """``runs`` with every cell after the cells it waits for (file order otherwise)."""
    by_name = {r.name: r for r in runs}
    return [by_name[n] for n in dependency_order({r.name: r.after for r in runs})]


def plan(grid: Grid) -> list[ArrayJob]:
    """Groups the grid's runs by resource request (and by the cells they wait for) and builds each
    group's sbatch command; a group's source jobs come before it."""
    base = dict(grid.slurm)
    groups: dict[tuple, list[RunSpec]] = {}
    for run in _ordered(grid.expand()):
        groups.setdefault((run.after, run.engine.slurm), []).append(run)
    task_of = {r.name: (k, t) for k, runs in enumerate(groups.values()) for t, r in enumerate(runs)}
    root = repo_root()
    out_dir = grid.runs_root / grid.name
    jobs = []
    for k, ((after, override), runs) in enumerate(groups.items()):
        settings = SlurmSettings.merged(base, dict(override))
        suffix = "" if len(groups) == 1 else f"-{k}"
        manifest = out_dir / f"manifest{suffix}.txt"
        template = Path(settings.template)
        if not template.is_absolute():
            template = root / template
        if not template.is_file():
            raise UserError(f"sbatch template not found: {template} (slurm.template in the grid, or set MTG_CHECKOUT)")
        n = len(runs)
        array = f"0-{n - 1}" + (f"%{settings.max_parallel}" if settings.max_parallel else "")
        cmd = ["sbatch", "--parsable", f"--array={array}", f"--job-name={settings.job_name or 'mtg-' + grid.name}"]
        cmd.append(f"--output={out_dir / 'logs'}/%A_%a.out")
        deps = tuple(task_of[a] for a in after)
        if deps:
            cmd.append("--dependency=afterok:" + ":".join(f"{job_ref(j)}_{t}" for j, t in deps))
            cmd.append("--kill-on-invalid-dep=yes")  # a failed source cancels its dependents, not holds them
        cmd.extend(settings.resource_flags())
        exports = {"MTG_MANIFEST": str(manifest), "MTG_CHECKOUT": str(root), "MTG_RUNS": str(grid.runs_root)}
        exports.update(dict(settings.export))
        cmd.append("--export=ALL," + ",".join(f"{k}={v}" for k, v in exports.items()))
        cmd.append(str(template))
        jobs.append(ArrayJob(tuple(runs), manifest, settings, tuple(cmd), deps))
    return jobs


SHARED_TEMPLATE = "slurm/mtg_grid.sbatch"


@dataclasses.dataclass(frozen=True)
class SharedJob:
    """One ``--shared`` job: every cell of one engine (of one stage), run by ``mtg grid`` on one engine.

    ``stage`` is None when the grid has one stage (the job runs all the engine's
    cells); ``after`` holds the plan indices of the jobs it waits for (afterany).
    """

    engine: EngineEntry
    runs: tuple[RunSpec, ...]
    settings: SlurmSettings
    sbatch: tuple[str, ...]
    log_dir: Path
    stage: int | None = None
    after: tuple[int, ...] = ()


def _engine_opt(opts: tuple[str, ...], key: str) -> str | None:
    for o in reversed(opts):
        k, _, v = o.partition("=")
        if k.strip() == key:
            return v.strip()
    return None


def plan_shared(grid: Grid, grid_file: str | os.PathLike[str]) -> list[SharedJob]:
    """One plain (non-array) sbatch command per engine of the grid, running ``mtg grid``.

    The template (default ``slurm/mtg_grid.sbatch``; a grid ``slurm.template``
    naming the array template is replaced by it) gets the grid file, the
    engine label and, for vLLM, the tensor-parallel size the grid sets (if
    any); it chooses data parallelism from the GPUs it gets (slurm/README.md).
    """
    base = dict(grid.slurm)
    root = repo_root()
    out_dir = grid.runs_root / grid.name
    runs = grid.expand()
    stages = engine_stages(runs)
    staged = max(stages.values(), default=0) > 0
    by_job: dict[tuple[int, str], list[RunSpec]] = {}
    for run in runs:
        by_job.setdefault((stages[run.name], run.engine.label), []).append(run)
    keys = [(k, e.label) for k in sorted(set(stages.values()) or {0}) for e in grid.engines
            if (k, e.label) in by_job or not staged]
    index = {key: i for i, key in enumerate(keys)}
    by_name = {r.name: r for r in runs}
    entries = {e.label: e for e in grid.engines}
    jobs = []
    for key in keys:
        stage, label = key
        entry = entries[label]
        cells = by_job.get(key, [])
        after = sorted({index[(stages[a], by_name[a].engine.label)] for r in cells for a in r.after} - {index[key]})
        settings = SlurmSettings.merged(base, dict(entry.slurm))
        # The array template runs one manifest line; a --shared job needs the grid template.
        array_template = Path(settings.template).name == Path(SlurmSettings.template).name
        template = Path(SHARED_TEMPLATE if array_template else settings.template)
        if not template.is_absolute():
            template = root / template
        if not template.is_file():
            raise UserError(f"sbatch template not found: {template} (slurm.template in the grid, or set MTG_CHECKOUT)")
        tag = f"{entry.label}-s{stage}" if staged else entry.label
        cmd = ["sbatch", "--parsable", f"--job-name={settings.job_name or 'mtg-' + grid.name}-{tag}"[:128]]
        cmd.append(f"--output={out_dir / 'logs'}/grid-{tag}-%j.out")
        if after:
            cmd.append("--dependency=afterany:" + ":".join(job_ref(j) for j in after))
        cmd.extend(settings.resource_flags())
        exports = {"MTG_GRID": str(Path(grid_file).absolute()), "MTG_GRID_ENGINE": entry.label,
                   "MTG_CHECKOUT": str(root), "MTG_RUNS": str(grid.runs_root), "MTG_GRID_RUNS_ROOT": str(grid.runs_root),
                   "MTG_GRID_BACKEND": entry.spec.partition(":")[0]}
        if staged:
            exports["MTG_GRID_STAGE"] = str(stage)
        tp = _engine_opt((*grid.engine_opts, *entry.opts), "tensor_parallel_size")
        if tp:
            exports["MTG_GRID_TP"] = tp
        exports.update(dict(settings.export))
        cmd.append("--export=ALL," + ",".join(f"{k}={v}" for k, v in exports.items()))
        cmd.append(str(template))
        jobs.append(SharedJob(entry, tuple(cells), settings, tuple(cmd), out_dir / "logs",
                              stage if staged else None, tuple(after)))
    return jobs


def submit_shared(jobs: list[SharedJob], *, env: dict[str, str] | None = None) -> list[str]:
    """Runs each ``--shared`` job's sbatch command (the ids of earlier jobs in its dependency); returns the
    job ids in order."""
    ids: list[str] = []
    for job in jobs:
        job.log_dir.mkdir(parents=True, exist_ok=True)  # sbatch does not create the --output folder
        try:
            proc = subprocess.run(with_ids(job.sbatch, ids), capture_output=True, text=True, env=env, timeout=120)
        except FileNotFoundError:
            raise UserError("sbatch not found on PATH: run on a SLURM login node (or use --dry-run)") from None
        if proc.returncode != 0:
            raise UserError(f"sbatch refused the grid job for {job.engine.spec}: {proc.stderr.strip() or proc.stdout.strip()}"
                            + _already(ids))
        ids.append(proc.stdout.strip().split(";")[0])
    return ids


def write(jobs: list[ArrayJob]) -> None:
    """Writes every job's manifest (.txt for the template, .json for people and reports)."""
    for job in jobs:
        job.manifest.parent.mkdir(parents=True, exist_ok=True)
        (job.manifest.parent / "logs").mkdir(exist_ok=True)
        job.manifest.write_text(job.manifest_text())
        meta = [dict(r.to_dict(), index=i) for i, r in enumerate(job.runs)]
        job.manifest.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def submit(jobs: list[ArrayJob], *, env: dict[str, str] | None = None) -> list[str]:
    """Writes the manifests and runs each sbatch command (the ids of earlier jobs in its dependency);
    returns the job ids in order.

    Raises:
        UserError: sbatch is missing or refuses a job (its message is included).
    """
    write(jobs)
    ids: list[str] = []
    for job in jobs:
        try:
            proc = subprocess.run(with_ids(job.sbatch, ids), capture_output=True, text=True, env=env, timeout=120)
        except FileNotFoundError:
            raise UserError("sbatch not found on PATH: run on a SLURM login node (or use --dry-run)") from None
        if proc.returncode != 0:
            raise UserError(f"sbatch refused the array job for {job.manifest}: {proc.stderr.strip() or proc.stdout.strip()}"
                            + _already(ids))
        ids.append(proc.stdout.strip().split(";")[0])
    return ids


def _already(ids: list[str]) -> str:
    return f" (jobs submitted before it, still queued: {', '.join(ids)}; scancel them or submit again: " \
        "complete cells are skipped)" if ids else ""
