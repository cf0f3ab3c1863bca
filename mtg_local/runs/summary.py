"""The short human summary ``mtg train``, ``mtg eval`` and ``mtg baseline`` end with (stderr).

Everything here reads a results.json body (docs/results_schema.md) and returns
text; nothing is computed that results.json does not hold, so the summary says
what the record says. ``outer_step_line`` is also the line ``mtg train`` writes
after each outer step while it runs.

A train run's outer step is one of:

* **validated**: a candidate was proposed and run on the validation split; it is
  **accepted** when its accuracy beats the best so far, else **reverted** (the
  paper's revert rule, ``mtg_local.meta.outer_loop``);
* **skipped**: no candidate, with the reason the history records (no wrong
  answer in the minibatch, a meta output cut off at its token cap, ...).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: How a learned artifact is named in a sentence.
ARTIFACT_NAMES = {"loss_prompt": "loss prompt", "template": "inference template", "system_prompt": "system prompt"}
#: The limit a skipped step's cut-off meta output ran into, as the flag that sets it (raising the
#: cap helps only an output that would have ended: a small model may repeat itself to any cap).
_CUT_OFF_HINTS = {"cut off at max_tokens": "the --meta-max-tokens cap",
                  "cut off at the context": "shorten it with --max-meta-pairs or raise --engine-opt max_model_len"}
_PREVIEW = 90


def count(n: Any, noun: str) -> str:
    """3, "seed" -> "3 seeds"; 1, "seed" -> "1 seed"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def pct(x: float | None) -> str:
    """0.375 -> "37.5 %"; None -> "n/a"."""
    return "n/a" if x is None else f"{100 * x:.1f} %"


def accuracy_text(acc: Mapping[str, Any] | None) -> str:
    """``test_accuracy`` as "45.0 ± 5.0 % over 2 seeds" (the std is over seeds)."""
    if not acc or not acc.get("n"):
        return "n/a"
    n = int(acc["n"])
    return f"{100 * acc['mean']:.1f} ± {100 * (acc.get('std') or 0.0):.1f} % over {count(n, 'seed')}"


def duration(seconds: float | None) -> str:
    """212.4 -> "3 min 32 s"."""
    if seconds is None:
        return "n/a"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return (f"{h} h " if h else "") + f"{m} min {s} s"


def usage_text(usage: Mapping[str, Any] | None) -> str:
    """Tokens, engine calls and cache hits of ``engine_usage``."""
    u = usage or {}
    text = f"{u.get('prompt_tokens', 0):,} prompt tokens"
    if u.get("cached_prompt_tokens"):
        text += f" ({u['cached_prompt_tokens']:,} from the prefix cache)"
    text += f", {u.get('completion_tokens', 0):,} generated; {u.get('calls', 0)} engine calls, " \
            f"{u.get('requests', 0)} requests"
    if u.get("cache_hits"):
        text += f" ({u['cache_hits']} from the run's cache)"
    if u.get("errors"):
        text += f", {u['errors']} failed"
    return text


def preview(text: str, width: int = _PREVIEW) -> str:
    """One line of at most ``width`` characters of ``text``, quoted."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")


def _skip_reasons(info: Mapping[str, Any] | None) -> str:
    """The per-target skip reasons of a skipped step, with the flag that lifts a cut-off cap."""
    reasons = []
    for target, rec in (info or {}).items():
        if not isinstance(rec, Mapping):
            continue
        why = rec.get("skipped") or "no candidate"
        why += "".join(f" ({hint})" for cut, hint in _CUT_OFF_HINTS.items() if cut in why)
        reasons.append(f"{ARTIFACT_NAMES.get(target, target)}: {why}")
    return "; ".join(reasons) or "no candidate"


def outer_step_line(records: Sequence[Mapping[str, Any]]) -> str:
    """One line for the history records of one outer step (all of one ``step``).

    Step 0 is the initial validation; a later step is "skipped (why)" or its
    candidates' validation accuracy against the best before it, then
    "accepted" or "reverted".
    """
    first = records[0]
    step = first["step"]
    if step == 0:
        return f"step 0: initial validation accuracy {pct(first.get('val_accuracy'))}"
    head = f"step {step}"
    if first.get("train_accuracy") is not None:
        head += f" (minibatch accuracy {pct(first['train_accuracy'])})"
    cands = [r for r in records if r.get("candidate") is not None]
    if not cands:
        return f"{head}: skipped: {_skip_reasons(first.get('info'))}"
    before = first.get("best_val_before")
    kept = [r for r in cands if r.get("accepted")]
    if len(cands) == 1:
        verdict = "accepted" if kept else "reverted"
        return f"{head}: candidate validated: {pct(before)} -> {pct(cands[0].get('val_accuracy'))}, {verdict}"
    accs = ", ".join(f"{r.get('label')} {pct(r.get('val_accuracy'))}" for r in cands)
    verdict = f"{kept[0].get('label')} accepted" if kept else "all reverted"
    return f"{head}: {len(cands)} candidates validated against {pct(before)}: {accs}; {verdict}"


def history_lines(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """``outer_step_line`` of every step of a train run's history, in step order."""
    steps: dict[int, list[Mapping[str, Any]]] = {}
    for rec in history:
        steps.setdefault(int(rec.get("step", -1)), []).append(rec)
    return [outer_step_line(recs) for _, recs in sorted(steps.items())]


def _status_line(results: Mapping[str, Any]) -> list[str]:
    status = results.get("status")
    if status in (None, "complete"):
        return []
    failed = results.get("failed_requests") or {}
    how = f" ({failed['errors']} of {failed['requests']} requests failed)" if failed.get("requests") else ""
    return [f"status: {status}{how}"]


def _footer(results: Mapping[str, Any], run_dir: str | Path) -> list[str]:
    return [
        f"tokens: {usage_text(results.get('engine_usage'))}",
        f"wall time: {duration(results.get('wall_s'))}",
        f"run dir: {run_dir} (results.json, trajectories.jsonl, events.jsonl)",
    ]


def _indent(title: str, lines: Sequence[str]) -> str:
    return "\n".join([title, *(f"  {ln}" for ln in lines)])


def train_summary(results: Mapping[str, Any], run_dir: str | Path, files: Mapping[str, str] | None = None) -> str:
    """The end-of-run summary of ``mtg train``.

    Args:
        results: the run's results.json body.
        run_dir: the run directory.
        files: learned artifact name ("loss_prompt", "template") -> file name in the run dir.
    """
    history = results.get("history") or []
    outer = [r for r in history if r.get("step", 0) > 0]
    steps = sorted({r["step"] for r in outer})
    validated = sorted({r["step"] for r in outer if r.get("candidate") is not None})
    accepted = sorted({r["step"] for r in outer if r.get("accepted")})
    lines = history_lines(history)
    lines.append(f"{count(len(steps), 'outer step')}: {len(validated)} validated "
                 f"({len(accepted)} accepted, {len(validated) - len(accepted)} reverted), "
                 f"{len(steps) - len(validated)} skipped")
    best_step = results.get("best_step")
    lines.append(f"best validation accuracy {pct(results.get('best_val_accuracy'))} at step {best_step}"
                 + (" (the starting prompts: no step was accepted)" if best_step == 0 else ""))
    lines.append(f"test accuracy {accuracy_text(results.get('test_accuracy'))} "
                 f"({count(results.get('n_questions'), 'question')})")
    for name, r in (results.get("per_task") or {}).items():
        lines.append(f"  {name}: {accuracy_text(r.get('test_accuracy'))}")
    learned = results.get("learned") or {}
    for key, file in (files or {}).items():
        if learned.get(key):
            lines.append(f"learned {ARTIFACT_NAMES.get(key, key)}: {Path(run_dir) / file}  {preview(learned[key])}")
    lines += _footer(results, run_dir) + _status_line(results)
    title = f"mtg train: {results.get('method')} on {_task(results)}, engine {results.get('engine')}"
    return _indent(title, lines)


def _task(results: Mapping[str, Any]) -> str:
    tasks = results.get("tasks")
    return ", ".join(tasks) if tasks else str(results.get("task"))


def _applied_lines(results: Mapping[str, Any], given: Sequence[str]) -> list[str]:
    """What an evaluation applied: a --from-run source's texts, and texts given by hand."""
    source = results.get("source")
    config = results.get("config") or {}
    lines = []
    if isinstance(source, Mapping):
        origin = source.get("origin") if isinstance(source.get("origin"), Mapping) else {}
        what = " and ".join(f"{origin.get(a, 'learned')} {ARTIFACT_NAMES.get(a, a)}"
                            for a in source.get("applied") or []) or "learned texts"
        lines.append(f"applied: the {what} of run {source.get('run_dir')} ({source.get('method')} on "
                     f"{source.get('task')}, engine {source.get('engine')}, run id {source.get('run_id')})")
        if source.get("kept_initial"):
            lines.append("  that run kept nothing: no candidate beat its initial prompts, which these are")
        diff = source.get("protocol_diff")
        if isinstance(diff, Mapping) and diff:
            lines.append("  learned under another protocol (source -> this eval): "
                         + "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items()))
    for key in given:
        if config.get(key):
            lines.append(f"applied: {ARTIFACT_NAMES.get(key, key)} {preview(config[key])}")
    return lines


def eval_summary(results: Mapping[str, Any], run_dir: str | Path, *, given: Sequence[str] = ()) -> str:
    """The end-of-run summary of ``mtg eval``.

    Args:
        results: the run's results.json body.
        run_dir: the run directory.
        given: the texts set by hand ("loss_prompt", "template", "system_prompt"): shown as applied.
    """
    lines = [f"accuracy {accuracy_text(results.get('test_accuracy'))} "
             f"({results.get('split')} split, {count(results.get('n_questions'), 'question')})"]
    per_seed = (results.get("test_accuracy") or {}).get("per_seed") or {}
    if len(per_seed) > 1:
        lines.append("per seed: " + ", ".join(f"{s}: {pct(a)}" for s, a in per_seed.items()))
    lines += _applied_lines(results, given)
    truncated = (results.get("truncated") or {}).get("total")
    if truncated:
        lines.append(f"{count(truncated, 'call')} cut off at the token cap (results.json 'truncated'): "
                     "such answers often lost their answer line")
    lines += _footer(results, run_dir) + _status_line(results)
    title = f"mtg eval: {results.get('method')} on {_task(results)}, engine {results.get('engine')}"
    return _indent(title, lines)


def baseline_summary(results: Mapping[str, Any], run_dir: str | Path, *, instruction_file: str | None = None) -> str:
    """The end-of-run summary of ``mtg baseline``.

    Args:
        results: the run's results.json body.
        run_dir: the run directory.
        instruction_file: the file in the run dir holding a DSPy method's instruction.
    """
    history = results.get("history") or []
    lines = []
    if history:
        noun = {"prompt_opt": "step", "miprov2": "trial"}.get(str(results.get("method")), "candidate")
        text = f"optimization: {count(len(history), noun)} recorded"
        if any(h.get("accepted") is not None for h in history):
            text += f", {sum(1 for h in history if h.get('accepted'))} kept"
        if results.get("optimization_wall_s"):
            text += f", {duration(results['optimization_wall_s'])}"
        lines.append(text)
    if results.get("val_accuracy") is not None:
        lines.append(f"validation accuracy of the learned prompt {pct(results['val_accuracy'])}")
    learned = (results.get("learned") or {}).get("system_prompt")
    if learned:
        where = f"{Path(run_dir) / instruction_file}" if instruction_file else "results.json learned.system_prompt"
        kind = "instruction" if instruction_file else "system prompt"
        lines.append(f"applied at test: the learned {kind}, {where}  {preview(learned)}")
    demos = (results.get("learned") or {}).get("demos")
    if demos:
        lines.append(f"  with {count(len(demos), 'demo')}")
    lines.append(f"test accuracy {accuracy_text(results.get('test_accuracy'))} "
                 f"({count(results.get('n_questions'), 'question')})")
    lines += _footer(results, run_dir) + _status_line(results)
    title = f"mtg baseline: {results.get('method')} on {_task(results)}, engine {results.get('engine')}"
    return _indent(title, lines)


def result_line(results: Mapping[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The JSON summary ``mtg eval`` and ``mtg baseline`` print on stdout."""
    acc = results.get("test_accuracy") or {}
    source = results.get("source")
    learned = {k: v for k, v in (results.get("learned") or {}).items() if v and k != "demos"}
    return {
        "run_dir": str(run_dir),
        "status": results.get("status"),
        "method": results.get("method"),
        "task": results.get("task"),
        "split": results.get("split"),
        "test_accuracy": {"mean": acc.get("mean"), "std": acc.get("std")},
        **({"source_run_dir": source.get("run_dir")} if isinstance(source, Mapping) else {}),
        **({"learned": learned} if learned else {}),
        "engine_calls": (results.get("engine_usage") or {}).get("calls"),
        "wall_s": results.get("wall_s"),
    }


def end_of_run(line: Mapping[str, Any], text: str) -> None:
    """The JSON ``line`` on stdout, then the human ``text`` on stderr (below it on a terminal).

    A failed run (every request failed) gets no summary: its accuracies are not measurements,
    and the command's one error line says what failed and how to rerun.
    """
    print(json.dumps(line, indent=2))
    sys.stdout.flush()
    if line.get("status") != "failed":
        print(text, file=sys.stderr)
