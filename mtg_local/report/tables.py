"""Table-2-shaped markdown and CSV from collected runs.

Rows are methods grouped as in the paper (zero-shot, prompt optimizers, inference-time
optimizers, meta-learned); columns are tasks; a cell is ``mean ± std`` over seeds in percent
with the number of seeds. Runs of the same (engine, task, method) are merged by seed (a later
run wins for a seed present in both). The paper's GPT-4o-mini numbers appear in their own,
labelled columns, quoted from the paper, and only beside the paper's tasks (never beside a
synthetic one or a user's task). Runs are tabulated per protocol (``settings_hash``; older runs:
``protocol_hash``): one set of tables per protocol, the most common first; runs of two protocols
never share a table or a cell, runs of two task identities never share a column.

A table is one task model: a prompt optimizer run with its own prompt / reflection model
(``RunRecord.optimizer``) is a row of its method labelled with that model (``row_key``),
beside the same method's runs without one, in the task model's table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable
from typing import Any

from mtg_local.metrics import summarize
from mtg_local.report.collect import Collection, RunRecord, protocol_groups
from mtg_local.report.paper_reference import PAPER_LABEL, PAPER_SOURCE, PAPER_TASKS, canonical_task, paper_accuracy

#: (group heading, methods) in the paper's row order; "joint" and "gepa" are this project's additions.
ROW_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Zero-shot", ("zero_shot_cot", "dspy_program")),
    ("Prompt optimizers", ("copro", "miprov2", "gepa", "prompt_opt")),
    ("Inference time optimizers", ("solution_opt",)),
    ("Meta-learned inference time optimizers", ("learned_loss", "maml", "reptile", "joint")),
)
METHOD_LABELS = {
    "zero_shot_cot": "Zero-Shot CoT",
    "dspy_program": "Zero-Shot CoT (DSPy program)",
    "copro": "COPRO",
    "miprov2": "MIPROv2",
    "gepa": "GEPA (DSPy)",
    "prompt_opt": "Prompt Optimization (TextGrad)",
    "solution_opt": "Solution Optimization (TextGrad)",
    "learned_loss": "metaTextGrad (Learned Loss)",
    "maml": "metaTextGrad (MAML-style)",
    "reptile": "metaTextGrad (Reptile-style)",
    "joint": "metaTextGrad (Joint)",
}
_METHOD_ORDER = [m for _, ms in ROW_GROUPS for m in ms]
#: Rows the paper does not have: printed only when a run of them is present (paper column "—").
_NOT_IN_PAPER = ("joint", "gepa", "dspy_program")
#: The role of a prompt optimizer's own model, in its row label.
_OPTIMIZER_ROLES = {"gepa": "reflection", "copro": "prompt model", "miprov2": "prompt model", "prompt_opt": "optimizer"}
_ROW_SEP = " · "
_TASK_ORDER = list(PAPER_TASKS)


@dataclasses.dataclass(frozen=True)
class Cell:
    """Merged result of one (engine, task, method)."""

    engine: str
    task: str
    method: str
    mean: float  # [0, 1]
    std: float
    n_seeds: int
    runs: tuple[RunRecord, ...]

    def text(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f} (n={self.n_seeds})"


def row_key(r: RunRecord) -> str:
    """A run's row: its method, with the optimizer's own model when it has one ("gepa · reflection: SPEC")."""
    if not r.optimizer:
        return r.method
    return f"{r.method}{_ROW_SEP}{_OPTIMIZER_ROLES.get(r.method, 'optimizer')}: {r.optimizer}"


def base_method(key: str) -> str:
    """The method of a row key."""
    return key.split(_ROW_SEP, 1)[0]


def method_label(key: str) -> str:
    """A row's label: the method's, and the optimizer's model of a ``row_key`` that has one."""
    base, sep, rest = key.partition(_ROW_SEP)
    return METHOD_LABELS.get(base, base) + (f"{_ROW_SEP}{rest}" if sep else "")


def merge_cells(runs: Iterable[RunRecord]) -> dict[tuple[str, str, str], Cell]:
    """Groups runs by (engine, task, row key: the method, ``row_key``) and merges their per-seed accuracies."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in runs:
        groups.setdefault((r.engine, r.task, row_key(r)), []).append(r)
    cells = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r.finished_at)
        if len(rs) == 1:
            r = rs[0]
            cells[key] = Cell(*key, r.mean, r.std, r.n_seeds, (r,))
            continue
        per_seed: dict[str, float] = {}
        for r in rs:
            per_seed.update(r.per_seed)
        s = summarize(per_seed)
        cells[key] = Cell(*key, s["mean"], s["std"], s["n"], tuple(rs))
    return cells


def task_label(task: str) -> str:
    key = canonical_task(task)
    base = PAPER_TASKS[key] if key else task
    # keep a variant suffix ("word_sorting [file]") visible
    return f"{base} {task[task.index('['):]}" if "[" in task else base


def task_sort_key(t: str) -> tuple[int, str]:
    """Paper tasks first, in the paper's order; then the others by name."""
    c = canonical_task(t)
    return (_TASK_ORDER.index(c) if c else len(_TASK_ORDER), t)


def ordered_tasks(runs: Iterable[RunRecord]) -> list[str]:
    return sorted({r.task for r in runs}, key=task_sort_key)


def table_runs(runs: Iterable[RunRecord]) -> list[RunRecord]:
    """The runs that are Table-2 cells: not evals of another run's prompts, not multi-task runs
    (those are in the transfer table, ``mtg_local.report.transfer``)."""
    return [r for r in runs if not r.transfer_only]


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """Row keys in the paper's method order; a method's optimizer variants right after it."""
    ms = set(methods)
    order = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return sorted(ms, key=lambda k: (order.get(base_method(k), len(order)), base_method(k), k != base_method(k), k))


def _row_methods(present: set[str]) -> list[tuple[str, list[str]]]:
    """Groups to print: every paper method, joint/gepa/others only when present; each method's
    optimizer variants (``row_key``) after it."""
    groups = []
    for heading, methods in ROW_GROUPS:
        ms = []
        for m in methods:
            if m in present or m not in _NOT_IN_PAPER:
                ms.append(m)
            ms += ordered_methods(k for k in present if k != m and base_method(k) == m)
        groups.append((heading, ms))
    extra = ordered_methods(k for k in present if base_method(k) not in _METHOD_ORDER)
    if extra:
        groups.append(("Other", extra))
    return groups


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _paper(method: str, task: str) -> str:
    v = paper_accuracy(base_method(method), task)
    return f"{v:.1f}" if v is not None else "—"


def engine_table(cells: dict, engine: str, tasks: list[str]) -> str:
    """Markdown table for one engine: this engine's cells beside the paper's numbers."""
    present = {m for (e, _, m) in cells if e == engine}
    header = ["Method"]
    for t in tasks:
        header.append(task_label(t))
        if canonical_task(t):
            header.append(f"{task_label(t)}: {PAPER_LABEL}")
    rows = []
    for heading, methods in _row_methods(present):
        rows.append([f"*{heading}*"] + [""] * (len(header) - 1))
        for m in methods:
            row = [method_label(m)]
            for t in tasks:
                c = cells.get((engine, t, m))
                row.append(c.text() if c else "—")
                if canonical_task(t):
                    row.append(_paper(m, t))
            rows.append(row)
    return _md_table(header, rows)


def side_by_side_table(cells: dict, engines: list[str], tasks: list[str]) -> str:
    """Markdown table: for each task, one column per engine, then the paper's column."""
    present = {m for (_, _, m) in cells}
    header = ["Method"]
    for t in tasks:
        header += [f"{task_label(t)}: {e}" for e in engines]
        if canonical_task(t):
            header.append(f"{task_label(t)}: {PAPER_LABEL}")
    rows = []
    for heading, methods in _row_methods(present):
        rows.append([f"*{heading}*"] + [""] * (len(header) - 1))
        for m in methods:
            row = [method_label(m)]
            for t in tasks:
                for e in engines:
                    c = cells.get((e, t, m))
                    row.append(f"{100 * c.mean:.1f} ± {100 * c.std:.1f}" if c else "—")
                if canonical_task(t):
                    row.append(_paper(m, t))
            rows.append(row)
    return _md_table(header, rows)


def totals(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """Token, wall-clock and dollar totals per engine (all a run used; cost None when no run has one)."""
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        t = out.setdefault(r.engines_label, {"engine": r.engines_label, "runs": 0, "requests": 0, "prompt_tokens": 0,
                                      "completion_tokens": 0, "wall_s": 0.0, "cost_usd": None})
        t["runs"] += 1
        for k in ("requests", "prompt_tokens", "completion_tokens"):
            t[k] += int(r.usage.get(k) or 0)
        t["wall_s"] += r.wall_s
        if r.cost_usd is not None:
            t["cost_usd"] = (t["cost_usd"] or 0.0) + r.cost_usd
    return list(out.values())


def _fmt_cost(v: float | None) -> str:
    if v is None:
        return "— (local)"
    return f"${v:.2f}" if v >= 1 else f"${v:.4f}"


def _protocol_heading(h: str, runs: list[RunRecord], main: bool) -> list[str]:
    if not h:
        return ["# Runs without a recorded protocol", "", "Written before protocols were recorded: compare with care.", ""]
    proto = runs[0].protocol or {}
    keys = ("steps", "answer_selection", "seeds", "temperature", "max_tokens", "scoring")
    brief = ", ".join(f"{k}={proto.get(k)!r}" for k in keys if k in proto)
    label = "main table" if main else "another protocol (differences listed under Left out)"
    return [f"# Protocol `{h}` ({label})", "", f"{len(runs)} runs; {brief}. Full settings: any run's results.json "
            "`protocol`; defaults and sources: docs/protocol.md.", ""]


def markdown_report(col: Collection, *, plots: list[str] = ()) -> str:
    """The whole report: per protocol, tables per engine and side by side, transfer tables; totals,
    left-out runs, plots."""
    from mtg_local.report.transfer import transfer_markdown, transfer_tables

    parts = ["# mtg-local results", "",
             f"Cells: test accuracy in %, mean ± std over seeds (n = seeds). "
             f"Columns labelled “{PAPER_LABEL}” are quoted from the paper ({PAPER_SOURCE}), not run here. "
             "Only runs of one protocol (results.json `settings_hash`) share a table; a column is one task "
             "identity (its definition and data content: `task_id`).", ""]
    groups = protocol_groups(col.runs)
    for gi, (h, runs) in enumerate(groups):
        table = table_runs(runs)
        cells = merge_cells(table)
        engines = sorted({r.engine for r in table})
        tasks = ordered_tasks(table)
        if len(groups) > 1 or h:
            parts += _protocol_heading(h, runs, gi == 0)
        for e in engines:
            parts += [f"## {e}", "", engine_table(cells, e, tasks), ""]
        if len(engines) > 1:
            parts += ["## All models side by side", "", side_by_side_table(cells, engines, tasks), ""]
        parts += [transfer_markdown(t) for t in transfer_tables(runs, h)]
    if not col.runs:
        parts += ["No complete runs to tabulate.", ""]
    parts += ["## Tokens, wall clock and cost", ""]
    rows = [[t["engine"], str(t["runs"]), str(t["requests"]), f"{t['prompt_tokens']:,}", f"{t['completion_tokens']:,}",
             f"{t['wall_s'] / 60:.1f} min", _fmt_cost(t["cost_usd"])] for t in totals(col.runs)]
    parts += [_md_table(["Engine", "Runs", "Requests", "Prompt tokens", "Completion tokens", "Wall clock (sum)",
                         "Cost (estimate)"], rows), ""]
    if col.problems:
        parts += [f"## Left out or apart ({len(col.problems)})", "",
                  _md_table(["Path", "Kind", "Detail"],
                            [[f"`{p.path}`", p.kind, p.detail.replace("|", "\\|").replace("\n", " ")] for p in col.problems]), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def cells_csv(col: Collection) -> str:
    """One row per (engine, task, method): accuracy in %, seeds, paper value, totals."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["settings_hash", "engine", "task", "dataset", "method", "method_label", "optimizer_engine", "mean_pct",
                "std_pct", "n_seeds", "n_questions", "paper_gpt4omini_pct", "requests", "prompt_tokens",
                "completion_tokens", "wall_s", "cost_usd", "run_dirs"])
    rows = []
    for h, runs in protocol_groups(col.runs):
        cells = merge_cells(table_runs(runs))
        order = {k: i for i, k in enumerate(ordered_methods(k for _, _, k in cells))}
        for (e, t, m), c in sorted(cells.items(), key=lambda kv: (kv[0][0], ordered_tasks(kv[1].runs)[0],
                                                                 order[kv[0][2]])):
            rows.append((h, e, t, m, c))
    for h, e, t, m, c in rows:
        tot = totals(list(c.runs))[0]
        paper = paper_accuracy(base_method(m), t)
        w.writerow([h, e, t, c.runs[0].dataset, base_method(m), method_label(m), c.runs[0].optimizer,
                    f"{100 * c.mean:.2f}", f"{100 * c.std:.2f}", c.n_seeds,
                    max(r.n_questions for r in c.runs), "" if paper is None else f"{paper:.1f}", tot["requests"],
                    tot["prompt_tokens"], tot["completion_tokens"], f"{tot['wall_s']:.1f}",
                    "" if tot["cost_usd"] is None else f"{tot['cost_usd']:.4f}", ";".join(str(r.path) for r in c.runs)])
    return buf.getvalue()


def problems_csv(col: Collection) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "kind", "detail"])
    for p in col.problems:
        w.writerow([str(p.path), p.kind, p.detail])
    return buf.getvalue()
