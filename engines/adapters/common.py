"""Helpers shared by the library adapters (no dspy/textgrad imports here).

* ``offline_library_env`` -- keeps DSPy/TextGrad/LiteLLM off the network and
  out of the working directory when they are imported;
* ``import_textgrad`` / ``textgrad_log_dir`` -- the one way this project
  imports ``textgrad``, and where TextGrad's log file goes;
* ``chat_messages`` -- OpenAI-style message dicts -> our ``Message`` tuples;
* ``derive_seed`` -- distinct, reproducible per-sample seeds;
* ``adopt_coalescer`` -- an adapter's engine-or-shared-coalescer argument.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from engines.base import Engine, Message
from engines.coalescer import CoalescerConfig, RequestCoalescer
from engines.errors import RequestError

_ROLE_MAP = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


#: TextGrad's log directory when no run directory names one (its default is ./logs of the cwd).
TEXTGRAD_TEMP_LOG_DIR = os.path.join(tempfile.gettempdir(), "mtg-textgrad-logs")
_TEXTGRAD_LOG_ENV = "TEXTGRAD_LOG_DIR"
#: the value this module put into TEXTGRAD_LOG_DIR (a value set by the user is never replaced)
_our_log_dir: str | None = None


def offline_library_env() -> None:
    """Sets environment defaults before dspy/textgrad/litellm are imported (user values win).

    * ``LITELLM_LOCAL_MODEL_COST_MAP=True``: LiteLLM (imported by TextGrad)
      otherwise downloads its price list at import; offline that costs a DNS
      failure and a warning.
    * ``TEXTGRAD_LOG_DIR``: TextGrad opens a log file at import, by default
      in ``./logs`` of the current directory; unless a run directory was named
      (``textgrad_log_dir``) or the user set it, it goes under the temp dir.
    """
    global _our_log_dir
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if _TEXTGRAD_LOG_ENV not in os.environ:
        os.environ[_TEXTGRAD_LOG_ENV] = _our_log_dir = TEXTGRAD_TEMP_LOG_DIR


def textgrad_log_dir(run_dir: str | os.PathLike[str]) -> str | None:
    """Sends TextGrad's log file to ``RUN_DIR/textgrad_logs`` if TextGrad is not imported yet.

    TextGrad reads ``TEXTGRAD_LOG_DIR`` once, when it is imported, and writes
    there every prompt and response of the TextGrad objects that run (the
    default layout only formats text with TextGrad's functions, which log
    nothing; the TextGrad peer of ``mtg bench peer`` and ``TextGradEngine``
    programs log every call). So the first run directory of a process gets
    the process's log; a value the user set is kept.

    Returns:
        The directory TextGrad will log to, or None if that is no longer ours
        to choose (already imported, or set by the user).
    """
    global _our_log_dir
    current = os.environ.get(_TEXTGRAD_LOG_ENV)
    if "textgrad" in sys.modules or (current is not None and current != _our_log_dir):
        return None
    os.environ[_TEXTGRAD_LOG_ENV] = _our_log_dir = os.path.join(os.fspath(run_dir), "textgrad_logs")
    return _our_log_dir


def import_textgrad() -> ModuleType:
    """``import textgrad``, the only way this project imports it: offline defaults and log dir first.

    Importing ``textgrad`` runs its package ``__init__`` whatever submodule is
    asked for (it opens the log file and imports LiteLLM, about 5 s), so every
    module that needs TextGrad calls this before its own ``textgrad.*`` imports.
    """
    offline_library_env()
    return importlib.import_module("textgrad")


def _content_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, Mapping) and p.get("type") in ("text", "input_text") and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                kind = p.get("type") if isinstance(p, Mapping) else type(p).__name__
                raise RequestError(f"messages[{index}] has a {kind!r} part; only text parts are supported")
        return "\n".join(parts)
    raise RequestError(f"messages[{index}].content must be text, got {type(content).__name__}")


def chat_messages(messages: Iterable[Mapping[str, Any]]) -> tuple[Message, ...]:
    """Converts OpenAI-style ``{"role", "content"}`` dicts into ``Message`` objects.

    ``developer`` becomes ``system``; list content keeps its text parts.

    Raises:
        RequestError: an unknown role, a non-text part, or no messages.
    """
    out = []
    for i, m in enumerate(messages):
        role = _ROLE_MAP.get(str(m.get("role", "")))
        if role is None:
            raise RequestError(f"messages[{i}] has role {m.get('role')!r}; supported: {sorted(_ROLE_MAP)}")
        out.append(Message(role, _content_text(m.get("content"), i)))
    if not out:
        raise RequestError("messages must not be empty")
    return tuple(out)


def derive_seed(*parts: Any) -> int:
    """A stable seed in [0, 2**31) from any printable parts (e.g. base seed, rollout id, sample index)."""
    digest = hashlib.sha256(("mtg-adapter:" + ":".join(map(str, parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def adopt_coalescer(
    engine: Engine | RequestCoalescer, config: CoalescerConfig | None
) -> tuple[RequestCoalescer, bool, str]:
    """The coalescer an adapter sends through: a shared one as given, else a private one over ``engine``.

    Returns:
        (coalescer, owned -- True when the adapter made it and must close it, engine spec or class name).

    Raises:
        TypeError: ``engine`` is neither an ``Engine`` nor a ``RequestCoalescer``.
    """
    if isinstance(engine, RequestCoalescer):
        coalescer, owned = engine, False
    elif isinstance(engine, Engine):
        coalescer, owned = RequestCoalescer(engine, config), True
    else:
        raise TypeError(f"engine must be an Engine or a RequestCoalescer, got {type(engine).__name__}")
    return coalescer, owned, coalescer.engine.spec or type(coalescer.engine).__name__
