"""The transfer table: accuracy of learned prompts where they were learned and where they were applied.

Rows are source runs (where a prompt was learned: task(s), model, method); columns are
where it was applied (task, model); a cell is test accuracy, mean ± std over seeds. The
first row is the reference: the same method on that column with the task's initial
prompt (its Table-2 cell). What fills a cell:

* an ``mtg eval --from-run SOURCE`` run (results.json ``source``), on its own task and engine;
* a learning run's own test (the learned prompt where it was learned, applied as its test
  applies it: a meta-training run by solution optimization, one column or one per task for
  a multi-task run; TextGrad's prompt optimization by zero-shot CoT; COPRO, MIPROv2 and
  GEPA as their DSPy program, ``mtg eval --method dspy_program``).

Each applying method with a transfer gets its own table (learning runs' own tests alone make
none: Table 2 has them). Tables are built per protocol like every other
table (``protocol_groups``), so a transfer cell and its reference always share one
protocol. A row is one source run with one set of applied texts (``LearnedFrom.key``: a
transfer that applied other texts than the source's own test, e.g. one recorded before
transfers carried the whole prompt pair, is a row of its own). A row says when its source
kept nothing (its best step was its starting prompt) and when it was learned under
another protocol than the table's (naming the differing fields). Cells of several runs
merge by seed (a later run wins a seed both have), as Table-2 cells do; two source runs
with the same task, model and method stay two rows (labelled with their run ids).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable

from mtg_local.metrics import summarize
from mtg_local.report.collect import OWN_TEST_METHOD, Collection, LearnedFrom, RunRecord, protocol_groups
from mtg_local.report.tables import METHOD_LABELS, Cell, _md_table, merge_cells, table_runs, task_label, task_sort_key

Column = tuple[str, str]  # (task column key, engine)


@dataclasses.dataclass(frozen=True)
class TransferTable:
    """One transfer table (one protocol, one applied method)."""

    protocol_hash: str
    method: str  # how the prompts were applied: solution_opt or zero_shot_cot
    rows: list[LearnedFrom]
    row_labels: dict[str, str]  # LearnedFrom.key -> label
    columns: list[Column]
    cells: dict[tuple[str, Column], Cell]  # (LearnedFrom.key, column) -> cell
    reference: dict[Column, Cell]  # column -> the initial prompt's cell


def _entries(r: RunRecord) -> Iterable[tuple[str, Column, dict[str, float]]]:
    """(applied method, column, per-seed accuracy) of each transfer result of one run."""
    if r.learned_from is None:
        return []
    if r.per_task:
        return [("solution_opt", (t.task, r.engine), t.per_seed) for t in r.per_task]
    method = OWN_TEST_METHOD.get(r.method, r.method)  # a learning run's own test, or the eval's method
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


def _notes(src: LearnedFrom, protocol_hash: str) -> str:
    """What a row's label adds: a source that kept nothing, a source learned under another protocol."""
    notes = []
    if src.kept_initial:
        notes.append("kept nothing: its initial prompt")
    if src.protocol_hash and protocol_hash and src.protocol_hash != protocol_hash:
        differs = f": {', '.join(src.protocol_diff)} differ" if src.protocol_diff else ""
        notes.append(f"learned under protocol `{src.protocol_hash}`{differs}")
    return "".join(f" ({n})" for n in notes)


def _order(tasks: list[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(tasks)}


def transfer_tables(runs: list[RunRecord], protocol_hash: str = "") -> list[TransferTable]:
    """The transfer tables of one protocol's runs: one per applying method that has a transfer (an
    ``mtg eval --from-run`` or a multi-task run) among its cells; none when nothing was transferred."""
    groups: dict[str, dict[tuple[str, Column], list[tuple[RunRecord, dict[str, float]]]]] = {}
    sources: dict[str, LearnedFrom] = {}
    for r in runs:
        for method, col, per_seed in _entries(r):
            assert r.learned_from is not None
            sources.setdefault(r.learned_from.key, r.learned_from)
            groups.setdefault(method, {}).setdefault((r.learned_from.key, col), []).append((r, per_seed))
    reference_cells = merge_cells(table_runs(runs))
    tables = []
    for method in sorted(groups, key=lambda m: (m != "solution_opt", m)):
        items = groups[method]
        if not any(r.transfer_only for v in items.values() for r, _ in v):
            continue  # only learning runs' own tests: nothing was transferred (Table 2 has their cells)
        order = _order(sorted({t for _, (t, _) in items} | {t for s in sources.values() for t, _ in s.tasks},
                              key=task_sort_key))
        columns = sorted({col for _, col in items}, key=lambda c: (order.get(c[0], 99), c[0], c[1]))
        row_ids = sorted({rid for rid, _ in items}, key=lambda rid: (  # single-task sources first
            len(sources[rid].tasks), [order.get(t, 99) for t, _ in sources[rid].tasks], sources[rid].engine,
            sources[rid].method, rid))
        labels = {rid: source_label(sources[rid]) for rid in row_ids}
        for rid in row_ids:  # two sources of one task, model and method: tell them apart
            src = sources[rid]
            same = [k for k in row_ids if labels[k] == labels[rid]]
            if len(same) > 1 and any(sources[k].run_id != src.run_id for k in same):
                labels[rid] = f"{labels[rid]} (run {src.run_id[:6]})"
        for rid in row_ids:  # one source applied with other texts (e.g. recorded before whole pairs)
            if sum(labels[k] == labels[rid] for k in row_ids) > 1:
                labels[rid] = f"{labels[rid]} (texts {sources[rid].prompts_hash[:6]})"
        labels = {rid: labels[rid] + _notes(sources[rid], protocol_hash) for rid in row_ids}
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
        rows.append([t.row_labels[src.key]] + [
            t.cells[(src.key, c)].text() if (src.key, c) in t.cells else "—" for c in t.columns])
    return "\n".join([
        f"## Transfer of learned prompts (applied with {method})", "",
        "Rows: where the prompt was learned; columns: where it was applied; cells: test accuracy in %, "
        f"mean ± std over seeds. Reference: {method} with each task's initial prompt on that column. "
        "A cell where a prompt is applied where it was learned is that run's own test "
        "(or an `mtg eval --from-run` on the same task and model). A row marked “kept nothing” is a source whose "
        "best step was its initial prompt; one “learned under protocol …” was learned under another protocol "
        "than this table's (the fields named differ).", "",
        _md_table(header, rows), ""])


def transfer_csv(col: Collection) -> str:
    """One row per transfer cell: source, where applied, accuracy, the reference's accuracy."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["settings_hash", "applied_method", "source_run_id", "source_tasks", "source_engine", "source_method",
                "source_prompts_hash", "source_settings_hash", "source_protocol_diff", "source_kept_initial",
                "applied_task", "applied_engine", "mean_pct", "std_pct", "n_seeds",
                "reference_mean_pct", "reference_std_pct", "run_dirs"])
    for h, runs in protocol_groups(col.runs):
        for t in transfer_tables(runs, h):
            for src in t.rows:
                kept = "" if src.kept_initial is None else str(src.kept_initial).lower()
                for c in t.columns:
                    cell = t.cells.get((src.key, c))
                    if cell is None:
                        continue
                    ref = t.reference.get(c)
                    w.writerow([h, t.method, src.run_id, "+".join(x for x, _ in src.tasks), src.engine, src.method,
                                src.prompts_hash, src.protocol_hash, ";".join(src.protocol_diff), kept,
                                c[0], c[1], f"{100 * cell.mean:.2f}", f"{100 * cell.std:.2f}",
                                cell.n_seeds, "" if ref is None else f"{100 * ref.mean:.2f}",
                                "" if ref is None else f"{100 * ref.std:.2f}",
                                ";".join(str(r.path) for r in cell.runs)])
    return buf.getvalue()
