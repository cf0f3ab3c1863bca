"""Lazy engine registry: exact backend names map to "module:Class" strings.

Specs look like ``vllm:bundled``, ``hf:/path/to/model``, ``openai:gpt-4o-mini``
or ``fake``. The backend module is imported only when an engine is created, so
``import engines`` never pulls in vllm or torch. Backends are chosen by the
exact prefix, never by a substring of a model name.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from engines.base import Engine
from engines.errors import BackendUnavailableError, EngineError, EngineSpecError, EngineStartError, EngineUnreachableError

_REGISTRY: dict[str, str] = {
    "vllm": "engines.vllm_engine:VLLMEngine",
    "vllm-async": "engines.vllm_async_engine:AsyncVLLMEngine",
    "hf": "engines.hf_engine:HFEngine",
    "openai": "engines.openai_engine:OpenAIEngine",
    "fake": "engines.fake_engine:FakeEngine",
}

# Which pip extra provides each backend's heavy dependency (for error messages).
_EXTRAS = {"vllm": "cpu] or .[gpu", "vllm-async": "cpu] or .[gpu", "hf": "cpu", "openai": "openai"}


_C = TypeVar("_C")


def config_from_options(config_cls: type[_C], backend: str, model: str | None, options: dict[str, Any]) -> _C:
    """Builds a backend's frozen config from a spec's model part and ``--engine-opt`` options.

    Raises:
        EngineSpecError: an unknown option (naming the known ones) or a bad value.
    """
    try:
        return config_cls(model=model or "", **options)
    except TypeError as e:
        names = ", ".join(f.name for f in dataclasses.fields(config_cls) if f.name != "model")
        raise EngineSpecError(f"unknown {backend} engine option ({e}); known options: {names}") from e
    except ValueError as e:
        raise EngineSpecError(f"bad {backend} engine option: {e}") from e


def parse_engine_opts(items: Sequence[str]) -> dict[str, Any]:
    """Parses ``--engine-opt KEY=VALUE`` items; values are YAML scalars (so 4096 is an int, true a bool).

    Raises:
        EngineSpecError: an item is not KEY=VALUE.
    """
    import yaml

    opts: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EngineSpecError(f"--engine-opt must look like KEY=VALUE, got {item!r}")
        opts[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return opts


def register(name: str, target: str) -> None:
    """Registers a backend name for ``"module:Class"`` (lazy; not imported now)."""
    if not name or ":" in name:
        raise ValueError(f"backend name must be non-empty and contain no ':', got {name!r}")
    if target.count(":") != 1:
        raise ValueError(f"target must look like 'module:Class', got {target!r}")
    _REGISTRY[name] = target


def backends() -> list[str]:
    """The registered backend names."""
    return sorted(_REGISTRY)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Splits ``"backend:model"`` into its parts.

    Raises:
        EngineSpecError: the spec is empty, names an unknown backend, or lacks a
            model where the backend needs one.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise EngineSpecError(f"engine spec must be a non-empty string like 'vllm:bundled', got {spec!r}")
    backend, sep, model = spec.strip().partition(":")
    if backend not in _REGISTRY:
        raise EngineSpecError(
            f"unknown engine backend {backend!r} in spec {spec!r}; known: {', '.join(backends())} "
            "(e.g. 'vllm:bundled', 'hf:bundled', 'openai:gpt-4o-mini', 'fake')"
        )
    if backend != "fake" and not model:
        raise EngineSpecError(f"engine spec {spec!r} needs a model after ':', e.g. '{backend}:bundled'")
    return backend, (model or None)


def engine_class(backend: str) -> type[Engine]:
    """Imports and returns the class registered for ``backend``."""
    module_name, _, cls_name = _REGISTRY[backend].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # the backend's own dependency is missing
        extra = _EXTRAS.get(backend, backend)
        raise BackendUnavailableError(
            f"engine backend {backend!r} needs a package that is not installed ({e.name or e}); "
            f"install it with: pip install -e '.[{extra}]'"
        ) from e
    return getattr(module, cls_name)


def create_engine(spec: str, /, **options: Any) -> Engine:
    """Creates an engine from a spec such as ``"vllm:bundled"``.

    Args:
        spec: ``backend[:model]``.
        **options: backend settings (e.g. ``dtype``, ``max_model_len`` for vLLM,
            ``base_url`` for OpenAI). Unknown options raise ``EngineSpecError``.

    Returns:
        A ready engine; its ``spec`` attribute is set to ``spec``, ``instance_id``
        to an id no other engine start has (runs log it: ``mtg bench grid``
        counts engine starts from their events) and ``start_s`` to the seconds
        the start took.

    Raises:
        EngineStartError: the backend failed to start (every ``EngineError`` of
            the start is one; the CLI prints its one line and exits 3).
    """
    backend, model = parse_spec(spec)
    cls = engine_class(backend)
    t0 = time.perf_counter()
    try:
        engine = cls.from_spec(model, **options)  # type: ignore[attr-defined]
    except (EngineStartError, EngineUnreachableError):
        raise
    except EngineError as e:
        raise EngineStartError(f"{spec} failed to start: {e}") from e
    engine.spec = spec
    engine.instance_id = uuid.uuid4().hex[:12]  # type: ignore[attr-defined]
    engine.start_s = round(time.perf_counter() - t0, 3)  # type: ignore[attr-defined]
    return engine
