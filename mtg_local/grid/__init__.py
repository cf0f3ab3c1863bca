"""Running many runs (the cells of a grid) concurrently in one process on one shared engine."""

from mtg_local.grid.runner import CellOutcome, CellStopped, GridCell, GridReport, is_complete, run_cells

__all__ = ["CellOutcome", "CellStopped", "GridCell", "GridReport", "is_complete", "run_cells"]
