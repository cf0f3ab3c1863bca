"""The prompts of a finished run, to apply elsewhere (``mtg eval --from-run RUN_DIR``).

A source is any complete run that learned something: a loss prompt (learned_loss,
joint), an inference template (maml, reptile, joint), a system prompt (prompt_opt) or
a DSPy program (copro, miprov2, gepa: an instruction, MIPROv2's demos).
``read_source_run`` refuses anything else with one line naming what is wrong, so a
transfer never silently uses a half-trained or failed run's prompts.

**The whole prompt pair.** A run records the pair it used (results.json
``prompt_pair``): each text with its origin, ``learned`` (by this run), ``given``
(by hand, e.g. ``mtg train --method learned_loss --template X``: the fixed half) or
``default`` (the method's default for the task: the task's initial loss prompt, the
paper's template, no system prompt). A transfer applies the learned and the given
texts (``transferable``); a half left at its default stays the applying run's
default, so a template-only run applied to another task answers with that task's own
initial loss prompt, as it did on its own.

**DSPy programs.** A COPRO/MIPROv2/GEPA source is applied as the DSPy program its own
test evaluated (``mtg eval --method dspy_program``): its instruction and demos in
DSPy's chat prompt, parsed as that test parsed (``dspy_program_of``).

What a transfer records (results.json ``source``, docs/results_schema.md): where the
texts were learned (run dir, ``run_id``, method, task, engine, protocol hash),
``prompts_hash``, the hash of exactly the texts applied, their ``origin``, whether the
source kept nothing (``kept_initial``: its best step was its starting prompt) and how
the applying run's protocol differs from the source's (``protocol_diff``). ``run_id``
is a hash of the source's results (task, method, engines, protocol, start/finish
times, learned texts), so it survives moving the run dir and differs between two runs
of one configuration.
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
#: Baselines whose learned prompt is a DSPy program (applied with ``mtg eval --method dspy_program``).
DSPY_METHODS = ("copro", "miprov2", "gepa")
#: Where a text of a run's prompt pair came from.
ORIGINS = ("learned", "given", "default")
#: Meta-training methods (their starting texts are ``config.initial_*``).
_META_METHODS = ("learned_loss", "maml", "reptile", "joint")
_HASH_LENGTH = 12


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]


def prompts_hash(texts: dict[str, Any]) -> str:
    """Short hash of the applied texts (``{"loss_prompt": ..., "template": ...}``; None entries dropped)."""
    return _digest({k: v for k, v in texts.items() if v is not None})


def run_id(results: dict[str, Any]) -> str:
    """A run's identity from its results.json body (see the module docstring)."""
    keys = ("task", "method", "engine", "optimizer_engine", "protocol_hash", "started_at", "finished_at", "learned")
    return _digest({k: results.get(k) for k in keys})


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def learned_texts(results: dict[str, Any]) -> dict[str, str]:
    """The non-empty learned texts of a results.json body, by artifact name."""
    learned = _dict(results.get("learned"))
    return {k: learned[k] for k in ARTIFACTS if isinstance(learned.get(k), str) and learned[k]}


def prompt_pair_record(texts: dict[str, str | None], learned: tuple[str, ...],
                       given: tuple[str, ...]) -> dict[str, Any]:
    """results.json ``prompt_pair`` of a run: every text it used and where each came from.

    Args:
        texts: the texts the run used (its test's), by artifact name; None where it used none.
        learned: the artifacts this run learned.
        given: the artifacts set by hand (the rest are the method's defaults).
    """
    origin = {k: "learned" if k in learned else "given" if k in given else "default" for k in ARTIFACTS}
    return {**{k: texts.get(k) for k in ARTIFACTS}, "origin": origin}


def prompt_origin(results: dict[str, Any]) -> dict[str, str]:
    """Where each text of a run's prompt pair came from (``learned`` / ``given`` / ``default``).

    From ``prompt_pair`` when recorded; for results written before it, the learned texts
    and a meta run's starting texts given by hand (``config.initial_*``).
    """
    pair = _dict(results.get("prompt_pair"))
    if isinstance(pair.get("origin"), dict):
        return {k: str(pair["origin"].get(k) or "default") for k in ARTIFACTS}
    learned = learned_texts(results)
    config = _dict(results.get("config"))
    given = {k for k, key in (("loss_prompt", "initial_loss_prompt"), ("template", "initial_template"))
             if results.get("method") in _META_METHODS and isinstance(config.get(key), str)}
    return {k: "learned" if k in learned else "given" if k in given else "default" for k in ARTIFACTS}


def transferable(results: dict[str, Any]) -> dict[str, str]:
    """The texts a transfer applies: the learned ones and those given by hand (see the module docstring)."""
    origin = prompt_origin(results)
    pair = _dict(results.get("prompt_pair"))
    if "origin" in pair:
        return {k: pair[k] for k in ARTIFACTS if origin[k] != "default" and isinstance(pair.get(k), str)}
    texts = learned_texts(results)
    config = _dict(results.get("config"))
    for k, key in (("loss_prompt", "initial_loss_prompt"), ("template", "initial_template")):
        if origin[k] == "given":
            texts[k] = config[key]
    return {k: texts[k] for k in ARTIFACTS if k in texts}


def dspy_program_of(results: dict[str, Any]) -> dict[str, Any]:
    """The DSPy program a COPRO/MIPROv2/GEPA run tested: instruction, demos and its parse setting.

    Returns:
        ``{"instruction": str, "demos": [dict, ...], "json_fallback": bool}`` (``json_fallback``:
        whether DSPy's JSON adapter re-asked for completions its chat adapter could not parse).
    """
    learned = _dict(results.get("learned"))
    method_config = _dict(_dict(results.get("config")).get("method_config"))
    demos = learned.get("demos") if isinstance(learned.get("demos"), list) else []
    return {"instruction": learned.get("system_prompt") or "", "demos": [d for d in demos if isinstance(d, dict)],
            "json_fallback": bool(method_config.get("json_fallback", True))}


def dspy_applied(program: dict[str, Any]) -> dict[str, Any]:
    """The texts of a DSPy program that a transfer applies (what ``prompts_hash`` covers)."""
    return {"instruction": program["instruction"], **({"demos": program["demos"]} if program["demos"] else {})}


def kept_initial(results: dict[str, Any]) -> bool | None:
    """Whether a run kept nothing it tried (its result is its starting prompt); None when unknown.

    Recorded as results.json ``kept_initial`` by train and baseline; derived for older
    meta runs (``best_step`` 0) and GEPA runs (``best_idx`` 0, the seed instruction).
    """
    if isinstance(results.get("kept_initial"), bool):
        return results["kept_initial"]
    if results.get("method") in _META_METHODS and isinstance(results.get("best_step"), int):
        return results["best_step"] == 0
    best_idx = _dict(results.get("optimizer_details")).get("best_idx")
    if results.get("method") == "gepa" and isinstance(best_idx, int):
        return best_idx == 0
    return None


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def protocol_differences(source: dict[str, Any] | None, mine: dict[str, Any] | None) -> dict[str, list[Any]]:
    """``{field: [source's value, this run's value]}`` of the protocol fields that differ (none recorded: {})."""
    if not isinstance(source, dict) or not isinstance(mine, dict):
        return {}
    from mtg_local.protocol import protocol_diff

    return {k: [_jsonable(a), _jsonable(b)] for k, (a, b) in protocol_diff(source, mine).items()}


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def protocol_warning(from_run: str | Path, source: dict[str, Any]) -> str:
    """The one warning line of a transfer under another protocol than its source's (``source`` as recorded)."""
    diff = source.get("protocol_diff") or {}
    fields = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items())
    return (f"warning: --from-run {from_run} was learned under protocol {source.get('settings_hash') or source.get('protocol_hash')}, this eval "
            f"differs in {fields} (source -> this eval); recorded as results.json source.protocol_diff, and the "
            f"report tabulates it under this eval's protocol. To match the source: --protocol "
            f"{Path(str(from_run)) / 'results.json'}")


def source_record(results: dict[str, Any], run_dir: str | Path, applied: dict[str, Any], *,
                  protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run that applies ``applied`` (texts of the run ``results``) records as its ``source``.

    Args:
        results: the source's results.json body.
        run_dir: the source's run dir.
        applied: the texts applied, by artifact name (``instruction``/``demos`` for a DSPy program).
        protocol: the applying run's protocol dict (``protocol_diff`` is empty without it).
    """
    config = _dict(results.get("config"))
    origin = prompt_origin(results)
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
        # the settings part of it (no task identity), what the report's tables and this run's warning compare
        "settings_hash": results.get("settings_hash") or results.get("protocol_hash"),
        "prompts_hash": prompts_hash(applied),
        "applied": list(applied),
        "origin": {k: origin.get(k, "learned") for k in applied},
        "kept_initial": kept_initial(results),
        "protocol_diff": protocol_differences(results.get("protocol"), protocol) if protocol is not None else {},
        "finished_at": results.get("finished_at"),
    }
    if results.get("tasks"):
        rec["tasks"] = results["tasks"]
        rec["data_files"] = config.get("data_files") or {}
    return rec


@dataclasses.dataclass(frozen=True)
class SourceRun:
    """A complete run's transferable texts and its results.json body."""

    path: Path
    results: dict[str, Any]
    texts: dict[str, str]  # learned and given texts (``transferable``); a DSPy run: its learned instruction

    @property
    def method(self) -> str:
        return str(self.results.get("method"))

    @property
    def is_dspy(self) -> bool:
        return self.method in DSPY_METHODS

    @property
    def origin(self) -> dict[str, str]:
        return prompt_origin(self.results)

    def record(self, applied: dict[str, Any], *, protocol: dict[str, Any] | None = None) -> dict[str, Any]:
        return source_record(self.results, self.path, applied, protocol=protocol)


def read_source_run(path: str | Path, *, flag: str = "--from-run") -> SourceRun:
    """Reads a finished run's transferable texts.

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
    if not learned_texts(results):
        raise UserError(f"{flag} {rd.path}: the run ({results.get('method')}) learned no loss prompt, template "
                        "or system prompt to apply")
    texts = learned_texts(results) if results.get("method") in DSPY_METHODS else transferable(results)
    return SourceRun(rd.path, results, texts)
