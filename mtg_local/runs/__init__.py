"""Run directories: resolved config, event log, checkpoints, results.json."""

from mtg_local.runs.run_dir import RunDir, atomic_write_json, read_json

__all__ = ["RunDir", "atomic_write_json", "read_json"]
