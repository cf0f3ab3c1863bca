"""Transfer cells of a grid: what a train (or baseline) cell learned, applied to other tasks and models.

Grid YAML (a list; every key but ``from`` optional)::

    transfer:
      - from: word_sorting/learned_loss/qwen7b   # source cell(s): TASK/METHOD/ENGINE labels; * and ? match
        tasks: ["*"]                             # where to apply: task labels (default: every single-task entry)
        engines: [qwen7b, llama8b]               # engine labels (default: the source's own engine)
        methods: [solution_opt]                  # mtg eval methods (default: solution_opt; a
                                                 # copro/miprov2/gepa source: dspy_program)

Each (source, task, method, engine) is one ``mtg eval --from-run SOURCE_RUN_DIR`` cell, in
``RUNS_ROOT/NAME/<task>/<method>@<source task>.<source method>.<source engine>/<engine>``,
with the grid's arguments (so the grid's one protocol). It waits for its source
(``RunSpec.after``): ``mtg grid`` starts it once the source is complete and records it
"not_run", with the reason, when the source ends otherwise; ``mtg slurm submit``
expresses the order as SLURM dependencies (``mtg_local.slurm.submit``).

A source is a train cell (learned loss prompt / template) or a baseline cell (learned
system prompt; COPRO, MIPROv2, GEPA: a DSPy program): an eval cell learns nothing to
apply. What applies what is checked here, when the grid is read (``GridError`` naming the
cell): a COPRO/MIPROv2/GEPA source only with ``dspy_program`` (its instruction and demos
in DSPy's prompt, as its own test ran them), ``dspy_program`` only with such a source.
A transfer that would repeat a source's own test (its test's method on a task it learned
on, with its own engine) is left out: the transfer table's cell there is that run's own
test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from mtg_local.grid.order import dependency_order
from mtg_local.runs.transfer import DSPY_METHODS
from mtg_local.slurm.grid import METHOD_COMMANDS, Grid, GridError, RunSpec, _str_list

EVAL_METHODS = tuple(m for m, c in METHOD_COMMANDS.items() if c == "eval")  # --from-run is an mtg eval option
_KEYS = {"from", "tasks", "engines", "methods"}
#: The method a source's own test applied its prompts with (a transfer there repeats that test).
_OWN_TEST = {"prompt_opt": "zero_shot_cot", **{m: "dspy_program" for m in DSPY_METHODS}}


def _methods_for(entry: TransferEntry, src: RunSpec) -> tuple[str, ...]:
    """The eval methods that apply ``src``'s prompts (see the module docstring).

    Raises:
        GridError: an entry's method cannot apply this source's prompts.
    """
    dspy = src.method in DSPY_METHODS
    if entry.methods is None:
        return ("dspy_program",) if dspy else ("solution_opt",)
    for m in entry.methods:
        if dspy and m != "dspy_program":
            raise GridError(f"{entry.where}: source cell {src.name} is a {src.method} run, whose prompt is a DSPy "
                            f"program (instruction and demos); method {m!r} does not run it: use dspy_program "
                            "(mtg eval --method dspy_program)")
        if not dspy and m == "dspy_program":
            raise GridError(f"{entry.where}: method dspy_program applies a {', '.join(DSPY_METHODS)} cell's DSPy "
                            f"program; source cell {src.name} is a {src.method} run (methods: solution_opt, "
                            "zero_shot_cot)")
    return entry.methods


@dataclasses.dataclass(frozen=True)
class TransferEntry:
    """One ``transfer`` item: source cell patterns x target tasks x methods x engines."""

    sources: tuple[str, ...]
    tasks: tuple[str, ...] | None = None  # None: every single-task entry
    engines: tuple[str, ...] | None = None  # None: each source's own engine
    methods: tuple[str, ...] | None = None  # None: solution_opt (a DSPy source: dspy_program)
    where: str = "transfer"

    def __post_init__(self) -> None:
        if not self.sources:
            raise GridError(f"{self.where}: 'from' names no source cell")
        for m in self.methods or ():
            if m not in EVAL_METHODS:
                raise GridError(f"{self.where}: method {m!r} cannot apply a learned prompt (--from-run is an "
                                f"mtg eval option; methods: {', '.join(EVAL_METHODS)})")

    @classmethod
    def parse(cls, raw: Any, index: int) -> TransferEntry:
        where = f"transfer[{index}]"
        if not isinstance(raw, dict) or "from" not in raw:
            raise GridError(f"{where}: a transfer must be a mapping with 'from' (and tasks, engines, methods), "
                            f"got {raw!r}")
        unknown = set(raw) - _KEYS
        if unknown:
            raise GridError(f"{where}: unknown keys {sorted(unknown)} ({', '.join(sorted(_KEYS))})")
        opt = lambda key: _str_list(raw[key], f"{where}.{key}") if raw.get(key) is not None else None  # noqa: E731
        return cls(sources=_str_list(raw["from"], f"{where}.from"), tasks=opt("tasks"), engines=opt("engines"),
                   methods=opt("methods") or None, where=where)


def _match(patterns: Sequence[str], names: Sequence[str], what: str, where: str) -> list[str]:
    """The names matching any pattern, in ``names`` order; a pattern matching none is an error."""
    for p in patterns:
        if not any(fnmatchcase(n, p) for n in names):
            raise GridError(f"{where}: {what} {p!r} is not in the grid (its {what}s: {', '.join(names)})")
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


def _sources(entry: TransferEntry, base: Sequence[RunSpec]) -> list[RunSpec]:
    out: list[RunSpec] = []
    for p in entry.sources:
        matched = [r for r in base if fnmatchcase(r.name, p)]
        if not matched:
            example = next((r.name for r in base if r.command == "train"), base[0].name)
            raise GridError(f"{entry.where}: source cell {p!r} is not a cell of the grid (cells are "
                            f"TASK/METHOD/ENGINE labels, e.g. {example})")
        learning = [r for r in matched if r.command != "eval"]
        if not learning:
            r = matched[0]
            raise GridError(f"{entry.where}: source cell {r.name} is an eval cell ({r.method}), which learns no "
                            "prompt to apply; a source is a train or baseline cell")
        out += [r for r in learning if r not in out]
    return out


def transfer_cells(grid: Grid, base: Sequence[RunSpec]) -> list[RunSpec]:
    """The transfer cells of ``grid``, whose other cells are ``base`` (see the module docstring).

    Raises:
        GridError: a source, task or engine names nothing in the grid, a source is an
            eval cell, a method cannot apply a source's prompts, a target is a multi-task
            entry, or two entries make one cell.
    """
    single = [t.label for t in grid.tasks if not t.is_multi]
    tasks = {t.label: t for t in grid.tasks}
    engines = {e.label: e for e in grid.engines}
    cells: dict[str, tuple[RunSpec, str]] = {}
    for entry in grid.transfers:
        targets = _match(entry.tasks, list(tasks), "task", entry.where) if entry.tasks is not None else single
        multi = [t for t in targets if tasks[t].is_multi]
        if multi:
            raise GridError(f"{entry.where}: task {multi[0]!r} holds several tasks; mtg eval applies a prompt "
                            "to one task")
        for src in _sources(entry, base):
            on = _match(entry.engines, list(engines), "engine", entry.where) if entry.engines is not None \
                else [src.engine.label]
            methods = _methods_for(entry, src)
            own = "solution_opt" if src.command == "train" else _OWN_TEST.get(src.method)
            for label in targets:
                task = tasks[label]
                for method in methods:
                    for e in on:
                        if method == own and e == src.engine.label and task.datasets() <= src.task.datasets():
                            continue  # the source's own test
                        slot = f"{method}@{src.task.label}.{src.method}.{src.engine.label}"
                        name = f"{label}/{slot}/{e}"
                        if name in cells:
                            raise GridError(f"{entry.where}: transfer cell {name} is also made by "
                                            f"{cells[name][1]}; make it once")
                        run_dir = grid.runs_root / grid.name / label / slot / e
                        cells[name] = (grid.cell(task, method, engines[e], run_dir=run_dir, name=name,
                                                 extra=("--from-run", str(src.run_dir)), after=(src.name,)),
                                       entry.where)
    return [c for c, _ in cells.values()]


def engine_stages(runs: Sequence[RunSpec]) -> dict[str, int]:
    """Each cell's stage for ``--shared`` jobs (one job per engine and stage).

    A cell whose sources are all on its own engine runs in its source's job (``mtg
    grid`` orders them); one with a source on another engine runs a stage later than
    that source, in a job that SLURM starts after the source's job.

    Raises:
        UserError: a cell waits for a cell not in ``runs``, or cells wait in a cycle.
    """
    by_name = {r.name: r for r in runs}
    stage: dict[str, int] = {}
    for name in dependency_order({r.name: r.after for r in runs}):
        r = by_name[name]
        stage[name] = max((stage[a] + (by_name[a].engine.label != r.engine.label) for a in r.after), default=0)
    return stage
