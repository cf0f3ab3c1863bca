"""The learned prompts of a finished run, to apply elsewhere (``mtg eval --from-run RUN_DIR``).

A source is any complete run whose results.json ``learned`` holds a text: the loss
prompt (learned_loss, joint), the inference template (maml, reptile, joint) or a
system prompt (prompt optimization). ``read_source_run`` refuses anything else with
one line naming what is wrong, so a transfer never silently uses a half-trained or
failed run's prompts.

What a transfer records (results.json ``source``, docs/results_schema.md): where the
texts were learned (run dir, ``run_id``, method, task, engine, protocol hash) and
``prompts_hash``, the hash of exactly the texts applied. ``run_id`` is a hash of the
source's results (task, method, engines, protocol, start/finish times, learned texts),
so it survives moving the run dir and differs between two runs of one configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from engines.errors import UserError
from mtg_local.runs.run_dir import RunDir, read_json

#: Learned texts a run can hand on, in the order ``learned`` lists them.
ARTIFACTS = ("loss_prompt", "template", "system_prompt")
_HASH_LENGTH = 12


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]


def prompts_hash(texts: dict[str, str | None]) -> str:
    """Short hash of the applied texts (``{"loss_prompt": ..., "template": ...}``; None entries dropped)."""
    return _digest({k: v for k, v in texts.items() if v is not None})


def run_id(results: dict[str, Any]) -> str:
    """A run's identity from its results.json body (see the module docstring)."""
    keys = ("task", "method", "engine", "optimizer_engine", "protocol_hash", "started_at", "finished_at", "learned")
    return _digest({k: results.get(k) for k in keys})


def learned_texts(results: dict[str, Any]) -> dict[str, str]:
    """The non-empty learned texts of a results.json body, by artifact name."""
    learned = results.get("learned") if isinstance(results.get("learned"), dict) else {}
    return {k: learned[k] for k in ARTIFACTS if isinstance(learned.get(k), str) and learned[k]}


def source_record(results: dict[str, Any], run_dir: str | Path, applied: dict[str, str]) -> dict[str, Any]:
    """What a run that applies ``applied`` (texts of the run ``results``) records as its ``source``."""
    config = results.get("config") if isinstance(results.get("config"), dict) else {}
    rec = {
        "run_dir": str(Path(run_dir).resolve()),
        "run_id": run_id(results),
        "method": results.get("method"),
        "task": results.get("task"),
        "task_info": results.get("task_info"),
        "data_file": config.get("data_file"),
        "engine": results.get("engine"),
        "optimizer_engine": results.get("optimizer_engine"),
        "protocol_hash": results.get("protocol_hash"),
        "prompts_hash": prompts_hash(applied),
        "applied": list(applied),
        "finished_at": results.get("finished_at"),
    }
    if results.get("tasks"):
        rec["tasks"] = results["tasks"]
        rec["data_files"] = config.get("data_files") or {}
    return rec


@dataclasses.dataclass(frozen=True)
class SourceRun:
    """A complete run's learned texts and its results.json body."""

    path: Path
    results: dict[str, Any]
    texts: dict[str, str]

    def record(self, applied: dict[str, str]) -> dict[str, Any]:
        return source_record(self.results, self.path, applied)


def read_source_run(path: str | Path, *, flag: str = "--from-run") -> SourceRun:
    """Reads a finished run's learned texts.

    Raises:
        UserError: no such run dir, no results.json yet, a status other than
            "complete", an unreadable file, or nothing learned -- one line each.
    """
    rd = RunDir(Path(path).expanduser())
    if not rd.path.is_dir():
        raise UserError(f"{flag} {rd.path}: no such run dir")
    if not rd.results_path.exists():
        hint = " (still running, killed or preempted: finish it first)" if rd.config_path.exists() else ""
        raise UserError(f"{flag} {rd.path}: the run has not finished, no results.json{hint}")
    try:
        results = read_json(rd.results_path)
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {rd.path}: cannot read results.json: {e}") from e
    if not isinstance(results, dict):
        raise UserError(f"{flag} {rd.path}: results.json is not a JSON object")
    status = results.get("status")
    if status != "complete":
        how = f"; {results['message']}" if status == "interrupted" and results.get("message") else ""
        raise UserError(f"{flag} {rd.path}: the run is not complete (status {status!r}){how}")
    texts = learned_texts(results)
    if not texts:
        raise UserError(f"{flag} {rd.path}: the run ({results.get('method')}) learned no loss prompt, template "
                        "or system prompt to apply")
    return SourceRun(rd.path, results, texts)
