"""The transfer table: accuracy of learned prompts where they were learned and where they were applied.

Rows are source runs (where a prompt was learned: task(s), model, method); columns are
where it was applied (task, model); a cell is test accuracy, mean ± std over seeds. The
first row is the reference: the same method on that column with the task's initial
prompt (its Table-2 cell). What fills a cell:

* an ``mtg eval --from-run SOURCE`` run (results.json ``source``), on its own task and engine;
* a meta-training run's own test (the learned prompt where it was learned, run by
  solution optimization): one column, or one per task for a multi-task run.

Runs applied with zero-shot CoT (a learned template only) get their own table. Tables
are built per protocol like every other table (``protocol_groups``), so a transfer cell
and its reference always share one protocol. Cells of several runs merge by seed (a
later run wins a seed both have), as Table-2 cells do; two source runs with the same
task, model and method stay two rows (labelled with their run ids).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable

from mtg_local.metrics import summarize
from mtg_local.report.collect import META_METHODS, Collection, LearnedFrom, RunRecord, protocol_groups
from mtg_local.report.tables import METHOD_LABELS, Cell, _md_table, merge_cells, table_runs, task_label, task_sort_key

Column = tuple[str, str]  # (task column key, engine)


@dataclasses.dataclass(frozen=True)
class TransferTable:
    """One transfer table (one protocol, one applied method)."""

    protocol_hash: str
    method: str  # how the prompts were applied: solution_opt or zero_shot_cot
    rows: list[LearnedFrom]
    row_labels: dict[str, str]  # run_id -> label
    columns: list[Column]
    cells: dict[tuple[str, Column], Cell]  # (source run_id, column) -> cell
    reference: dict[Column, Cell]  # column -> the initial prompt's cell


def _entries(r: RunRecord) -> Iterable[tuple[str, Column, dict[str, float]]]:
    """(applied method, column, per-seed accuracy) of each transfer result of one run."""
    if r.learned_from is None:
        return []
    if r.per_task:
        return [("solution_opt", (t.task, r.engine), t.per_seed) for t in r.per_task]
    method = "solution_opt" if r.method in META_METHODS else r.method
    return [(method, (r.task, r.engine), r.per_seed)]


def _merge(items: list[tuple[RunRecord, dict[str, float]]], key: tuple[str, str, str]) -> Cell:
    per_seed: dict[str, float] = {}
    for _, ps in sorted(items, key=lambda x: x[0].finished_at):
        per_seed.update(ps)
    s = summarize(per_seed)
    return Cell(*key, s["mean"], s["std"], s["n"], tuple(r for r, _ in items))


def source_label(src: LearnedFrom) -> str:
    tasks = " + ".join(task_label(t) for t, _ in src.tasks)
    return f"{tasks} · {src.engine} · {METHOD_LABELS.get(src.method, src.method)}"


def _order(tasks: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(tasks)}


def transfer_tables(runs: list[RunRecord], protocol_hash: str = "") -> list[TransferTable]:
    """The transfer tables of one protocol's runs (none when no run carries a learned prompt)."""
    groups: dict[str, dict[tuple[str, Column], list[tuple[RunRecord, dict[str, float]]]]] = {}
    sources: dict[str, LearnedFrom] = {}
    for r in runs:
        for method, col, per_seed in _entries(r):
            assert r.learned_from is not None
            sources.setdefault(r.learned_from.run_id, r.learned_from)
            groups.setdefault(method, {}).setdefault((r.learned_from.run_id, col), []).append((r, per_seed))
    reference_cells = merge_cells(table_runs(runs))
    tables = []
    for method in sorted(groups, key=lambda m: (m != "solution_opt", m)):
        items = groups[method]
        order = _order(sorted({t for _, (t, _) in items} | {t for s in sources.values() for t, _ in s.tasks},
                              key=task_sort_key))
        columns = sorted({col for _, col in items}, key=lambda c: (order.get(c[0], 99), c[0], c[1]))
        row_ids = sorted({rid for rid, _ in items}, key=lambda rid: (  # single-task sources first
            len(sources[rid].tasks), [order.get(t, 99) for t, _ in sources[rid].tasks], sources[rid].engine,
            sources[rid].method, rid))
        labels = {rid: source_label(sources[rid]) for rid in row_ids}
        for rid in row_ids:  # two sources of one task, model and method: tell them apart
            if sum(v == labels[rid] for v in labels.values()) > 1:
                labels[rid] = f"{source_label(sources[rid])} (run {rid[:6]})"
        cells = {k: _merge(v, (k[1][1], k[1][0], method)) for k, v in items.items()}
        reference = {c: reference_cells[(c[1], c[0], method)] for c in columns
                     if (c[1], c[0], method) in reference_cells}
        tables.append(TransferTable(protocol_hash, method, [sources[r] for r in row_ids], labels, columns, cells,
                                    reference))
    return tables


def column_label(col: Column) -> str:
    return f"{task_label(col[0])} · {col[1]}"


def transfer_markdown(t: TransferTable) -> str:
    """The markdown of one transfer table, with its heading and how to read it."""
    method = METHOD_LABELS.get(t.method, t.method)
    header = ["Learned on (task · model · method) \\ applied to"] + [column_label(c) for c in t.columns]
    rows = [["*Initial prompt (reference)*"]
            + [t.reference[c].text() if c in t.reference else "—" for c in t.columns]]
    for src in t.rows:
        rows.append([t.row_labels[src.run_id]] + [
            t.cells[(src.run_id, c)].text() if (src.run_id, c) in t.cells else "—" for c in t.columns])
    return "\n".join([
        f"## Transfer of learned prompts (applied with {method})", "",
        "Rows: where the prompt was learned; columns: where it was applied; cells: test accuracy in %, "
        f"mean ± std over seeds. Reference: {method} with each task's initial prompt on that column. "
        "A cell where a prompt is applied where it was learned is that meta-training run's own test "
        "(or an `mtg eval --from-run` on the same task and model).", "",
        _md_table(header, rows), ""])


def transfer_csv(col: Collection) -> str:
    """One row per transfer cell: source, where applied, accuracy, the reference's accuracy."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["protocol_hash", "applied_method", "source_run_id", "source_tasks", "source_engine", "source_method",
                "source_prompts_hash", "applied_task", "applied_engine", "mean_pct", "std_pct", "n_seeds",
                "reference_mean_pct", "reference_std_pct", "run_dirs"])
    for h, runs in protocol_groups(col.runs):
        for t in transfer_tables(runs, h):
            for src in t.rows:
                for c in t.columns:
                    cell = t.cells.get((src.run_id, c))
                    if cell is None:
                        continue
                    ref = t.reference.get(c)
                    w.writerow([h, t.method, src.run_id, "+".join(x for x, _ in src.tasks), src.engine, src.method,
                                src.prompts_hash, c[0], c[1], f"{100 * cell.mean:.2f}", f"{100 * cell.std:.2f}",
                                cell.n_seeds, "" if ref is None else f"{100 * ref.mean:.2f}",
                                "" if ref is None else f"{100 * ref.std:.2f}",
                                ";".join(str(r.path) for r in cell.runs)])
    return buf.getvalue()
