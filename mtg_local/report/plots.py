"""PNG plots for reports (matplotlib, Agg backend: no display needed).

* ``accuracy_<engine>.png``: test accuracy per method per task, grouped bars (one group per
  task) with ± std error bars over seeds and the value printed on each bar, and the paper's
  GPT-4o-mini numbers as hollow diamonds on the matching bars (labelled as quoted); the
  legend sits below the axes, task labels are wrapped.
* ``meta_history_<engine>.png``: validation accuracy per outer step of meta runs (from
  results.json "history"): every candidate as a dot, accepted ones filled, and the best
  validation accuracy so far as a line.
* ``transfer_<method>.png``: the transfer table (``mtg_local.report.transfer``) as a heatmap.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mtg_local.report.collect import RunRecord  # noqa: E402
from mtg_local.report.paper_reference import PAPER_LABEL, paper_accuracy  # noqa: E402
from mtg_local.report.tables import METHOD_LABELS, base_method, merge_cells, method_label, ordered_methods  # noqa: E402
from mtg_local.report.tables import ordered_tasks, row_key  # noqa: E402
from mtg_local.report.tables import table_runs, task_label  # noqa: E402
from mtg_local.report.transfer import TransferTable, transfer_tables  # noqa: E402
from mtg_local.slurm.grid import label_of  # noqa: E402


def _wrap(text: str, width: int = 18) -> str:
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


def _wrap_spec(spec: str, width: int = 24) -> str:
    """An engine spec on lines of at most ``width`` characters, broken after ':' and '/' where possible."""
    lines: list[str] = [""]
    for part in re.split(r"(?<=[:/ ])", spec):
        while len(part) > width:  # one very long name: hard breaks
            lines += [part[:width], ""]
            part = part[width:]
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(line for line in lines if line)


def _column_text(col: tuple[str, str]) -> str:
    return f"{_wrap(task_label(col[0]), 20)}\n{_wrap_spec(col[1])}"


def accuracy_plot(runs: list[RunRecord], engine: str, out: Path) -> Path:
    """Grouped bars: one group per task, one bar per method (mean ± std in %, value printed on it),
    the paper's number for that method and task as a hollow diamond on its bar; legend below the axes."""
    runs = [r for r in table_runs(runs) if r.engine == engine]
    cells = merge_cells(runs)
    tasks = ordered_tasks(runs)
    methods = ordered_methods(row_key(r) for r in runs)
    n = max(len(methods), 1)
    width = 0.84 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + len(tasks) * max(1.8, 0.42 * n)), 4.4))
    cmap = plt.get_cmap("tab10")
    paper_drawn = False
    for j, m in enumerate(methods):
        pos = {t: i + (j - (n - 1) / 2) * width for i, t in enumerate(tasks)}
        present = [(pos[t], cells[(engine, t, m)]) for t in tasks if (engine, t, m) in cells]
        ax.bar([x for x, _ in present], [100 * c.mean for _, c in present], width * 0.92,
                      yerr=[100 * c.std for _, c in present], capsize=2, color=cmap(j % 10), error_kw={"lw": 0.8},
                      label=method_label(m))
        for x, c in present:  # above the error bar, so a 0 % bar still shows its number
            ax.text(x, 100 * (c.mean + c.std) + 1.0, f"{100 * c.mean:.0f}", ha="center", va="bottom", fontsize=6)
        for t in tasks:
            p = paper_accuracy(base_method(m), t)
            if p is not None:
                ax.scatter([pos[t]], [p], marker="D", s=26, facecolors="none", edgecolors="black", linewidths=1.0,
                           zorder=3, label=None if paper_drawn else f"{PAPER_LABEL} (quoted, not run here)")
                paper_drawn = True
    for i in range(len(tasks) - 1):
        ax.axvline(i + 0.5, color="0.85", lw=0.8)
    labels = [_wrap(task_label(t)) for t in tasks]
    ax.set_xticks(range(len(tasks)), labels, fontsize=8)
    ax.set_xlim(-0.5, len(tasks) - 0.5)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 110)  # room for the value printed above a 100 % bar
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(f"Test accuracy per task and method (± std over seeds) — {engine}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    lines = max((lb.count("\n") + 1 for lb in labels), default=1)
    handles = len(methods) + int(paper_drawn)
    h, lb = ax.get_legend_handles_labels()
    order = sorted(range(len(lb)), key=lambda i: PAPER_LABEL in lb[i])  # methods first, the paper's marker last
    ax.legend([h[i] for i in order], [lb[i] for i in order], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.07 - 0.045 * lines), frameon=False, ncol=min(3, max(handles, 1)))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def transfer_heatmap(table: TransferTable, out: Path) -> Path:
    """The transfer table as a heatmap: accuracy in % (colour, and "mean ± std" printed), the
    initial-prompt reference as the first row above a line; blank (grey) where nothing ran."""
    import numpy as np

    row_names = ["Initial prompt (reference)"] + [table.row_labels[s.key] for s in table.rows]
    grid = np.full((len(row_names), len(table.columns)), np.nan)
    text = [["" for _ in table.columns] for _ in row_names]
    for j, c in enumerate(table.columns):
        cells = [table.reference.get(c)] + [table.cells.get((s.key, c)) for s in table.rows]
        for i, cell in enumerate(cells):
            if cell is not None:
                grid[i, j] = 100 * cell.mean
                text[i][j] = f"{100 * cell.mean:.1f}\n± {100 * cell.std:.1f}"
    fig, ax = plt.subplots(figsize=(2.6 + 1.7 * len(table.columns), 1.4 + 0.6 * len(row_names)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.9")  # grey: nothing ran there
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(len(row_names)):
        for j in range(len(table.columns)):
            if text[i][j]:
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < 60 else "black")
            else:
                ax.text(j, i, "—", ha="center", va="center", fontsize=8, color="0.5")
    ax.axhline(0.5, color="black", lw=1.2)
    ax.set_xticks(range(len(table.columns)), [_column_text(c) for c in table.columns], fontsize=7)
    ax.set_yticks(range(len(row_names)), [_wrap(r, 48) for r in row_names], fontsize=7)
    ax.xaxis.tick_top()
    ax.set_xlabel("applied to (task · model)", fontsize=8)
    ax.xaxis.set_label_position("top")
    ax.set_ylabel("learned on (task · model · method)", fontsize=8)
    ax.set_title(f"Transfer of learned prompts, applied with {METHOD_LABELS.get(table.method, table.method)}: "
                 "test accuracy %", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="accuracy (%)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def history_plot(runs: list[RunRecord], engine: str, out: Path) -> Path | None:
    """Validation accuracy per outer step for the engine's meta runs (None: no history)."""
    runs = [r for r in runs if r.engine == engine and any(h.get("val_accuracy") is not None for h in r.history)]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab10")
    for k, r in enumerate(sorted(runs, key=lambda r: (r.task, r.method, str(r.path)))):
        color = cmap(k % 10)
        pts = [(int(h.get("step", 0)), 100 * float(h["val_accuracy"]), bool(h.get("accepted")))
               for h in r.history if isinstance(h.get("val_accuracy"), (int, float))]
        ax.scatter([s for s, _, a in pts if not a], [v for _, v, a in pts if not a], s=14, facecolors="none",
                   edgecolors=color)
        ax.scatter([s for s, _, a in pts if a], [v for _, v, a in pts if a], s=22, color=color)
        best, line = None, []
        for step in sorted({int(h.get("step", 0)) for h in r.history}):
            vals = [v for s, v, a in pts if s == step and (a or step == 0)]
            if vals:
                best = max(vals) if best is None else max(best, *vals)
            if best is not None:
                line.append((step, best))
        tasks = " + ".join(task_label(t) for t in r.task.split(","))  # several for a multi-task run
        ax.plot([s for s, _ in line], [v for _, v in line], color=color,
                label=f"{tasks} · {METHOD_LABELS.get(r.method, r.method)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("outer step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Meta-training: validation accuracy — {engine}\n(dots: candidates; filled: accepted; line: best so far)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)  # never over the lines
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def make_plots(runs: list[RunRecord], out_dir: Path) -> list[Path]:
    """All plots for all engines, and a heatmap per transfer table; returns the written paths."""
    paths = []
    table_engines = {r.engine for r in table_runs(runs)}
    for engine in sorted({r.engine for r in runs}):
        if engine in table_engines:
            paths.append(accuracy_plot(runs, engine, out_dir / f"accuracy_{label_of(engine)}.png"))
        h = history_plot(runs, engine, out_dir / f"meta_history_{label_of(engine)}.png")
        if h:
            paths.append(h)
    for t in transfer_tables(runs):
        paths.append(transfer_heatmap(t, out_dir / f"transfer_{t.method}.png"))
    return paths
