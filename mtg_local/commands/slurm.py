"""``mtg slurm submit GRID.yaml [--dry-run]``: expand a grid into a manifest and an array job.

Prints the job id(s), the manifest and where results will land; ``--dry-run`` prints the
sbatch command(s) and the manifest(s) without writing or submitting anything. The batch
side is slurm/mtg_array.sbatch (see slurm/README.md).
"""

from __future__ import annotations

import argparse
import shlex

from mtg_local.slurm import load_grid, plan, submit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slurm", help="submit a grid of runs to SLURM as a job array")
    ssub = p.add_subparsers(dest="slurm_command", metavar="ACTION", required=True)
    s = ssub.add_parser("submit", help="expand GRID.yaml into a manifest + array job and submit it")
    s.add_argument("grid", metavar="GRID.yaml", help="grid file (example: slurm/grid_example.yaml)")
    s.add_argument("--dry-run", action="store_true", help="print the sbatch command(s) and manifest(s) only")
    s.add_argument("--runs-root", default=None, metavar="DIR", help="override the grid's runs_root / $MTG_RUNS")
    s.set_defaults(func=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid, runs_root=args.runs_root)
    jobs = plan(grid)
    n_runs = sum(len(j.runs) for j in jobs)
    results_dir = grid.runs_root / grid.name
    if args.dry_run:
        for job in jobs:
            print(f"# {len(job.runs)} runs -> manifest {job.manifest} (not written: dry run)")
            print(shlex.join(job.sbatch))
            print("# manifest (array index: mtg arguments)")
            for i, run in enumerate(job.runs):
                print(f"{i}: mtg {run.manifest_line()}")
        print(f"# {n_runs} runs in {len(jobs)} array job(s); results would land under {results_dir}")
        return 0
    ids = submit(jobs)
    for job_id, job in zip(ids, jobs):
        print(f"submitted array job {job_id}: {len(job.runs)} runs, manifest {job.manifest}")
    print(f"results: {results_dir}/<task>/<method>/<engine>/results.json  (logs: {results_dir}/logs)")
    print(f"when done: mtg report {results_dir} --out {results_dir}/report")
    return 0
