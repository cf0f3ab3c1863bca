"""A run directory: what survives a crash.

Layout (all JSON written atomically: temp file + ``os.replace``)::

    RUN_DIR/config.json       resolved config (no secrets)
    RUN_DIR/events.jsonl      append-only event log
    RUN_DIR/checkpoint.json   state after the last completed step (meta runs)
    RUN_DIR/cache.sqlite      generation cache (engines.cache)
    RUN_DIR/results.json      final results (schema: RESULTS_SCHEMA_VERSION)
    RUN_DIR/trajectories.jsonl per-item records
    RUN_DIR/textgrad_logs/    TextGrad's own log, when this is the process's first run dir
                              (``engines.adapters.common.textgrad_log_dir``)

Every writer here passes what it writes through ``mtg_local.runs.secrets.redact``
(API keys, tokens, credentials in URLs or error texts), so no file of a run dir
holds a secret whatever the caller put in. TextGrad writes its own log (the
prompts and responses of TextGrad objects); no key ever passes through TextGrad
here (our engines hold them; ``tests/test_textgrad_adapter.py`` checks the log).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from engines.adapters.common import textgrad_log_dir
from mtg_local.runs.secrets import redact

#: Bumped when results.json changes incompatibly; reports check it.
RESULTS_SCHEMA_VERSION = 1


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes ``obj`` as JSON so readers see the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path) as f:
        return json.load(f)


class RunDir:
    """Paths and small helpers for one run directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        textgrad_log_dir(self.path)  # before anything imports textgrad, never into the cwd
        return self

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.json"

    @property
    def cache_path(self) -> Path:
        return self.path / "cache.sqlite"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def trajectories_path(self) -> Path:
        return self.path / "trajectories.jsonl"

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.config_path, redact(config))

    def log_event(self, kind: str, **fields: Any) -> None:
        """Appends one event line (flushed + fsynced: the log survives SIGKILL)."""
        self.path.mkdir(parents=True, exist_ok=True)
        line = json.dumps(redact({"t": round(time.time(), 3), "event": kind, **fields}))
        with open(self.events_path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_json(self.results_path, redact({"schema_version": RESULTS_SCHEMA_VERSION, **results}))

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.checkpoint_path, redact(state))

    def read_checkpoint(self) -> dict[str, Any] | None:
        return read_json(self.checkpoint_path) if self.checkpoint_path.exists() else None

    def write_trajectories(self, records: list[dict[str, Any]]) -> None:
        tmp = self.trajectories_path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(redact(r)) + "\n")
        os.replace(tmp, self.trajectories_path)
