"""SLURM support: grid files, manifests and array-job submission (templates live in slurm/)."""

from mtg_local.slurm.grid import Grid, GridError, RunSpec, load_grid, parse_grid
from mtg_local.slurm.submit import ArrayJob, SharedJob, SlurmSettings, plan, plan_shared, submit, submit_shared, write

__all__ = ["ArrayJob", "Grid", "GridError", "RunSpec", "SharedJob", "SlurmSettings", "load_grid", "parse_grid", "plan",
           "plan_shared", "submit", "submit_shared", "write"]
