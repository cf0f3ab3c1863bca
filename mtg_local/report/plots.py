"""PNG plots for reports (matplotlib, Agg backend: no display needed).

* ``accuracy_<engine>.png``: test accuracy per method per task, bars with ± std error bars
  over seeds, and the paper's GPT-4o-mini numbers as hollow markers (labelled as quoted).
* ``meta_history_<engine>.png``: validation accuracy per outer step of meta runs (from
  results.json "history"): every candidate as a dot, accepted ones filled, and the best
  validation accuracy so far as a line.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mtg_local.report.collect import RunRecord  # noqa: E402
from mtg_local.report.paper_reference import PAPER_LABEL, paper_accuracy  # noqa: E402
from mtg_local.report.tables import METHOD_LABELS, merge_cells, ordered_methods, ordered_tasks, task_label  # noqa: E402
from mtg_local.slurm.grid import label_of  # noqa: E402


def accuracy_plot(runs: list[RunRecord], engine: str, out: Path) -> Path:
    """Grouped bars: x = tasks, one bar per method (mean ± std in %), paper markers."""
    runs = [r for r in runs if r.engine == engine]
    cells = merge_cells(runs)
    tasks = ordered_tasks(runs)
    methods = ordered_methods(r.method for r in runs)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(tasks) * max(len(methods), 3) + 2), 4.5))
    cmap = plt.get_cmap("tab10")
    paper_drawn = False
    for j, m in enumerate(methods):
        xs, ys, errs = [], [], []
        for i, t in enumerate(tasks):
            c = cells.get((engine, t, m))
            if c:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(100 * c.mean)
                errs.append(100 * c.std)
        ax.bar(xs, ys, width * 0.9, yerr=errs, capsize=3, color=cmap(j % 10), label=METHOD_LABELS.get(m, m))
        for i, t in enumerate(tasks):
            p = paper_accuracy(m, t)
            if p is not None:
                x = i + (j - (len(methods) - 1) / 2) * width
                ax.plot([x], [p], marker="D", markerfacecolor="none", markeredgecolor="black", linestyle="none",
                        label=None if paper_drawn else f"{PAPER_LABEL} (quoted)")
                paper_drawn = True
    ax.set_xticks(range(len(tasks)), [task_label(t) for t in tasks])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Test accuracy per method (± std over seeds)\n{engine}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
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
        ax.plot([s for s, _ in line], [v for _, v in line], color=color,
                label=f"{task_label(r.task)} · {METHOD_LABELS.get(r.method, r.method)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("outer step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Meta-training: validation accuracy — {engine}\n(dots: candidates; filled: accepted; line: best so far)",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def make_plots(runs: list[RunRecord], out_dir: Path) -> list[Path]:
    """All plots for all engines; returns the written paths."""
    paths = []
    for engine in sorted({r.engine for r in runs}):
        paths.append(accuracy_plot(runs, engine, out_dir / f"accuracy_{label_of(engine)}.png"))
        h = history_plot(runs, engine, out_dir / f"meta_history_{label_of(engine)}.png")
        if h:
            paths.append(h)
    return paths
