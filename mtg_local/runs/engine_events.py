"""Which engine served a run, in the run's own event log (so engine starts can be counted afterwards).

Every run (``mtg eval``/``train``/``baseline``, alone or as a grid cell) logs one
``engines`` event naming, for its forward and optimizer engines, the engine
*instance* behind whatever wraps it (cache, grid view, coalescer): the
``instance_id`` the registry gave it at start, its spec, identity (model,
dtype, ...) and start seconds. A grid's cells all name the one shared
instance; runs in separate processes name one each. ``engine_starts`` counts
the distinct instances over a set of run dirs -- the number ``mtg bench grid``
reports -- from what the runs themselves recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engines.base import Engine


def root_engine(engine: Engine) -> Engine:
    """The backend engine behind views, caches and coalescers (each holds the next as ``inner``)."""
    while "inner" in vars(engine):
        engine = vars(engine)["inner"]
    return engine


def engine_record(engine: Engine) -> dict[str, Any]:
    """What identifies the engine instance behind ``engine`` (JSON-ready, no secrets)."""
    root = root_engine(engine)
    instance = vars(root).get("instance_id") or f"{os.getpid()}-{id(root):x}"  # built outside the registry
    return {"instance": instance, "spec": root.spec, "identity": root.identity(),
            "start_s": vars(root).get("start_s")}


def log_engines(run_dir: Any, **engines: Engine) -> None:
    """Logs the run's ``engines`` event: role (forward, optimizer) -> ``engine_record``."""
    run_dir.log_event("engines", **{role: engine_record(e) for role, e in engines.items()})


def run_engines(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every engine record of every ``engines`` event in ``RUN_DIR/events.jsonl`` (resumes log again)."""
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if ev.get("event") == "engines":
            out += [v for k, v in ev.items() if k not in ("t", "event") and isinstance(v, dict)]
    return out


def engine_starts(run_dirs: Iterable[str | Path]) -> dict[str, Any]:
    """Distinct engine instances the runs in ``run_dirs`` were served by, from their events.

    Returns:
        ``{"starts": n, "by_spec": {spec: n}, "dtypes": [dtype, ...]}`` (dtypes as the
        engines reported them in their identity; empty where they report none).
    """
    seen: dict[str, dict[str, Any]] = {}
    for d in run_dirs:
        for rec in run_engines(d):
            seen.setdefault(str(rec.get("instance")), rec)
    by_spec: dict[str, int] = {}
    for rec in seen.values():
        by_spec[str(rec.get("spec"))] = by_spec.get(str(rec.get("spec")), 0) + 1
    dtypes = sorted({str(r["identity"]["dtype"]) for r in seen.values()
                     if isinstance(r.get("identity"), dict) and r["identity"].get("dtype")})
    return {"starts": len(seen), "by_spec": by_spec, "dtypes": dtypes}
