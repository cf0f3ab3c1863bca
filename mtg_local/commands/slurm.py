"""``mtg slurm submit GRID.yaml [--shared] [--dry-run]``: submit a grid to SLURM.

Default (array mode): one array task per cell, each with its own engine (manifest +
slurm/mtg_array.sbatch). ``--shared``: one job per engine of the grid that runs
``mtg grid`` for all of that engine's cells concurrently on one engine on the node's GPUs
(slurm/mtg_grid.sbatch). Prints the job id(s) and where results will land; ``--dry-run``
prints the sbatch command(s) and the runs without writing or submitting anything (see
slurm/README.md for when to use which). Transfer cells (the grid's ``transfer:``) wait
for their source cells through SLURM dependencies (``mtg_local.slurm.submit``), so a
learn-then-transfer study is one submission; in a dry run ``${JOBk}`` stands for the id
of the k-th job printed.
"""

from __future__ import annotations

import argparse
import shlex

from mtg_local.slurm import load_grid, plan, plan_shared, submit, submit_shared


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slurm", help="submit a grid of runs to SLURM as a job array")
    ssub = p.add_subparsers(dest="slurm_command", metavar="ACTION", required=True)
    s = ssub.add_parser("submit", help="expand GRID.yaml into a manifest + array job and submit it")
    s.add_argument("grid", metavar="GRID.yaml", help="grid file (example: slurm/grid_example.yaml)")
    s.add_argument("--dry-run", action="store_true", help="print the sbatch command(s) and manifest(s) only")
    s.add_argument("--shared", action="store_true",
                   help="one job per engine running `mtg grid` (all its cells on one shared engine) instead of an array")
    s.add_argument("--runs-root", default=None, metavar="DIR", help="override the grid's runs_root / $MTG_RUNS")
    s.set_defaults(func=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid, runs_root=args.runs_root)
    from mtg_local.tasks import check_task_files

    check_task_files(p for t in grid.tasks for p in t.datasets())  # a wrong task file: before any job
    if args.shared:
        return _submit_shared(args, grid)
    jobs = plan(grid)
    n_runs = sum(len(j.runs) for j in jobs)
    results_dir = grid.runs_root / grid.name
    if args.dry_run:
        for k, job in enumerate(jobs):
            print(f"# job {k}: {len(job.runs)} runs -> manifest {job.manifest} (not written: dry run)")
            for j, t in job.after:
                print(f"# job {k} waits for array task {t} of job {j} ({jobs[j].runs[t].name}): afterok")
            print(shlex.join(job.sbatch))
            print("# manifest (array index: mtg arguments)")
            for i, run in enumerate(job.runs):
                print(f"{i}: mtg {run.manifest_line()}")
        print(f"# {n_runs} runs in {len(jobs)} array job(s); results would land under {results_dir}")
        return 0
    ids = submit(jobs)
    for job_id, job in zip(ids, jobs):
        waits = f", after {', '.join(f'{ids[j]}_{t}' for j, t in job.after)}" if job.after else ""
        print(f"submitted array job {job_id}: {len(job.runs)} runs, manifest {job.manifest}{waits}")
    print(f"results: {results_dir}/<task>/<method>/<engine>/results.json  (logs: {results_dir}/logs)")
    print(f"when done: mtg report {results_dir} --out {results_dir}/report")
    return 0


def _submit_shared(args: argparse.Namespace, grid) -> int:
    jobs = plan_shared(grid, args.grid)
    results_dir = grid.runs_root / grid.name
    n_runs = sum(len(j.runs) for j in jobs)
    if args.dry_run:
        for k, job in enumerate(jobs):
            stage = f" --stage {job.stage}" if job.stage is not None else ""
            print(f"# job {k}: {len(job.runs)} runs of {job.engine.spec} in one job: mtg grid {args.grid} "
                  f"--engine {job.engine.label}{stage}")
            if job.after:
                print(f"# job {k} starts after job(s) {', '.join(map(str, job.after))} end (afterany; each cell "
                      "checks that its source is complete)")
            print(shlex.join(job.sbatch))
            for run in job.runs:
                after = f"  # after {', '.join(run.after)}" if run.after else ""
                print(f"  mtg {run.manifest_line()}{after}")
        print(f"# {n_runs} runs in {len(jobs)} shared job(s); results would land under {results_dir}")
        return 0
    ids = submit_shared(jobs)
    for job_id, job in zip(ids, jobs):
        waits = f", after {', '.join(ids[j] for j in job.after)}" if job.after else ""
        stage = f" (stage {job.stage})" if job.stage is not None else ""
        print(f"submitted grid job {job_id}: {len(job.runs)} runs of {job.engine.spec}{stage} on one engine{waits}")
    print(f"results: {results_dir}/<task>/<method>/<engine>/results.json  (logs: {results_dir}/logs)")
    print(f"when done: mtg report {results_dir} --out {results_dir}/report")
    return 0
