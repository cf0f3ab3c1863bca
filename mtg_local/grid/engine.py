"""Which engine a grid shares, and opening it.

``vllm:MODEL`` cells share a ``vllm-async:MODEL`` engine (vLLM's
``AsyncLLM``: requests of every cell join one running batch); every other
backend is shared as it is when it serves concurrent calls (OpenAI: one
concurrency limit; fake) or behind a ``CoalescedEngine`` (HF: concurrent
calls merged into one ``generate``).
"""

from __future__ import annotations

from typing import Any

from engines.base import Engine
from engines.registry import create_engine, parse_spec
from engines.shared import shareable

#: grid backend -> the backend of the engine the cells share
SHARED_BACKEND = {"vllm": "vllm-async"}


def shared_spec(spec: str) -> str:
    """The spec of the engine shared by cells of ``spec`` (``vllm:X`` -> ``vllm-async:X``)."""
    backend, model = parse_spec(spec)
    shared = SHARED_BACKEND.get(backend, backend)
    return shared if model is None else f"{shared}:{model}"


def open_shared_engine(spec: str, options: dict[str, Any]) -> Engine:
    """Creates the engine the cells of ``spec`` share (caller closes it)."""
    return shareable(create_engine(shared_spec(spec), **options))
