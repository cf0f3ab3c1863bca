"""Run directories: resolved config, event log, checkpoints, results.json; stop signals."""

from mtg_local.runs.interrupt import Interrupted, StopFlag, interruption, record_interruption, stop_on_signals
from mtg_local.runs.run_dir import RunDir, atomic_write_json, read_json

__all__ = ["Interrupted", "RunDir", "StopFlag", "atomic_write_json", "interruption", "read_json",
           "record_interruption", "stop_on_signals"]
