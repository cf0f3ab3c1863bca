"""Writes a report folder: report.md, results.csv, transfer.csv (when runs applied learned prompts),
problems.csv, plots/*.png."""

from __future__ import annotations

import os
from pathlib import Path

from mtg_local.report.collect import Collection, collect, protocol_groups
from mtg_local.report.tables import cells_csv, markdown_report, problems_csv
from mtg_local.report.transfer import transfer_csv


def write_report(paths: list[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                 plots: bool = True) -> tuple[Collection, list[Path]]:
    """Collects the runs under ``paths`` and writes the report into ``out_dir``.

    Returns:
        The collection and the files written (report.md first).
    """
    col = collect(list(paths))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    if plots and col.runs:
        from mtg_local.report.plots import make_plots  # matplotlib only when plotting

        # Plots merge runs into cells like the tables: only the main (most common) protocol's.
        pngs = make_plots(protocol_groups(col.runs)[0][1], out / "plots")
    md = markdown_report(col, plots=[str(p.relative_to(out)) for p in pngs])
    files = [out / "report.md", out / "results.csv", out / "problems.csv"]
    files[0].write_text(md)
    files[1].write_text(cells_csv(col))
    files[2].write_text(problems_csv(col))
    transfer = transfer_csv(col)
    if transfer.count("\n") > 1:  # more than the header
        files.append(out / "transfer.csv")
        files[-1].write_text(transfer)
    return col, files + pngs
