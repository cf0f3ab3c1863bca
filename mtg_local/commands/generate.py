"""``mtg generate``: one batched engine call over a JSONL file of prompts.

Input lines are JSON objects with an optional ``id`` and one of
``messages`` (chat list), ``user`` (+ optional ``system``) or ``prompt``
(raw text), plus optional ``response_prefix`` and per-line sampling fields
(``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``). A bad line
becomes an error record in the output; the other lines still run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engines import GenRequest, Message, SamplingConfig
from engines.errors import UserError
from mtg_local.commands.common import add_engine_args, add_sampling_args, build_engine, sampling_from_args

_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "stop", "seed")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate completions for a JSONL file of prompts (one batched call)")
    p.add_argument("input", help="JSONL file: {id?, messages | user [+system] | prompt, sampling fields?}")
    p.add_argument("--out", default="-", help="results JSONL (default: stdout)")
    add_engine_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run)


def request_from_line(obj: Any, default: SamplingConfig, lineno: int) -> GenRequest:
    """Builds a request from one input object; raises ValueError naming the problem."""
    if not isinstance(obj, dict):
        raise ValueError("line is not a JSON object")
    rid = str(obj.get("id", f"line-{lineno}"))
    overrides = {k: obj[k] for k in _SAMPLING_KEYS if k in obj}
    sampling = default.replace(**overrides) if overrides else default
    prefix = obj.get("response_prefix", "")
    if "messages" in obj:
        msgs = tuple(Message(m["role"], m["content"]) for m in obj["messages"])
        return GenRequest(messages=msgs, sampling=sampling, id=rid, response_prefix=prefix)
    if "user" in obj:
        return GenRequest.chat(obj["user"], system=obj.get("system"), sampling=sampling, id=rid, response_prefix=prefix)
    if "prompt" in obj:
        return GenRequest(prompt=obj["prompt"], sampling=sampling, id=rid, response_prefix=prefix)
    raise ValueError("needs one of 'messages', 'user' or 'prompt'")


def run(args: argparse.Namespace) -> int:
    default = sampling_from_args(args)
    path = Path(args.input)
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    slots: list[dict[str, Any] | GenRequest] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            slots.append(request_from_line(json.loads(line), default, lineno))
        except (ValueError, KeyError, TypeError) as e:
            slots.append({"id": f"line-{lineno}", "error": f"bad input line {lineno}: {e}", "text": ""})
    requests = [s for s in slots if isinstance(s, GenRequest)]
    engine = build_engine(args.engine, args.engine_opt, args.cache, args.no_cache)
    try:
        results = iter(engine.generate(requests))
        out = sys.stdout if args.out == "-" else open(args.out, "w")
        try:
            for s in slots:
                rec = next(results).to_dict() if isinstance(s, GenRequest) else s
                out.write(json.dumps(rec) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
        print(json.dumps({"usage": engine.usage.to_dict()}), file=sys.stderr)
    finally:
        engine.close()
    return 0
