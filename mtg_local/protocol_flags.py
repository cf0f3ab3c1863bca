"""The protocol's command-line flags, shared by ``mtg eval``, ``mtg train`` and ``mtg baseline``.

Every flag defaults to "unset": the run's protocol is ``DEFAULT_PROTOCOL`` (or the
one read with ``--protocol FILE``) with only the flags given on the command line
replaced. So one place (``mtg_local.protocol``) holds the defaults of every command.

Every command that records a protocol takes **every** protocol flag, the meta-training
ones included: they are in every run's ``protocol_hash``, so ``mtg eval --outer-steps 4``
must be able to record the same protocol as ``mtg train --outer-steps 4`` (one table), and a
grid's ``args.all`` may hold any of them. Commands that do not meta-train record them
without using them.

This module sits beside ``mtg_local.protocol`` (below ``mtg_local.commands`` and
``mtg_local.slurm``), so the grid code can list the protocol flags without importing a
command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engines.errors import UserError
from mtg_local.inner_loop import FREEZE_CONDITIONS, PROMPT_LAYOUTS, UPDATE_PARSINGS
from mtg_local.protocol import (
    ANSWER_SELECTIONS,
    DEFAULT_PROTOCOL,
    FORWARD_SYSTEM_PROMPTS,
    LOSS_PROMPT_SOURCES,
    META_STEPS,
    PRESETS,
    SCORINGS,
    VOTE_TIES,
    Protocol,
    check_context,
)

_D = DEFAULT_PROTOCOL


def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1,2" or "0-5" (inclusive) or a mix -> (0, 1, 2, ...)."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(part)])
    except ValueError as e:
        raise UserError(f"--seeds must look like 0,1,2 or 0-5, got {text!r}") from e
    return tuple(seeds)


def parse_bool(text: str) -> bool:
    """Reads a flag value: true/false, yes/no, on/off, 1/0 (any case)."""
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_protocol_args(parser: argparse.ArgumentParser, *, meta: bool = False) -> None:
    """Adds every protocol flag to ``parser``.

    Args:
        parser: a command's parser.
        meta: whether the command meta-trains; only the help text of the meta flags
            differs (a command that does not records them in its protocol unused).
    """
    g = parser.add_argument_group(
        "protocol (equal across one results table; defaults and sources: docs/protocol.md)"
    )
    g.add_argument("--protocol", default=None, metavar="NAME|FILE",
                   help=f"start from a named protocol ({', '.join(PRESETS)}; textgrad = TextGrad's "
                        "solution_optimization.py) or from a JSON file (a protocol object, or a results.json "
                        "holding one)")
    g.add_argument("--seeds", default=None, help=f"sampling seeds, e.g. 0-5 or 0,1,2 (default: {_seeds(_D.seeds)})")
    g.add_argument("--steps", type=int, default=None, metavar="T", help=f"inner-loop steps T (default: {_D.steps})")
    g.add_argument("--answer-selection", default=None, choices=ANSWER_SELECTIONS,
                   help=f"final answer: majority vote over the initial answer and the T iterates, or the last "
                        f"iterate (default: {_D.answer_selection})")
    g.add_argument("--majority-vote", action="store_const", const="majority_vote", dest="answer_selection",
                   help="same as --answer-selection majority_vote")
    g.add_argument("--vote-tie", default=None, choices=VOTE_TIES, help=f"default: {_D.vote_tie}")
    g.add_argument("--vote-counts-none", default=None, type=parse_bool, metavar="BOOL",
                   help=f"an answer with nothing extractable votes (default: {_D.vote_counts_none})")
    g.add_argument("--temperature", type=float, default=None, help=f"forward; default: {_D.temperature}")
    g.add_argument("--optimizer-temperature", type=float, default=None,
                   help=f"inner loss/backward/update; default: {_D.optimizer_temperature}")
    g.add_argument("--top-p", type=float, default=None, help=f"every call; default: {_D.top_p}")
    g.add_argument("--max-tokens", type=int, default=None, help=f"forward; default: {_D.max_tokens}")
    g.add_argument("--optimizer-max-tokens", type=int, default=None, help=f"default: {_D.optimizer_max_tokens}")
    g.add_argument("--keep-format", default=None, action="store_true", dest="keep_answer_format",
                   help="reject updates that lose the task's answer format "
                        f"(default: {'on' if _D.keep_answer_format else 'off'})")
    g.add_argument("--no-keep-format", action="store_false", dest="keep_answer_format",
                   help="accept updates that lose the task's answer format")
    g.add_argument("--prefill-tag", default=None, action="store_true", dest="prefill_update_tag",
                   help="prefill <IMPROVED_VARIABLE> in updates where the engine can "
                        f"(default: {'prefill' if _D.prefill_update_tag else 'none, as TextGrad'})")
    g.add_argument("--no-prefill-tag", action="store_false", dest="prefill_update_tag",
                   help="do not prefill <IMPROVED_VARIABLE> in updates")
    g.add_argument("--update-parsing", default=None, choices=UPDATE_PARSINGS,
                   help="how an update's <IMPROVED_VARIABLE> is read: textgrad (TextGrad's split) or tolerant "
                        f"(complete, non-empty bodies only) (default: {_D.update_parsing})")
    g.add_argument("--forward-system-prompt", default=None, choices=tuple(FORWARD_SYSTEM_PROMPTS),
                   help="forward system prompt of methods without their own: none, or simple-evals (TextGrad's "
                        f"script) (default: {_D.forward_system_prompt})")
    g.add_argument("--inference-template", default=None, type=parse_bool, metavar="BOOL",
                   help="start answers with the inference template (false: no template, as TextGrad's script) "
                        f"(default: {str(_D.inference_template).lower()})")
    g.add_argument("--loss-prompt-source", default=None, choices=LOSS_PROMPT_SOURCES,
                   help="the task's initial loss prompt: paper (appendix C) or textgrad (TextGrad's instance task's, "
                        f"where it has one: MMLU, GPQA) (default: {_D.loss_prompt_source})")
    g.add_argument("--freeze-when", default=None,
                   help=f"never, or a comma list of {', '.join(FREEZE_CONDITIONS)} (default: {_D.freeze_when})")
    g.add_argument("--prompt-layout", default=None, choices=PROMPT_LAYOUTS,
                   help="inner loss/backward/update prompts: textgrad (TextGrad's own requests) or "
                        "chained (each phase extends the previous conversation: prefix-cache reuse) "
                        f"(default: {_D.prompt_layout})")
    g.add_argument("--task-seed", type=int, default=None, help=f"task data seed (default: {_D.task_seed})")
    g.add_argument("--limit", type=int, default=None, metavar="N", help="first N questions of every split")
    g.add_argument("--scoring", default=None, choices=SCORINGS, help=f"answer extraction (default: {_D.scoring})")
    # Meta-training settings: in every run's protocol (and hash), so every command takes them.
    unused = "" if meta else "; recorded, used only by mtg train"
    g.add_argument("--meta-temperature", type=float, default=None,
                   help=f"meta calls (default: {_D.meta_temperature}{unused})")
    g.add_argument("--meta-max-tokens", type=int, default=None,
                   help=f"meta calls (default: {_D.meta_max_tokens}{unused})")
    g.add_argument("--outer-steps", type=int, default=None, metavar="K",
                   help=f"outer steps (default: {_D.outer_steps}{unused})")
    g.add_argument("--minibatch", type=int, default=None,
                   help=f"train questions per outer step (default: {_D.minibatch}{unused})")
    g.add_argument("--max-meta-pairs", type=int, default=None,
                   help=f"most wrong answers / gradients per meta call (default: {_D.max_meta_pairs}{unused})")
    g.add_argument("--sample-seed", type=int, default=None,
                   help=f"minibatch sampling seed (default: {_D.sample_seed}{unused})")
    g.add_argument("--meta-step", default=None, choices=META_STEPS,
                   help="backward: a backward call on the loss prompt / template through the meta evaluation, "
                        "then a TGD step (the paper's eqs. 6 and 9); direct: a TGD step straight from the meta "
                        f"evaluation (default: {_D.meta_step}{unused})")
    g.add_argument("--meta-prefill-tag", default=None, type=parse_bool, metavar="BOOL", dest="meta_prefill_update_tag",
                   help="prefill <IMPROVED_VARIABLE> in the meta TGD step where the engine can (TextGrad prefills "
                        f"none) (default: {str(_D.meta_prefill_update_tag).lower()}{unused})")

def _seeds(seeds: tuple[int, ...]) -> str:
    return ",".join(str(s) for s in seeds)


#: Protocol fields and the argparse dests that set them (same names).
_FIELDS = ("steps", "answer_selection", "vote_tie", "vote_counts_none", "temperature", "optimizer_temperature",
           "top_p", "max_tokens", "optimizer_max_tokens", "keep_answer_format", "prefill_update_tag", "freeze_when",
           "task_seed", "limit", "scoring", "meta_temperature", "meta_max_tokens", "outer_steps", "minibatch",
           "max_meta_pairs", "sample_seed", "prompt_layout", "update_parsing", "forward_system_prompt",
           "inference_template", "meta_step", "loss_prompt_source", "meta_prefill_update_tag")


def read_protocol_file(path: str) -> Protocol:
    """A protocol from a JSON file: a protocol object, or a results.json / config.json holding one.

    A run's recorded protocol reads as the protocol that run used (``Protocol.from_dict``:
    one from before a setting existed gets the value of that time); a bare protocol
    object is a file written by hand, whose missing settings are today's defaults.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--protocol {path}: neither a protocol name ({', '.join(PRESETS)}) nor an existing file")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--protocol {p}: cannot read JSON: {e}") from e
    record = isinstance(data, dict) and isinstance(data.get("protocol"), dict)
    if record:
        data = data["protocol"]
    if not isinstance(data, dict):
        raise UserError(f"--protocol {p}: expected a JSON object, got {type(data).__name__}")
    try:
        return Protocol.from_dict(data, record=record)
    except (ValueError, TypeError) as e:
        raise UserError(f"--protocol {p}: {e}") from e


def read_protocol(name_or_path: str) -> Protocol:
    """``--protocol``'s value: a preset name (``PRESETS``) or a JSON file."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    return read_protocol_file(name_or_path)


def protocol_from_args(args: argparse.Namespace, base: Protocol | None = None) -> Protocol:
    """The run's protocol: ``base`` (or --protocol NAME|FILE, or the default) with the given flags replaced."""
    if base is None:
        base = read_protocol(args.protocol) if getattr(args, "protocol", None) else DEFAULT_PROTOCOL
    changes: dict[str, Any] = {f: getattr(args, f) for f in _FIELDS if getattr(args, f, None) is not None}
    if getattr(args, "seeds", None) is not None:
        changes["seeds"] = parse_seeds(args.seeds)
    try:
        return base.replace(**changes)
    except ValueError as e:
        field = str(e).split(" ", 1)[0]
        raise UserError(f"bad protocol setting --{field.replace('_', '-')}: {e}") from e


def context_check(protocol: Protocol, engines: Any, *, meta: bool = False) -> None:
    """``check_context`` on a ``RunEngines``' raw backends, as a one-line UserError."""
    try:
        check_context(protocol, {"forward": engines.forward, "optimizer": engines.optimizer}, meta=meta)
    except ValueError as e:
        raise UserError(str(e)) from e


def protocol_flags() -> frozenset[str]:
    """Every protocol option string (``--steps``, ``--seeds``, ...), e.g. to keep them out of per-method grid args."""
    parser = argparse.ArgumentParser(add_help=False)
    add_protocol_args(parser)
    return frozenset(o for a in parser._actions for o in a.option_strings)
