"""SLURM support: grid files, manifests and array-job submission (templates live in slurm/)."""

from mtg_local.slurm.grid import Grid, GridError, RunSpec, load_grid, parse_grid
from mtg_local.slurm.submit import ArrayJob, SlurmSettings, plan, submit, write

__all__ = ["ArrayJob", "Grid", "GridError", "RunSpec", "SlurmSettings", "load_grid", "parse_grid", "plan", "submit", "write"]
