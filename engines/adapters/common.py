"""Helpers shared by the library adapters (no dspy/textgrad imports here).

* ``offline_library_env`` -- keeps DSPy/TextGrad/LiteLLM off the network and
  out of the working directory when they are imported;
* ``chat_messages`` -- OpenAI-style message dicts -> our ``Message`` tuples;
* ``derive_seed`` -- distinct, reproducible per-sample seeds;
* ``adopt_coalescer`` -- an adapter's engine-or-shared-coalescer argument.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from engines.base import Engine, Message
from engines.coalescer import CoalescerConfig, RequestCoalescer
from engines.errors import RequestError

_ROLE_MAP = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def offline_library_env() -> None:
    """Sets environment defaults before dspy/textgrad/litellm are imported (user values win).

    * ``LITELLM_LOCAL_MODEL_COST_MAP=True``: LiteLLM (imported by TextGrad)
      otherwise downloads its price list at import; offline that costs a DNS
      failure and a warning.
    * ``TEXTGRAD_LOG_DIR``: TextGrad writes a log file at import, by default
      into ``./logs`` of the current directory; we put it under the temp dir.
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TEXTGRAD_LOG_DIR", os.path.join(tempfile.gettempdir(), "mtg-textgrad-logs"))


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
