"""``mtg report RUN_DIR... --out DIR``: Table-2-shaped markdown + CSV and PNG plots.

Searches every RUN_DIR recursively for results.json files; incomplete, failed and
corrupt runs are listed in the report (and problems.csv), never silently dropped.
The paper's GPT-4o-mini numbers appear in labelled columns, quoted from the paper,
beside the paper's tasks only. Runs are tabulated per protocol (``settings_hash``,
docs/protocol.md), the most common first; runs of another protocol are also listed in
problems.csv with the settings that differ. A column is one task identity (its definition
and data content, docs/tasks.md): two data files never share a column. Evals that applied
another run's learned prompts (``mtg eval --from-run``) and multi-task meta runs form the
transfer table (learned where x applied where; transfer.csv, plots/transfer_*.png).
"""

from __future__ import annotations

import argparse
import sys

from mtg_local.report import write_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables (markdown, CSV) and plots over many run dirs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs or folders of them (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, results.csv, problems.csv, plots/")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    col, files = write_report(args.run_dirs, args.out, plots=not args.no_plots)
    print(f"{len(col.runs)} complete runs, {len(col.problems)} left out or under another protocol; wrote:")
    for f in files:
        print(f"  {f}")
    for p in col.problems:
        print(f"{'apart' if p.kind == 'other_protocol' else 'left out'} ({p.kind}): {p.path}: {p.detail}",
              file=sys.stderr)
    return 0
